"""Helpers shared by the session and graph tests: coded audio and pattern-frame checks."""
from __future__ import annotations

import numpy as np

from deployments.transports.encode import decode_jpeg
from models.base import SAMPLES_PER_FRAME
from models.testing import decode_pattern


def coded_pcm16(n_frames: int, first_code: int = 1) -> np.ndarray:
    """PCM16 audio whose frame span k holds the constant value first_code + k."""
    codes = np.arange(first_code, first_code + n_frames, dtype=np.int16)
    return np.repeat(codes, SAMPLES_PER_FRAME)


def frame_info(jpeg: bytes) -> tuple[bool, int]:
    """(is_speech, code) of a pattern frame."""
    return decode_pattern(decode_jpeg(jpeg))


def assert_speech_frames_match_audio(speech: list[tuple[int, int]], n_frames: int, first_code: int = 1):
    """speech: [(pts, code)] in arrival order -> exactly one frame per audio span, in order, contiguous pts."""
    codes = [c for _, c in speech]
    assert codes == list(range(first_code, first_code + n_frames)), (
        f"{len(codes)} speech frames; first mismatches: "
        f"{[(i, c) for i, c in enumerate(codes) if c != first_code + i][:5]}")
    pts = [p for p, _ in speech]
    assert pts == list(range(pts[0], pts[0] + n_frames)), "speech frames must have consecutive pts"
