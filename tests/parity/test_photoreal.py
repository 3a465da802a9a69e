"""photoreal on tiny seeded networks (CPU): the composition is what it claims to be.

LivePortrait (tiny networks, the cheap W/G stand-ins of its contract tests) draws the face;
MuseTalk (its tiny preset) redraws the lower face. With idle motion and blinks off, every
LivePortrait crop is the same, so MuseTalk alone, prepared on that crop, must produce
exactly the composite's lower face.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.base import SAMPLES_PER_FRAME, Controls, PersonaMedia
from models.liveportrait.config import LivePortraitConfig
from models.liveportrait.loading import LivePortraitNetworks
from models.liveportrait.motion import BlinkConfig, IdleMotionConfig
from models.liveportrait.pipeline import LivePortraitPipeline, LivePortraitPipelineConfig
from models.musetalk.pipeline import MuseTalkPipeline
from models.photoreal.pipeline import MODE, PhotorealPipeline
from tests.parity.test_liveportrait_pipeline import PORTRAIT_HW, CheapGenerator, CheapWarp, FixedFace, unit_face

# One frame a batch: a batch's size moves CPU convolutions in the last bits (0.02 in a latent of
# the tiny VAE), which the untrained tiny UNet magnifies; the composition is compared exactly.
TINY_MUSETALK = {"preset": "tiny", "batch_size": 1}
STILL_FACE = dict(idle=IdleMotionConfig(pitch=(), yaw=(), roll=()),
                  blink=BlinkConfig(mean_interval_s=1e9, min_interval_s=1e9))


def tiny_liveportrait(**config) -> LivePortraitPipeline:
    from tests import face_onnx_models as fm

    torch.manual_seed(0)
    networks = LivePortraitConfig.tiny()
    nets = LivePortraitNetworks.random(networks)
    nets.warping, nets.generator = CheapWarp(networks.spade.input_channels), CheapGenerator()
    face = FixedFace(unit_face(fm.face_points_106()), unit_face(fm.face_points_203()))
    return LivePortraitPipeline(LivePortraitPipelineConfig(networks=networks, max_batch=4, **config),
                                networks=nets, face=face)


@pytest.fixture(scope="module")
def still_face():
    """The composite with a face that does not move, its persona, and its MuseTalk."""
    musetalk = MuseTalkPipeline(TINY_MUSETALK, device="cpu", seed=0)
    pipeline = PhotorealPipeline(liveportrait=tiny_liveportrait(**STILL_FACE), musetalk=musetalk)
    portrait = np.random.default_rng(0).integers(0, 256, (*PORTRAIT_HW, 3), dtype=np.uint8)
    return pipeline, pipeline.prepare(PersonaMedia([portrait]), "p1")


def speech(n_frames: int, seed: int = 1) -> np.ndarray:
    t = np.arange(n_frames * SAMPLES_PER_FRAME) / 16000
    noise = np.random.default_rng(seed).normal(0, 0.05, len(t))
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + noise).astype(np.float32)


def liveportrait_frame(pipeline: PhotorealPipeline, persona, controls=Controls()) -> np.ndarray:
    """LivePortrait's own frame for the still face, mouth at rest."""
    lp = pipeline.liveportrait
    crops, _, _ = lp.render_crops(persona, lp.start(persona, controls), np.zeros(1, np.float32), controls)
    return crops[0], lp.paste(persona, crops[0])


def speak(pipeline, persona, audio, chunk_frames=5):
    carry, frames = pipeline.start(persona, Controls()), []
    for start in range(0, len(audio), chunk_frames * SAMPLES_PER_FRAME):
        out, carry = pipeline.render(persona, carry, audio[start:start + chunk_frames * SAMPLES_PER_FRAME], Controls())
        frames += list(out)
    out, carry = pipeline.flush(persona, carry, Controls())
    return np.stack(frames + list(out)), carry


def test_in_silence_a_frame_is_liveportrait_s(still_face):
    pipeline, persona = still_face
    _, expected = liveportrait_frame(pipeline, persona)
    idle, carry = pipeline.idle(persona, pipeline.start(persona, Controls()), 3, Controls())
    quiet, _ = speak(pipeline, persona, np.zeros(10 * SAMPLES_PER_FRAME, np.float32))
    assert len(idle) == 3 and len(quiet) == 10
    assert all(np.array_equal(frame, expected) for frame in [*idle, *quiet])


def test_with_speech_the_lower_face_is_musetalk_s_on_the_liveportrait_crop(still_face):
    pipeline, persona = still_face
    crop, lp_frame = liveportrait_frame(pipeline, persona)
    audio = speech(20)
    frames, _ = speak(pipeline, persona, audio)
    assert len(frames) == 20  # every frame of the audio, the lookahead flushed at the end

    # MuseTalk alone, its media LivePortrait's crop, the same audio and chunks.
    alone = MuseTalkPipeline(TINY_MUSETALK, device="cpu", seed=0)
    on_crop = alone.prepare(PersonaMedia([crop]), "p1")
    expected, _ = speak(alone, on_crop, audio)
    expected = np.stack([pipeline.liveportrait.paste(persona, face) for face in expected])
    assert np.array_equal(frames, expected)
    assert sum(not np.array_equal(f, lp_frame) for f in frames) >= 10  # speech redraws the lower face


