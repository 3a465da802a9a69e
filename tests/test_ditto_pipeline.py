"""The ditto pipeline on CPU with tiny random networks and a stand-in HuBERT.

Checks the contract (frame counts, shapes, flush, picklable carry) and that the
same audio rendered in 200 ms chunks or in one piece gives the same motion,
including an emotion change mid-way.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from models.base import Controls, PersonaMedia
from models.ditto.lmdm import LMDMConfig, MotionDecoder
from models.ditto.pipeline import DittoPipeline
from models.liveportrait.config import LivePortraitConfig
from models.liveportrait.loading import LivePortraitNetworks
from tests.test_ditto_support import one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield



class FakeHubert:
    """Same frame geometry as HuBERT: (6480,) -> (20, 1024), a fixed random projection."""

    def __init__(self):
        self.proj = np.random.default_rng(0).standard_normal((400, 1024)).astype(np.float32) * 0.05

    def __call__(self, x):
        return np.stack([x[320 * j : 320 * j + 400] for j in range(20)]) @ self.proj


class FakeFace:
    """A face analyser stand-in: a fixed 106-point cloud in the middle of the portrait."""

    def analyse(self, portrait):
        h, w = portrait.shape[:2]
        pts = np.random.default_rng(1).uniform(-1, 1, (106, 2)) * [w * 0.15, h * 0.2] + [w / 2, h / 2]

        class Face:
            points106 = pts.astype(np.float32)

        return Face()


@pytest.fixture(scope="module")
def pipeline():
    torch.manual_seed(0)
    lmdm = MotionDecoder(LMDMConfig.tiny()).eval()
    nets = LivePortraitNetworks.random(LivePortraitConfig.tiny())
    return DittoPipeline(lmdm, nets, FakeHubert(), FakeFace())


@pytest.fixture(scope="module")
def persona(pipeline):
    portrait = np.random.default_rng(2).integers(0, 255, (256, 224, 3), dtype=np.uint8)
    return pipeline.prepare(PersonaMedia([portrait]), "p")


def speech(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 25) * 640) / 16000
    return (0.3 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)


def motion_of(pipeline, persona, audio, chunk_frames, switch_s=1.5):
    """Keypoints for all frames, feeding `chunk_frames` frames at a time; emotion
    switches from neutral to happy at `switch_s`."""
    carry = pipeline.start(persona, Controls())
    out = []
    step = chunk_frames * 640
    for s in range(0, len(audio), step):
        controls = Controls() if s < switch_s * 16000 else Controls(emotion="happy", intensity=0.8)
        carry.frames_in += len(audio[s : s + step]) // 640
        feats, carry.features = pipeline.features.feed(carry.features, audio[s : s + step])
        out.append(pipeline.motion_frames(persona, carry, feats, controls, end=False)[1])
    feats, carry.features = pipeline.features.flush(carry.features)
    out.append(pipeline.motion_frames(persona, carry, feats, Controls(emotion="happy", intensity=0.8), end=True)[1])
    return np.concatenate(out), carry


def test_200ms_chunks_and_one_piece_give_the_same_motion(pipeline, persona):
    audio = speech(3.0)
    chunked, carry = motion_of(pipeline, persona, audio, 5)
    assert chunked.shape == (75, 21, 3)
    assert carry.frames_out == 75
    # one piece: the emotion changes at a different time, so compare the part before it
    whole, _ = motion_of(pipeline, persona, audio[: int(1.5 * 16000)], 10_000)
    np.testing.assert_array_equal(whole[:30], chunked[:30])
    # and the emotion change does change the motion after it
    assert not np.array_equal(chunked, motion_of(pipeline, persona, audio, 5, switch_s=99)[0])


def test_one_piece_equals_chunks_over_the_whole_clip(pipeline, persona):
    audio = speech(2.0)
    chunked, _ = motion_of(pipeline, persona, audio, 5, switch_s=99)
    whole, _ = motion_of(pipeline, persona, audio, 10_000, switch_s=99)
    np.testing.assert_array_equal(whole, chunked)


def test_render_contract(pipeline, persona):
    carry = pipeline.start(persona, Controls())
    frames, carry = pipeline.render(persona, carry, speech(0.2), Controls())
    assert frames.shape[1:] == (256, 224, 3) and frames.dtype == np.uint8
    assert len(frames) <= 5
    blob = pickle.dumps(carry)
    carry = pickle.loads(blob)
    more, carry = pipeline.flush(persona, carry, Controls(emotion="surprised"))
    assert len(frames) + len(more) == 5
