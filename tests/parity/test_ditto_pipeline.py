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
from models.ditto.pipeline import DittoPipeline, first_frame_audio_ms, lookahead_frames_for
from models.ditto.testing import face_like_portrait
from tests.parity.test_ditto_support import one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield



# Narrower than the tiny renderer (W's output and G's input 8 channels): 2 shared cores
# render a frame in ~0.15 s. Same structure and 512² output.
NARROW_RENDERER = {"preset": "tiny", "warping": {"block_expansion": 2},
                   "spade": {"block_expansion": 2, "max_features": 8, "out_channels": 4, "spade_hidden": 4}}


@pytest.fixture(scope="module")
def pipeline():
    return DittoPipeline({"preset": "tiny", "networks": NARROW_RENDERER}, device="cpu", seed=0)


@pytest.fixture(scope="module")
def persona(pipeline):
    portrait = face_like_portrait(160)[:, 8:152]  # 160 x 144: not square, to catch axis mix-ups
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
    assert frames.shape[1:] == (160, 144, 3) and frames.dtype == np.uint8
    assert len(frames) <= 5
    blob = pickle.dumps(carry)
    carry = pickle.loads(blob)
    more, carry = pipeline.flush(persona, carry, Controls(emotion="surprised"))
    assert len(frames) + len(more) == 5


@pytest.mark.slow  # several seconds of CPU: outside the unit tier
def test_frames_in_200ms_chunks_and_in_one_piece_are_the_same(pipeline, persona):
    """The whole contract path (render + flush), chunked or not: same frames, all 50."""
    audio, c = speech(2.0), Controls(head_pitch_deg=4)
    carry = pipeline.start(persona, c)
    chunked = []
    for s in range(0, len(audio), 3200):
        frames, carry = pipeline.render(persona, carry, audio[s : s + 3200], c)
        chunked.append(frames)
    chunked.append(pipeline.flush(persona, carry, c)[0])
    one, carry = pipeline.render(persona, pipeline.start(persona, c), audio, c)
    one = np.concatenate([one, pipeline.flush(persona, carry, c)[0]])
    chunked = np.concatenate(chunked)
    assert chunked.shape == one.shape == (50, 160, 144, 3)
    # same motion; W + G batches of 5 and of 8 round differently in the last bit
    diff = np.abs(chunked.astype(np.int16) - one)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-4


def test_lookahead_declared_is_what_200ms_chunks_hold(pipeline, persona):
    """Overlap 75: first frames after 485 ms of audio; 200 ms chunks hold 10 frames, and
    no chunking holds more than the declared 12."""
    assert pipeline.config.stream.overlap == 75
    assert first_frame_audio_ms(75) == 485 and first_frame_audio_ms(70) == 885 and first_frame_audio_ms(78) == 285
    assert pipeline.lookahead_frames == lookahead_frames_for(75) == 12
    carry, out = pipeline.start(persona, Controls()), []
    for _ in range(4):
        frames, carry = pipeline.render(persona, carry, speech(0.2), Controls())
        out.append(len(frames))
    assert out == [0, 0, 5, 5]


@pytest.mark.slow  # several seconds of CPU: outside the unit tier
def test_idle_between_utterances_gives_n_frames_and_leaves_speech_alone(pipeline, persona):
    """Idle calls while the lookahead fills do not change the speech frames; after flush
    a second utterance starts a new stream; idle owes exactly n frames."""
    audio, c = speech(1.0), Controls(emotion="happy", intensity=0.6, head_yaw_deg=5)

    def run(with_idle):
        carry, out = pipeline.start(persona, c), []
        for s in range(0, len(audio), 3200):
            if with_idle:
                frames, carry = pipeline.idle(persona, carry, 2, c)
                assert len(frames) == 2
            frames, carry = pipeline.render(persona, carry, audio[s : s + 3200], c)
            out.append(frames)
        out.append(pipeline.flush(persona, carry, c)[0])
        return np.concatenate(out), carry

    plain, _ = run(False)
    with_idle, carry = run(True)
    assert len(plain) == len(with_idle) == 25
    carry.last.flags.writeable = False  # as a carry that came through Ray's object store
    idle, carry = pipeline.idle(persona, carry, 7, c)
    assert idle.shape == (7, 160, 144, 3)
    again, carry = pipeline.render(persona, carry, audio, c)
    again = np.concatenate([again, pipeline.flush(persona, carry, c)[0]])
    assert len(again) == 25
    carry = pickle.loads(pickle.dumps(carry))
    assert carry.motion is None and carry.frames_in == 0