def test_outside_the_blend_region_a_frame_is_liveportrait_s(still_face):
    pipeline, persona = still_face
    crop, _ = liveportrait_frame(pipeline, persona)
    region = persona.features[MODE]
    prompts = torch.from_numpy(np.random.default_rng(2).normal(0, 1, (2, 50, 384)).astype(np.float32))
    redrawn = pipeline.redraw_lower_faces([region, region], np.stack([crop, crop]), prompts, [1.0, 0.0])
    outside = np.ones(crop.shape[:2], bool)
    x1, y1, x2, y2 = region.box
    outside[y1:y2, x1:x2] = False  # the face box holds the whole blend region
    assert np.array_equal(redrawn[0][outside], crop[outside]) and not np.array_equal(redrawn[0], crop)
    assert np.array_equal(redrawn[1], crop)  # weight 0: not redrawn


def test_the_composite_keeps_liveportrait_s_emotion_and_motion():
    pipeline = PhotorealPipeline(liveportrait=tiny_liveportrait(), musetalk=MuseTalkPipeline("tiny", seed=0))
    portrait = np.random.default_rng(0).integers(0, 256, (*PORTRAIT_HW, 3), dtype=np.uint8)
    persona = pipeline.prepare(PersonaMedia([portrait]), "p1")
    happy = Controls(emotion="happy")
    frames, carry = pipeline.idle(persona, pipeline.start(persona, happy), 6, happy)
    assert len({f.tobytes() for f in frames}) > 1  # idle head motion and the emotion's easing move it
    assert carry.liveportrait.frame == 6


@pytest.mark.parametrize("head", [dict(head_yaw_deg=15), dict(head_yaw_deg=-15), dict(head_pitch_deg=15),
                                  dict(head_pitch_deg=-15)])
def test_the_mouth_region_follows_the_head(still_face, head):
    """Measured as the region's centre against the mean of the mouth keypoints (14, 17, 19, 20)
    projected into the crop the way LivePortrait's warping reads keypoints (x, y in [-1, 1]
    across the crop): both from their place at rest."""
    pipeline, persona = still_face
    lp, controls = pipeline.liveportrait, Controls(**head)
    keypoints, _ = lp.driving_keypoints(persona, lp.start(persona, controls), np.zeros(1, np.float32), controls)
    region = persona.features[MODE]
    moved = pipeline.mouth_regions(persona, keypoints, 512)[0]
    mouth = lambda kp: kp[0, [14, 17, 19, 20], :2].mean(dim=0).numpy() * 256  # noqa: E731 (pixels from centre)
    projected = mouth(keypoints) - mouth(region.rest_keypoints)
    assert np.abs(moved.centre - region.centre - projected).max() <= 0.5
    axis = 0 if "head_yaw_deg" in head else 1
    assert abs(projected[axis]) > 0.5  # the turn moved the mouth (tiny random keypoints: by a pixel or so)
    at_rest = pipeline.mouth_regions(persona, region.rest_keypoints, 512)[0]
    assert at_rest.box == region.box


def test_frames_wait_for_the_lookahead_and_an_interrupt_drops_what_it_holds(still_face):
    pipeline, persona = still_face
    lookahead = pipeline.lookahead_frames
    assert lookahead == pipeline.musetalk.lookahead_frames == 3
    carry = pipeline.start(persona, Controls())
    out, carry = pipeline.render(persona, carry, speech(8), Controls())
    assert len(out) == 8 - lookahead  # frame i comes once the audio after it has arrived
    out, carry = pipeline.render(persona, carry, speech(5, seed=2), Controls())
    assert len(out) == 5
    carry = pipeline.interrupt(persona, carry, Controls())
    out, carry = pipeline.flush(persona, carry, Controls())
    assert len(out) == 0  # the held frames were dropped, not drawn
    out, _ = pipeline.render(persona, carry, speech(8, seed=3), Controls())
    assert len(out) == 8 - lookahead  # a new utterance waits for its own lookahead


def test_a_batch_of_sessions_renders_what_each_session_renders_alone(still_face):
    """render_batch (the backend's cross-session batching): three sessions' chunks, their
    crops through LivePortrait's W+G and their lower faces through MuseTalk together; frame for
    frame as separate renders (MuseTalk one frame a batch here, as in this module's other tests)."""
    import copy

    pipeline, persona = still_face
    jobs = []
    for seed, controls in ((1, Controls()), (2, Controls(emotion="happy")), (3, Controls(listening=True))):
        carry = pipeline.start(persona, controls)
        _, carry = pipeline.render(persona, carry, speech(5, seed), controls)  # past the lookahead
        jobs.append((persona, carry, speech(5, seed + 10), controls))
    alone = [pipeline.render(p, copy.deepcopy(c), audio, ctl) for p, c, audio, ctl in jobs]
    together = pipeline.render_batch([(p, copy.deepcopy(c), audio, ctl) for p, c, audio, ctl in jobs])
    for (frames, carry), (want, want_carry) in zip(together, alone):
        assert len(frames) == 5 and np.array_equal(frames, want)
        assert carry.musetalk.audio.frames_done == want_carry.musetalk.audio.frames_done
        assert carry.liveportrait.frame == want_carry.liveportrait.frame
