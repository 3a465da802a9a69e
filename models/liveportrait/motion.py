"""Life between words: natural blinks and slow idle head motion.

Blinks: people blink about 15–20 times a minute at irregular intervals. The
gap to the next blink is `min_interval_s` plus an exponential draw, so the
mean gap is `mean_interval_s` (3.5 s ≈ 17/min) and blinks never come in
bursts. Each blink is a short closure profile (close fast, hold, open slower;
about a quarter of a second). Randomness comes from a generator seeded with
(seed, blink number), so the carry holds only integers and a stream replays
identically.

Idle head motion: a sum of slow sinusoids per axis at incommensurate
frequencies (0.05–0.3 Hz), a fraction of a degree to two degrees, phases from
the seed: a pure function of the frame index, so it needs no state beyond the
frame counter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlinkConfig:
    mean_interval_s: float = 3.5
    min_interval_s: float = 1.2
    close_frames: int = 2
    hold_frames: int = 1
    open_frames: int = 3


@dataclass(frozen=True)
class BlinkState:
    """Carry for blinks: frames until the next blink starts, position inside the
    current blink (-1: none), blinks so far (indexes the random draws)."""

    frames_to_next: int
    phase: int = -1
    count: int = 0


def closure_profile(config: BlinkConfig) -> np.ndarray:
    """(close+hold+open,) eyelid closure in [0, 1] per frame of one blink."""
    closing = np.arange(1, config.close_frames + 1) / config.close_frames
    holding = np.ones(config.hold_frames)
    opening = 1 - np.arange(1, config.open_frames + 1) / (config.open_frames + 1)
    return np.concatenate([closing, holding, opening])


def draw_interval_frames(seed: int, count: int, fps: float, config: BlinkConfig) -> int:
    """Frames between the end of blink `count` and the start of the next one."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, count])
    seconds = config.min_interval_s + rng.exponential(config.mean_interval_s - config.min_interval_s)
    return max(1, round(seconds * fps))


def start_blinks(seed: int, fps: float, config: BlinkConfig = BlinkConfig()) -> BlinkState:
    return BlinkState(frames_to_next=draw_interval_frames(seed, 0, fps, config))


def blink_closures(
    state: BlinkState, n_frames: int, seed: int, fps: float, config: BlinkConfig = BlinkConfig()
) -> tuple[np.ndarray, BlinkState]:
    """(n_frames,) eyelid closure in [0, 1] for the next frames, and the new state."""
    profile = closure_profile(config)
    out = np.zeros(n_frames)
    to_next, phase, count = state.frames_to_next, state.phase, state.count
    for i in range(n_frames):
        if phase < 0:
            to_next -= 1
            if to_next > 0:
                continue
            phase = 0  # a blink starts on this frame
        out[i] = profile[phase]
        phase += 1
        if phase == len(profile):
            count += 1
            phase, to_next = -1, draw_interval_frames(seed, count, fps, config)
    return out, BlinkState(to_next, phase, count)


@dataclass(frozen=True)
class IdleMotionConfig:
    """Per axis, (amplitude in degrees, frequency in Hz) of each slow sinusoid."""

    pitch: tuple[tuple[float, float], ...] = ((1.2, 0.11), (0.5, 0.27))
    yaw: tuple[tuple[float, float], ...] = ((1.8, 0.07), (0.6, 0.19))
    roll: tuple[tuple[float, float], ...] = ((0.8, 0.05), (0.3, 0.23))


def idle_head_deg(frames: np.ndarray, seed: int, fps: float, config: IdleMotionConfig = IdleMotionConfig()) -> np.ndarray:
    """Frame indices (N,) -> N×3 [pitch, yaw, roll] degrees of idle motion."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0x1D1E])
    t = np.asarray(frames, np.float64) / fps
    out = np.zeros((len(t), 3))
    for axis, waves in enumerate((config.pitch, config.yaw, config.roll)):
        for amplitude, freq in waves:
            phase = rng.uniform(0, 2 * math.pi)
            out[:, axis] += amplitude * np.sin(2 * math.pi * freq * t + phase)
    return out
