"""The session clock and the speech buffer: pure logic, no I/O.

Frame `pts` is due at `t0 + pts / 25` (wall-clock seconds, shared by every
process on the machine). Output audio is on the same clock: frame pts shows
output samples [640 pts, 640 (pts+1)) at 16 kHz, speech where speech was
rendered and silence where the session was idle.
"""
from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass, field

import numpy as np

from models.base import FPS, SAMPLES_PER_FRAME


@dataclass
class SessionClock:
    t0: float = field(default_factory=time.time)

    def due(self, pts: int) -> float:
        return self.t0 + pts / FPS

    def now_pts(self, now: float | None = None) -> int:
        """The frame being shown now."""
        now = time.time() if now is None else now
        return max(0, math.floor((now - self.t0) * FPS))


class SpeechBuffer:
    """16 kHz float32 speech waiting to be rendered, cut into whole frames.

    It also remembers when each push arrived, so that `last_taken_arrival` says when the
    last sample of the latest take came in (the audio-in → frame-out latency metric).
    """

    def __init__(self, max_samples: int):
        self.max_samples = max_samples
        self._chunks: list[np.ndarray] = []
        self._size = 0
        self._arrivals: collections.deque[list] = collections.deque()  # [end offset in the buffer, wall s]
        self.last_taken_arrival: float | None = None

    def __len__(self) -> int:
        return self._size

    @property
    def frames(self) -> int:
        return self._size // SAMPLES_PER_FRAME

    def check_room(self, n_samples: int) -> None:
        """OverflowError unless `n_samples` more fit."""
        if self._size + n_samples > self.max_samples:
            raise OverflowError(
                f"speech buffer full ({self.max_samples / 16000:.0f} s buffered); send audio closer to real time"
            )

    def push(self, samples: np.ndarray, now: float | None = None) -> None:
        self.check_room(len(samples))
        if len(samples):
            self._chunks.append(samples.astype(np.float32, copy=False))
            self._size += len(samples)
            self._arrivals.append([self._size, time.time() if now is None else now])

    def take_frames(self, n: int) -> np.ndarray:
        """The first n whole frames of audio: (640·n,) float32."""
        want = min(n, self.frames) * SAMPLES_PER_FRAME
        return self._take(want)

    def take(self, n: int) -> np.ndarray:
        """Up to the first n samples: (≤ n,) float32."""
        return self._take(min(n, self._size))

    def take_all_padded(self) -> np.ndarray:
        """Everything buffered, zero-padded to a whole number of frames (end of an utterance)."""
        data = self._take(self._size)
        pad = (-len(data)) % SAMPLES_PER_FRAME
        return np.concatenate([data, np.zeros(pad, np.float32)]) if pad else data

    def clear(self) -> None:
        self._chunks, self._size = [], 0
        self._arrivals.clear()

    def _take(self, n: int) -> np.ndarray:
        if n == 0:
            return np.zeros(0, np.float32)
        data = np.concatenate(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        head, rest = data[:n], data[n:]
        self._chunks = [rest] if len(rest) else []
        self._size = len(rest)
        self._note_taken(n)
        return np.ascontiguousarray(head)

    def _note_taken(self, n: int) -> None:
        """The first push that reaches past sample n − 1 brought the last sample taken."""
        while self._arrivals and self._arrivals[0][0] < n:
            self._arrivals.popleft()
        if self._arrivals:
            self.last_taken_arrival = self._arrivals[0][1]
            if self._arrivals[0][0] == n:
                self._arrivals.popleft()
        for entry in self._arrivals:
            entry[0] -= n
