"""A WebSocket's input, forwarded to the session's host in arrival order.

Audio messages that arrive while a push is in flight are joined and sent with the
next push: a client that streams faster than real time (a TTS usually does) costs
a few host calls, not one per message. Control events are never joined or
reordered: `end_of_speech` after the last audio arrives after it, and an `interrupt`
drops only the audio sent before it.

When the session's speech buffer is full, a joined push is refused whole; its messages
are then pushed one by one, so only those that do not fit are dropped, and the client
is told exactly which samples of its stream were (one `audio_buffer_full` event).
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..api.errors import ServiceError
from ..api.protocol import ControlEvent
from .audio_in import check_pcm16

INBOX_MESSAGES = 64  # read ahead of the host this far; beyond it the socket waits (back-pressure)
BUFFER_FULL = "audio_buffer_full"
PCM16_BYTES = 2
MAX_RANGES_REPORTED = 4


class InputForwarder:
    """`put` messages in order; `run` forwards them until the session is gone.

    push(pcm16 bytes), control(ControlEvent): the host calls; report(ServiceError): tell the
    client (an `error` event). A refused push or event is reported and the rest go on.
    """

    def __init__(self, push: Callable[[bytes], Awaitable[None]], control: Callable[[ControlEvent], Awaitable[None]],
                 report: Callable[[ServiceError], Awaitable[None]], max_push_bytes: int):
        self.push, self.control, self.report = push, control, report
        self.max_push_bytes = max_push_bytes
        self._audio_bytes = 0  # how much audio this socket has sent: where each push starts
        self._inbox: asyncio.Queue[tuple[str, bytes | ControlEvent]] = asyncio.Queue(INBOX_MESSAGES)

    async def put_audio(self, data: bytes) -> None:
        check_pcm16(data)  # joined messages must each be whole samples
        await self._inbox.put(("audio", data))

    async def put_event(self, event: ControlEvent) -> None:
        await self._inbox.put(("event", event))

    async def drained(self, timeout_s: float) -> None:
        """Wait until what was put has been forwarded (or `timeout_s` passes)."""
        try:
            await asyncio.wait_for(self._inbox.join(), timeout_s)
        except asyncio.TimeoutError:
            pass

    async def run(self) -> None:
        """Returns when the host no longer knows the session."""
        held = None  # an event taken while joining audio: it goes next
        while True:
            kind, payload = held or await self._inbox.get()
            held, taken = None, 1
            if kind == "audio":
                payload, held, taken = self._join_audio(payload)
            try:
                await (self._push_audio(payload) if kind == "audio" else self.control(payload))
            except ServiceError as err:
                await self.report(err)
                if err.code == "unknown_session":
                    return
            finally:
                for _ in range(taken):
                    self._inbox.task_done()

    async def _push_audio(self, parts: list[bytes]) -> None:
        """Push the joined messages in one call; if the buffer is full, one by one, and raise
        `audio_buffer_full` naming the samples dropped (offsets in this socket's audio)."""
        start = self._audio_bytes
        self._audio_bytes += sum(map(len, parts))
        try:
            await self.push(b"".join(parts))
            return
        except ServiceError as err:
            if err.code != BUFFER_FULL:
                raise
            refusal = err
        dropped = await self._push_each(parts, start) if len(parts) > 1 else [(start, self._audio_bytes)]
        if dropped:
            raise ServiceError(BUFFER_FULL, f"{refusal.reason}; {describe_dropped(dropped)}", refusal.retry_after_s)

    async def _push_each(self, parts: list[bytes], start: int) -> list[tuple[int, int]]:
        """Push each message alone; the byte ranges of those refused for a full buffer."""
        dropped, pos = [], start
        for part in parts:
            try:
                await self.push(part)
            except ServiceError as err:
                if err.code != BUFFER_FULL:
                    raise
                if dropped and dropped[-1][1] == pos:
                    dropped[-1] = (dropped[-1][0], pos + len(part))
                else:
                    dropped.append((pos, pos + len(part)))
            pos += len(part)
        return dropped

    def _join_audio(self, first: bytes) -> tuple[list[bytes], tuple | None, int]:
        """The audio waiting behind `first`, up to the next event or `max_push_bytes`:
        (the audio messages, the event taken, if one was, and how many audio messages were joined)."""
        parts, size = [first], len(first)
        while size < self.max_push_bytes and not self._inbox.empty():
            kind, payload = self._inbox.get_nowait()
            if kind != "audio":
                return parts, (kind, payload), len(parts)
            parts.append(payload)
            size += len(payload)
        return parts, None, len(parts)


def describe_dropped(byte_ranges: list[tuple[int, int]]) -> str:
    """'dropped 300 samples: 100..250, 400..550 of this connection's audio' (sample offsets at
    the session's rate, end excluded), so a client knows what to resend or skip."""
    ranges = [(lo // PCM16_BYTES, hi // PCM16_BYTES) for lo, hi in byte_ranges]
    total = sum(hi - lo for lo, hi in ranges)
    shown = ", ".join(f"{lo}..{hi}" for lo, hi in ranges[:MAX_RANGES_REPORTED])
    more = f" and {len(ranges) - MAX_RANGES_REPORTED} more ranges" if len(ranges) > MAX_RANGES_REPORTED else ""
    return f"dropped {total} samples: {shown}{more} of this connection's audio"
