"""Per-frame lip openness from speech audio: energy and spectral shape, attack and release.

For each video frame (640 samples at 16 kHz = 40 ms):

1. Loudness: RMS in dBFS mapped linearly from `floor_db` (0) to `full_db` (1).
   Below `gate_db` the frame counts as silence and the target is 0.
2. Spectral shape: the share of the frame's energy in the voice band
   (`voice_band_hz`, where vowels put their formants). Vowels open the mouth;
   fricatives and breath ('s', 'f', 'h') are loud in high frequencies with the
   mouth nearly closed, so they get a smaller opening:
   target = loudness · (1 − shape_weight + shape_weight · voice_share).
3. Smoothing: the level moves toward the target with a fast attack (mouths
   open quickly on an onset) and a slower release (they close more gently);
   levels under `closed_below` snap to 0 so the mouth really shuts in silence.

The carry is one float: the smoothed level.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..base import SAMPLE_RATE_HZ, SAMPLES_PER_FRAME


@dataclass(frozen=True)
class LipConfig:
    floor_db: float = -45.0
    full_db: float = -12.0
    gate_db: float = -50.0
    voice_band_hz: tuple[float, float] = (250.0, 3000.0)
    shape_weight: float = 0.5
    attack: float = 0.75  # share of the gap closed per frame while opening
    release: float = 0.45  # share of the gap closed per frame while closing
    closed_below: float = 0.02


def frame_features(audio16k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """audio16k: (640·N,) float32 -> rms_db (N,), power spectrum N×321, its frequencies (321,)."""
    frames = audio16k.reshape(-1, SAMPLES_PER_FRAME).astype(np.float64)  # N×640
    rms = np.sqrt(np.mean(frames**2, axis=1))
    rms_db = 20 * np.log10(np.maximum(rms, 1e-8))
    window = np.hanning(SAMPLES_PER_FRAME)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # N×321
    freqs = np.fft.rfftfreq(SAMPLES_PER_FRAME, 1 / SAMPLE_RATE_HZ)
    return rms_db, power, freqs


def target_openness(audio16k: np.ndarray, config: LipConfig = LipConfig()) -> np.ndarray:
    """(640·N,) float32 audio -> (N,) instantaneous openness in [0, 1] (before smoothing)."""
    rms_db, power, freqs = frame_features(audio16k)
    lo, hi = config.voice_band_hz
    in_band = (freqs >= lo) & (freqs <= hi)
    voice_share = power[:, in_band].sum(axis=1) / np.maximum(power.sum(axis=1), 1e-20)
    loudness = np.clip((rms_db - config.floor_db) / (config.full_db - config.floor_db), 0, 1)
    shape = 1 - config.shape_weight + config.shape_weight * voice_share
    target = loudness * shape
    target[rms_db < config.gate_db] = 0.0
    return target


def smooth(targets: np.ndarray, level: float, config: LipConfig = LipConfig()) -> tuple[np.ndarray, float]:
    """Attack/release smoothing of per-frame targets from the carried `level`.

    Returns the (N,) smoothed levels and the level to carry into the next chunk.
    """
    out = np.empty(len(targets), np.float64)
    for i, target in enumerate(targets):
        rate = config.attack if target > level else config.release
        level += rate * (target - level)
        if level < config.closed_below:
            level = 0.0
        out[i] = level
    return out, float(level)


def lip_levels(audio16k: np.ndarray, level: float, config: LipConfig = LipConfig()) -> tuple[np.ndarray, float]:
    """(640·N,) float32 audio and the carried level -> (N,) openness in [0, 1], new level."""
    return smooth(target_openness(audio16k, config), level, config)