@pytest.mark.slow  # several seconds of CPU: outside the unit tier
def test_interrupt_drops_the_held_frames_undrawn_and_the_next_utterance_starts_afresh(pipeline, persona):
    audio, c = speech(1.0), Controls()
    carry = pipeline.start(persona, c)
    frames, carry = pipeline.render(persona, carry, audio[: 640 * 15], c)
    assert len(frames) < 15  # the lookahead holds the rest
    carry = pipeline.interrupt(persona, pickle.loads(pickle.dumps(carry)), c)
    assert carry.motion is None and carry.frames_in == carry.frames_out == 0
    again, carry = pipeline.render(persona, carry, audio, c)
    again = np.concatenate([again, pipeline.flush(persona, carry, c)[0]])
    assert len(again) == 25  # exactly the new utterance's frames: nothing of the dropped one


@pytest.mark.slow  # several seconds of CPU: outside the unit tier
def test_a_one_shot_render_draws_the_offline_motion_of_the_whole_clip(pipeline, persona):
    from models.ditto.audio import wav2feat
    from models.ditto.emotion import controls_to_ditto
    from models.ditto.stream import MotionStream

    audio, c = speech(1.2), Controls(emotion="happy", intensity=0.7)
    carry = pipeline.plan(persona, pipeline.start(persona, c), audio, c)
    # The reference's offline scheme on whole-clip features, with the offline settings.
    cfg = pipeline.config.offline_stream
    assert (cfg.overlap, cfg.sampling_steps, cfg.fix_kp_cond, cfg.online) == (10, 50, 0, False)
    whole = MotionStream(pipeline.offline_sampler, cfg, persona.features["ditto"].cond).whole(
        wav2feat(pipeline.hubert, audio), controls_to_ditto(c)[0])
    np.testing.assert_array_equal(carry.planned, whole)
    assert carry.planned.shape == (30, 265)
    online = motion_of(pipeline, persona, audio, 5, switch_s=99)[0]  # (30, 21, 3) keypoints
    neutral = pipeline.plan(persona, pipeline.start(persona, Controls()), audio, Controls())
    offline = pipeline._speech_keypoints(persona, neutral, neutral.planned, Controls())[1]
    assert online.shape == offline.shape and not np.allclose(online, offline, atol=1e-3)  # not the online scheme

    def draw(chunk_frames):
        k = pickle.loads(pickle.dumps(carry))  # the carry travels between calls
        out = [pipeline.render(persona, k, audio[s : s + 640 * chunk_frames], c)[0]
               for s in range(0, len(audio), 640 * chunk_frames)]
        tail, k = pipeline.flush(persona, k, c)
        assert len(tail) == 0 and k.planned is None and k.motion is None
        return np.concatenate(out)

    frames = draw(10)
    assert frames.shape == (30, *persona.portrait.shape)  # every frame at once: no lookahead
    np.testing.assert_array_equal(frames, draw(30))


@pytest.mark.slow  # several seconds of CPU: outside the unit tier
def test_idle_lips_relax_to_rest_and_sway_eases(pipeline, persona):
    carry = pipeline.start(persona, Controls())
    frames, carry = pipeline.render(persona, carry, speech(1.0), Controls())
    frames, carry = pipeline.flush(persona, carry, Controls())
    from models.ditto.pipeline import EXP_START, LIP_COLS

    rest = carry.stitch.d0["exp"].reshape(-1)[LIP_COLS - EXP_START]
    before = np.abs(carry.last[LIP_COLS] - rest).max()
    _, carry = pipeline.idle(persona, carry, 20, Controls())
    assert np.abs(carry.last[LIP_COLS] - rest).max() <= before * 0.7**20 + 1e-6
    assert 0 < np.abs(carry.sway_deg).max() < 3


