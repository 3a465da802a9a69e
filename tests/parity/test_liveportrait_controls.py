"""LivePortrait controls without networks: expression basis, emotion presets and easing,
lip level from audio, blinks, idle head motion."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.base import EMOTIONS, FPS, SAMPLE_RATE_HZ, SAMPLES_PER_FRAME, Controls
from models.liveportrait import expression as ex
from models.liveportrait.lip import LipConfig, lip_levels, target_openness
from models.liveportrait.motion import BlinkConfig, blink_closures, idle_head_deg, start_blinks
from models.liveportrait.pipeline import posed_keypoints, target_vector
from models.liveportrait.source import SourceMotion

# ---- expression controls --------------------------------------------------------------


def synthetic_source(seed: int = 0) -> SourceMotion:
    g = torch.Generator().manual_seed(seed)
    info = {
        "kp": 0.3 * torch.randn(1, 21, 3, generator=g),
        "exp": 0.02 * torch.randn(1, 21, 3, generator=g),
        "scale": torch.full((1, 1), 1.3),
        "t": torch.tensor([[0.02, -0.01, 0.3]]),
        "pitch": torch.tensor([[4.0]]), "yaw": torch.tensor([[-7.0]]), "roll": torch.tensor([[2.0]]),
    }
    return SourceMotion(f_s=torch.zeros(1), info=info, x_s=torch.zeros(1, 21, 3), R_s=torch.eye(3)[None])


def moved_keypoints(vector: np.ndarray) -> set[int]:
    src = synthetic_source()
    rest = posed_keypoints(src, ex.expression_offsets(np.zeros((1, 10))), np.zeros((1, 3)))
    vectors = vector[None]
    moved = posed_keypoints(src, ex.expression_offsets(vectors), ex.head_offsets_deg(vectors))
    changed = (moved - rest).abs().amax(dim=2)[0] > 1e-6
    return set(torch.nonzero(changed).flatten().tolist())


@pytest.mark.parametrize("name", ex.FACE_CONTROLS)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_each_face_control_moves_its_documented_keypoints_only(name, sign):
    vector = np.zeros(10)
    vector[ex.CONTROL_NAMES.index(name)] = sign
    assert moved_keypoints(vector) == set(ex.control_keypoints(name))


@pytest.mark.parametrize("name", ex.HEAD_CONTROLS)
def test_head_controls_turn_the_whole_head(name):
    vector = np.zeros(10)
    vector[ex.CONTROL_NAMES.index(name)] = 5.0
    assert moved_keypoints(vector) == set(range(21))


def test_controls_are_documented_in_the_module_table():
    for name in ex.FACE_CONTROLS:
        row = next(line for line in ex.__doc__.splitlines() if line.startswith(f"| {name} "))
        documented = {int(tok.split(":")[0]) for tok in row.split("|")[2].split(",")}
        assert documented == set(ex.control_keypoints(name)), name


def test_every_emotion_has_a_preset_scaled_by_intensity():
    assert set(ex.PRESETS) == set(EMOTIONS)
    assert not ex.preset("neutral").to_vector().any()
    for emotion in EMOTIONS:
        full = ex.preset(emotion, 1.0).to_vector()
        np.testing.assert_allclose(ex.preset(emotion, 0.5).to_vector(), full / 2)
        assert not ex.preset(emotion, 0.0).to_vector().any()
    happy = target_vector(Controls(emotion="happy", intensity=0.8, head_yaw_deg=10))
    assert happy[ex.CONTROL_NAMES.index("smile")] == pytest.approx(0.8)
    assert happy[ex.CONTROL_NAMES.index("head_yaw_deg")] == pytest.approx(-10.0)  # viewer's right: LivePortrait yaw < 0


def test_emotion_transitions_are_smooth():
    start, goal = ex.preset("neutral").to_vector(), ex.preset("surprised").to_vector()
    path = ex.approach(start, goal, 2 * FPS, FPS, 0.3)  # 2 s
    steps = np.abs(np.diff(np.vstack([start, path]), axis=0)).max(axis=1)
    assert steps.max() < 0.2 * np.abs(goal - start).max()  # no jump
    assert np.all(np.diff(steps) <= 1e-12)  # easing out
    np.testing.assert_allclose(path[-1], goal, atol=0.01 * np.abs(goal).max())


# ---- lip level from audio ---------------------------------------------------------------


def tone(seconds: float, hz: float = 220.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    voiced = sum(np.sin(2 * np.pi * hz * k * t) / k for k in range(1, 6))  # a vowel-like harmonic stack
    return (amplitude * voiced / np.abs(voiced).max()).astype(np.float32)


def hiss(seconds: float, rms: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    noise = np.diff(rng.standard_normal(int(seconds * SAMPLE_RATE_HZ) + 1))  # high-pass: 's'-like
    return (noise * rms / noise.std()).astype(np.float32)


def test_loud_speech_opens_and_silence_closes():
    audio = np.concatenate([tone(0.4), np.zeros(int(0.6 * SAMPLE_RATE_HZ), np.float32)])
    levels, carried = lip_levels(audio, 0.0)
    assert len(levels) == len(audio) // SAMPLES_PER_FRAME == 25
    assert levels[2:10].min() > 0.5  # open within two frames of the onset
    assert levels[-5:].max() == 0.0 and carried == 0.0  # shut in silence
    assert np.all(np.diff(levels[10:]) <= 0)  # released, not bounced


def test_attack_is_faster_than_release():
    cfg = LipConfig()
    on, _ = lip_levels(tone(0.08), 0.0, cfg)
    off, _ = lip_levels(np.zeros(2 * SAMPLES_PER_FRAME, np.float32), float(on[-1]), cfg)
    assert on[0] > 1 - off[0] / on[-1]


def test_fricatives_open_less_than_vowels_at_equal_loudness():
    vowel = tone(0.2)
    fricative = hiss(0.2, rms=float(np.sqrt(np.mean(vowel**2))))
    assert target_openness(fricative).mean() < 0.8 * target_openness(vowel).mean()


def test_lip_level_carries_across_chunks():
    audio = tone(0.4)
    whole, _ = lip_levels(audio, 0.0)
    first, level = lip_levels(audio[: 4 * SAMPLES_PER_FRAME], 0.0)
    second, _ = lip_levels(audio[4 * SAMPLES_PER_FRAME:], level)
    np.testing.assert_allclose(np.concatenate([first, second]), whole)


# ---- blinks and idle motion ------------------------------------------------------------


def count_blinks(closures: np.ndarray) -> int:
    closed = closures >= 1.0
    return int(np.sum(closed[1:] & ~closed[:-1]) + closed[0])


def test_blinks_at_a_natural_rate_over_a_minute():
    cfg = BlinkConfig()
    counts = []
    for seed in range(12):
        closures, _ = blink_closures(start_blinks(seed, FPS, cfg), 60 * FPS, seed, FPS, cfg)
        counts.append(count_blinks(closures))
        starts = np.flatnonzero(np.diff((closures > 0).astype(int)) == 1)
        assert np.diff(starts).min() >= cfg.min_interval_s * FPS  # never in bursts
    assert 14 <= np.mean(counts) <= 21, counts
    assert min(counts) >= 8 and max(counts) <= 30, counts
    assert len(set(counts)) > 1  # irregular across seeds


def test_blinks_replay_identically_across_chunk_boundaries():
    cfg = BlinkConfig()
    state = start_blinks(7, FPS, cfg)
    whole, _ = blink_closures(state, 300, 7, FPS, cfg)
    parts, s = [], state
    for n in (1, 5, 37, 100, 157):
        chunk, s = blink_closures(s, n, 7, FPS, cfg)
        parts.append(chunk)
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_idle_head_motion_is_small_slow_and_deterministic():
    frames = np.arange(60 * FPS)
    angles = idle_head_deg(frames, 3, FPS)
    assert np.abs(angles).max() < 3.0
    assert np.abs(np.diff(angles, axis=0)).max() < 0.15  # degrees per frame: slow
    assert angles.std(axis=0).min() > 0.2  # but it does move
    np.testing.assert_array_equal(idle_head_deg(frames[100:200], 3, FPS), angles[100:200])
