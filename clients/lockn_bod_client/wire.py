"""What travels on a session's WebSocket, parsed: video frames, avatar3d audio, server events.

Pure functions and small value types, no I/O. The server's own models live in
`deployments/api/protocol.py`; this module restates the few constants a client needs
(tests/unit/test_client.py checks that they agree) so that the client needs neither
numpy nor pydantic.
"""
from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Union

from .errors import LockNBodError, ProtocolError

FRAME_MAGIC = b"BODF"  # a video frame: the header, then a JPEG
AUDIO_MAGIC = b"BODA"  # avatar3d: the header, then PCM16LE mono at 16 kHz
HEADER = struct.Struct("<4sQ")  # magic, then the frame index (BODF) or the first sample (BODA)
FPS = 25
OUTPUT_SAMPLE_RATE_HZ = 16000  # the session clock's audio rate
SAMPLES_PER_FRAME = OUTPUT_SAMPLE_RATE_HZ // FPS  # frame k shows 16 kHz samples [640 k, 640 (k+1))


@dataclass(frozen=True)
class VideoFrame:
    """One video frame: `pts` is its index on the session clock; `jpeg` the image.

    Frame `pts` is due at `t0 + pts / 25` (the `clock` event's `t0`, client pacing) and shows
    the session's output audio samples [640·pts, 640·(pts+1)) at 16 kHz."""

    pts: int
    jpeg: bytes
    t_recv: float = field(default_factory=time.time, compare=False)

    @property
    def sample_span(self) -> tuple[int, int]:
        """The 16 kHz output samples this frame shows."""
        return self.pts * SAMPLES_PER_FRAME, (self.pts + 1) * SAMPLES_PER_FRAME


@dataclass(frozen=True)
class AudioChunk:
    """avatar3d: speech audio from `sample` on (16 kHz output clock), PCM16LE mono."""

    sample: int
    pcm16: bytes
    t_recv: float = field(default_factory=time.time, compare=False)

    @property
    def samples(self) -> int:
        return len(self.pcm16) // 2

    @property
    def end_sample(self) -> int:
        return self.sample + self.samples

    def cut(self, before_sample: int) -> "AudioChunk | None":
        """The part of this chunk before `before_sample` (None if nothing is left)."""
        keep = max(0, min(self.samples, before_sample - self.sample))
        if keep == 0:
            return None
        return AudioChunk(self.sample, self.pcm16[: 2 * keep], self.t_recv)


@dataclass(frozen=True)
class Event:
    """A server event (JSON text): `type` says which; `data` is the whole message.

    Read fields as `event["pts"]` or `event.get("reason")`. docs/api.md#server-events lists
    every type and its fields."""

    type: str
    data: dict[str, Any]
    t_recv: float = field(default_factory=time.time, compare=False)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    @property
    def pts(self) -> int | None:
        """The frame the event applies at, where it says."""
        return self.data.get("pts")

    @property
    def is_error(self) -> bool:
        return self.type == "error"

    def as_error(self) -> LockNBodError:
        """An `error` event as the exception the HTTP API would raise for its code."""
        return LockNBodError(self.data.get("code", "unknown"), self.data.get("error") or self.data.get("reason", ""))

    def raise_for_error(self) -> None:
        """Raise the event's LockNBodError if it is an `error` event."""
        if self.is_error:
            raise self.as_error()


@dataclass(frozen=True)
class Clock:
    """Client pacing: frame `pts` is due at `t0 + pts / fps` on the server's wall clock (s)."""

    t0: float
    fps: int = FPS

    def due(self, pts: int) -> float:
        return self.t0 + pts / self.fps

    def pts_at(self, t: float) -> int:
        """The frame on show at time `t`."""
        return int((t - self.t0) * self.fps)


Message = Union[VideoFrame, AudioChunk, Event]


def parse_binary(message: bytes, t_recv: float | None = None) -> VideoFrame | AudioChunk:
    """A binary WebSocket message: a `<4sQ` header (BODF + pts, or BODA + first sample), then media."""
    t_recv = time.time() if t_recv is None else t_recv
    if len(message) < HEADER.size:
        raise ProtocolError(f"a binary message of {len(message)} bytes is shorter than its {HEADER.size}-byte header")
    magic, index = HEADER.unpack_from(message)
    body = bytes(message[HEADER.size:])
    if magic == FRAME_MAGIC:
        return VideoFrame(index, body, t_recv)
    if magic == AUDIO_MAGIC:
        if len(body) % 2:
            raise ProtocolError("BODA audio with an odd number of bytes")
        return AudioChunk(index, body, t_recv)
    raise ProtocolError(f"unknown binary magic {magic!r}")


def parse_text(message: str, t_recv: float | None = None) -> Event:
    """A text WebSocket message: a JSON object with its `type`."""
    try:
        data = json.loads(message)
    except ValueError as err:
        raise ProtocolError(f"a text message that is not JSON: {message[:80]!r}") from err
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError(f"a text message without a `type`: {message[:80]!r}")
    return Event(data["type"], data, time.time() if t_recv is None else t_recv)


def parse_message(message: bytes | str, t_recv: float | None = None) -> Message:
    """Any message the server sends on a session's WebSocket."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        return parse_binary(bytes(message), t_recv)
    return parse_text(message, t_recv)


def pack_frame(pts: int, jpeg: bytes) -> bytes:
    """A BODF message, as the server sends it (for tests and relays)."""
    return HEADER.pack(FRAME_MAGIC, pts) + jpeg
