"""A client's playout buffer for `?pacing=client`.

With client pacing the server sends frames as soon as they are rendered, up to 1 s ahead,
and the client shows each when it is due. An interrupt (or speech starting) takes back frames
the client already holds: a `retract` event with `from_pts` says to drop every held frame
from that pts on; new frames with those pts follow (docs/api.md#pacing). In avatar3d the
same holds for audio, from the event's `sample` on.
"""
from __future__ import annotations

import bisect

from .wire import AudioChunk, Clock, VideoFrame


class PlayoutBuffer:
    """Frames (and avatar3d audio) received ahead of time, in pts order, until shown.

    `add` keeps frames sorted by pts; a frame whose pts is already held replaces the held one
    (the server re-renders retracted pts). `retract(from_pts)` drops what a `retract` event
    takes back. `pop_due(now, clock)` hands out the frames due by `now`."""

    def __init__(self) -> None:
        self._frames: list[VideoFrame] = []
        self._audio: list[AudioChunk] = []
        self.retracted = 0  # frames dropped by retract events, in all

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def frames(self) -> list[VideoFrame]:
        """The frames held, in pts order."""
        return list(self._frames)

    @property
    def audio(self) -> list[AudioChunk]:
        """avatar3d: the audio held, in sample order."""
        return list(self._audio)

    def add(self, frame: VideoFrame) -> None:
        pts = [f.pts for f in self._frames]
        i = bisect.bisect_left(pts, frame.pts)
        if i < len(self._frames) and self._frames[i].pts == frame.pts:
            self._frames[i] = frame
        else:
            self._frames.insert(i, frame)

    def add_audio(self, chunk: AudioChunk) -> None:
        self._audio = [c for c in (a.cut(chunk.sample) for a in self._audio) if c is not None]
        self._audio.append(chunk)

    def retract(self, from_pts: int, sample: int | None = None) -> list[VideoFrame]:
        """Drop the frames from `from_pts` on (and avatar3d audio from `sample` on); returns the frames dropped."""
        keep = [f for f in self._frames if f.pts < from_pts]
        dropped = self._frames[len(keep):]
        self._frames = keep
        self.retracted += len(dropped)
        if sample is not None:
            self._audio = [c for c in (a.cut(sample) for a in self._audio) if c is not None]
        return dropped

    def pop_due(self, now: float, clock: Clock) -> list[VideoFrame]:
        """The frames due by `now` (server wall clock), in pts order, removed from the buffer.
        A player shows the last of them and skips the rest, which came late."""
        n = 0
        while n < len(self._frames) and clock.due(self._frames[n].pts) <= now:
            n += 1
        due, self._frames = self._frames[:n], self._frames[n:]
        return due

    def pop_audio_due(self, now: float, clock: Clock) -> list[AudioChunk]:
        """avatar3d: the audio chunks whose first sample is due by `now`."""
        rate = clock.fps * 640
        n = 0
        while n < len(self._audio) and clock.t0 + self._audio[n].sample / rate <= now:
            n += 1
        due, self._audio = self._audio[:n], self._audio[n:]
        return due

    def clear(self) -> None:
        self._frames.clear()
        self._audio.clear()
