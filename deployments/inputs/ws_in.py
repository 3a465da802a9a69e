"""A WebSocket's input, forwarded to the session's host in arrival order.

Audio messages that arrive while a push is in flight are joined and sent with the
next push: a client that streams faster than real time (a TTS usually does) costs
a few host calls, not one per message. Control events are never joined or
reordered: `end_of_speech` after the last audio arrives after it, and an `interrupt`
drops only the audio sent before it.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..api.errors import ServiceError
from .audio_in import check_pcm16

INBOX_MESSAGES = 64  # read ahead of the host this far; beyond it the socket waits (back-pressure)


class InputForwarder:
    """`put` messages in order; `run` forwards them until the session is gone.

    push(pcm16 bytes), control(event dict): the host calls; report(ServiceError): tell the
    client (an `error` event). A refused push or event is reported and the rest go on.
    """

    def __init__(self, push: Callable[[bytes], Awaitable[None]], control: Callable[[dict], Awaitable[None]],
                 report: Callable[[ServiceError], Awaitable[None]], max_push_bytes: int):
        self.push, self.control, self.report = push, control, report
        self.max_push_bytes = max_push_bytes
        self._inbox: asyncio.Queue[tuple[str, bytes | dict]] = asyncio.Queue(INBOX_MESSAGES)

    async def put_audio(self, data: bytes) -> None:
        check_pcm16(data)  # joined messages must each be whole samples
        await self._inbox.put(("audio", data))

    async def put_event(self, event: dict) -> None:
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
                await (self.push(payload) if kind == "audio" else self.control(payload))
            except ServiceError as err:
                await self.report(err)
                if err.code == "unknown_session":
                    return
            finally:
                for _ in range(taken):
                    self._inbox.task_done()

    def _join_audio(self, first: bytes) -> tuple[bytes, tuple | None, int]:
        """The audio waiting behind `first`, up to the next event or `max_push_bytes`:
        (joined audio, the event taken, if one was, and how many audio messages were joined)."""
        parts, size = [first], len(first)
        while size < self.max_push_bytes and not self._inbox.empty():
            kind, payload = self._inbox.get_nowait()
            if kind != "audio":
                return b"".join(parts), (kind, payload), len(parts)
            parts.append(payload)
            size += len(payload)
        return b"".join(parts), None, len(parts)
