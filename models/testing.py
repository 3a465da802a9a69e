"""The pattern pipeline: frames that encode what they show, for tests and benchmarks.

Each frame is a grid of 4×4 cells (black or white, robust to JPEG). Cell 0
says the kind (white: speech, black: idle); cells 1..15 carry a 15-bit code:
for speech, the mean PCM16 value of the frame's own 640-sample audio span;
for idle, the pipeline's idle-frame counter. A client that sends audio whose
span k holds the constant PCM value k+1 can check that every frame shows its
own audio span, in order, none missing or repeated.

A span whose PCM value is FAIL_CODE makes `render` raise: fault injection for
the backend-error path.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .base import SAMPLES_PER_FRAME, Controls, Persona, PersonaMedia, check_audio_chunk

GRID = 4
CODE_BITS = GRID * GRID - 1
FAIL_CODE = 0x7FFF


@dataclass
class PatternCarry:
    idle_count: int = 0
    held: np.ndarray | None = None  # audio still held back by the lookahead, float32


def encode_pattern(is_speech: bool, code: int, size: int) -> np.ndarray:
    """size×size×3 uint8 frame showing (is_speech, code)."""
    bits = [is_speech] + [bool((code >> b) & 1) for b in range(CODE_BITS)]
    cells = np.array(bits, np.uint8).reshape(GRID, GRID) * 255
    cell = size // GRID
    img = np.kron(cells, np.ones((cell, cell), np.uint8))
    return np.repeat(img[:, :, None], 3, axis=2)


def decode_pattern(frame: np.ndarray) -> tuple[bool, int]:
    """Inverse of encode_pattern on a (possibly JPEG-degraded) frame."""
    gray = frame.mean(axis=2) if frame.ndim == 3 else frame
    cell = gray.shape[0] // GRID
    # Sample each cell's centre, away from JPEG ringing at the edges.
    centres = gray[cell // 2 :: cell, cell // 2 :: cell][:GRID, :GRID].reshape(-1) > 127
    code = sum(int(bit) << b for b, bit in enumerate(centres[1:]))
    return bool(centres[0]), code


class PatternPipeline:
    """Speech frames show their audio span's PCM value; a lookahead can be declared."""

    mode = "pattern"

    def __init__(self, size: int = 64, lookahead_frames: int = 0, work_ms_per_frame: float = 0.0):
        self.size = size
        self.lookahead_frames = lookahead_frames
        # Benchmarks: spend this much CPU per speech frame, like a real backend would.
        self.work_ms_per_frame = work_ms_per_frame

    def prepare(self, media: PersonaMedia, persona_id: str = "") -> Persona:
        return Persona(persona_id=persona_id, media=media)

    def start(self, persona: Persona, controls: Controls) -> PatternCarry:
        return PatternCarry(held=np.zeros(0, np.float32))

    def render(self, persona, carry: PatternCarry, audio16k: np.ndarray, controls: Controls):
        check_audio_chunk(audio16k)
        audio = np.concatenate([carry.held, audio16k])
        n_out = max(0, len(audio) // SAMPLES_PER_FRAME - self.lookahead_frames)
        frames = self._speech_frames(audio[: n_out * SAMPLES_PER_FRAME])
        carry.held = audio[n_out * SAMPLES_PER_FRAME :]
        return frames, carry

    def flush(self, persona, carry: PatternCarry, controls: Controls):
        frames = self._speech_frames(carry.held)
        carry.held = np.zeros(0, np.float32)
        return frames, carry

    def interrupt(self, persona, carry: PatternCarry, controls: Controls):
        carry.held = np.zeros(0, np.float32)
        return carry

    def idle(self, persona, carry: PatternCarry, n: int, controls: Controls):
        frames = np.stack([encode_pattern(False, (carry.idle_count + i) & FAIL_CODE, self.size) for i in range(n)]) \
            if n else np.zeros((0, self.size, self.size, 3), np.uint8)
        carry.idle_count += n
        return frames, carry

    def _speech_frames(self, audio: np.ndarray) -> np.ndarray:
        spans = audio.reshape(-1, SAMPLES_PER_FRAME)  # N×640
        codes = np.rint(spans.mean(axis=1) * 32768).astype(int)
        if (codes == FAIL_CODE).any():
            raise RuntimeError("pattern pipeline: injected failure (FAIL_CODE audio)")
        if not len(codes):
            return np.zeros((0, self.size, self.size, 3), np.uint8)
        _burn_cpu(self.work_ms_per_frame * len(codes))
        return np.stack([encode_pattern(True, int(c) & FAIL_CODE, self.size) for c in codes])


def _burn_cpu(ms: float) -> None:
    """Busy-work for `ms` milliseconds of this thread's CPU time (a stand-in render cost:
    the same CPU whether or not other processes share the cores meanwhile)."""
    end = time.thread_time() + ms / 1000
    x = np.ones(64, np.float32)
    while time.thread_time() < end:
        x = np.sqrt(x * 1.0001)