def test_emotion_and_head_offsets_are_eased_in(pipeline, persona):
    from models.ditto.emotion import emotion_vector

    carry = pipeline.start(persona, Controls())
    happy = Controls(emotion="happy", intensity=0.8, head_yaw_deg=10)
    rows = pipeline._emotion_rows(carry, happy, 25)  # one second of feature rows
    target, neutral = emotion_vector("happy", 0.8), emotion_vector("neutral")
    progress = (rows - neutral) @ (target - neutral) / np.sum((target - neutral) ** 2)
    assert np.all(np.diff(progress) > 0) and 0.1 < progress[0] < 0.2 and progress[-1] > 0.95
    _, carry = pipeline.idle(persona, carry, 3, happy)
    assert -10 < carry.head_deg[1] < 0 and carry.head_deg[0] == carry.head_deg[2] == 0  # yaw to the viewer's right


# ---- listening, gaze and pose (docs/api.md#listening-gaze-and-pose) ----------------------

def idle_keypoints(pipeline, persona, controls: Controls, seconds: float) -> np.ndarray:
    """x_d of `seconds` of idle frames after a start with the default controls: (N, 21, 3)."""
    carry = pipeline.start(persona, Controls())
    return pipeline.idle_keypoints(persona, carry, int(seconds * 25), controls)[1]


def test_gaze_moves_the_eyes_most_and_toward_the_point(pipeline, persona):
    rest = idle_keypoints(pipeline, persona, Controls(), 1.0)[-1]
    right = idle_keypoints(pipeline, persona, Controls(gaze_x=1.0), 1.0)[-1] - rest  # 21×3, after stitching
    moved = np.abs(right).max(axis=1)
    assert set(np.argsort(moved)[-2:].tolist()) == {11, 15}  # the stitching MLP nudges the rest a little
    assert right[[11, 15], 0].min() > 0  # to the viewer's right
    up = idle_keypoints(pipeline, persona, Controls(gaze_y=1.0), 1.0)[-1] - rest
    assert up[[11, 15], 1].max() < 0  # up: image y < 0


def test_pose_yaw_turns_the_face_to_the_viewers_right(pipeline, persona):
    rest = idle_keypoints(pipeline, persona, Controls(), 2.0)[-1]
    front = rest[:, 2] < np.median(rest[:, 2])
    yawed = idle_keypoints(pipeline, persona, Controls(head_yaw_deg=15.0), 2.0)[-1] - rest
    assert yawed[front, 0].mean() > yawed[~front, 0].mean()


def test_listening_calms_the_sway_and_holds_eye_contact(pipeline, persona):
    calm = idle_keypoints(pipeline, persona, Controls(), 12.0)
    listening = idle_keypoints(pipeline, persona, Controls(listening=True), 12.0)
    sideways = lambda kp: kp[25:, :, 0].mean(axis=1)  # noqa: E731 (the head's sideways travel, after 1 s)
    assert sideways(listening).std() < 0.5 * sideways(calm).std()
    looking_away = idle_keypoints(pipeline, persona, Controls(listening=True, gaze_x=1.0, gaze_y=0.5), 12.0)
    assert np.abs(looking_away[50:] - listening[50:]).max() < 1e-4  # eye contact wins while listening


# ---- cross-session batching (the backend's batch_sessions) ----------------------------------

@pytest.mark.slow  # three sessions' motion and frames twice: half a minute on 2 cores
def test_a_batch_of_sessions_renders_what_each_session_renders_alone(pipeline, persona):
    """Two personas, three sessions, 0.4 s chunks after a second of speech: the motion per
    session, every session's frames through W+G together; frame for frame as separate renders
    (PyTorch's own CPU kernels: a frame's numbers do not depend on what else is in its batch)."""
    import copy

    second = pipeline.prepare(PersonaMedia([face_like_portrait(160)[:, 4:148]]), "p2")
    jobs = []
    for who, controls in ((persona, Controls()), (second, Controls(emotion="happy")), (persona, Controls(gaze_x=1))):
        carry = pipeline.start(who, controls)
        _, carry = pipeline.render(who, carry, speech(1.0), controls)
        jobs.append((who, carry, speech(0.4), controls))
    with torch.backends.mkldnn.flags(enabled=False):
        alone = [pipeline.render(who, copy.deepcopy(carry), audio, c) for who, carry, audio, c in jobs]
        together = pipeline.render_batch([(who, copy.deepcopy(carry), audio, c) for who, carry, audio, c in jobs])
    assert sum(len(frames) for frames, _ in together) >= 20
    for (frames, carry), (want, want_carry) in zip(together, alone):
        assert frames.shape == want.shape and np.array_equal(frames, want)
        assert carry.frames_out == want_carry.frames_out and np.array_equal(carry.last, want_carry.last)
