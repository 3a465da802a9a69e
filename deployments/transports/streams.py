"""Transports out: relay a session's items to a client, each frame when it is due.

The session host publishes frames a little ahead of time with their pts;
`paced` holds them until `t0 + pts/25`, drops the ones an interrupt
retracted, and interleaves events at their own pts. WebSocket and MJPEG are
two ways of writing what `paced` yields.

`ahead` is the WebSocket's opt-in client pacing, and always avatar3d's (its host already
sends speech audio only ~1 s ahead, and the page plays it as it comes): each item as soon as the host
publishes it, a `clock` event so the client knows when a pts is due, and a
`retract` event where an interrupt takes back frames the client holds. A
chunk's frames then go out together, with one wake-up of the Router, not one each.
"""
from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from models.base import FPS

from ..api.protocol import (
    FRAME_HEADER,
    FRAME_MAGIC,
    AudioItem,
    ClockEvent,
    EndItem,
    EventItem,
    FramesItem,
    HostItem,
    RetractEvent,
    RetractItem,
    ServerEvent,
    SessionClosed,
)

MJPEG_BOUNDARY = "lockn-bod-frame"
# An item counts as due this much before its time. uvloop (Serve's event loop) keeps
# timers in whole milliseconds and may wake up to 1 ms early; without this slack the
# Router woke ~8 times a frame, spinning on sub-millisecond waits.
DUE_SLACK_S = 0.002


@dataclass(order=True)
class _Due:
    due: float
    pts: int
    order: int
    kind: str = field(compare=False)
    payload: object = field(compare=False)


@dataclass
class Out:
    """One thing to send: a frame (pts, jpeg, audio row or None), an event (with the pts it
    applies at, if any: the same as the event's own), or avatar3d's audio (`data`: the
    WebSocket message)."""

    kind: str  # "frame" | "event" | "audio"
    pts: int | None = None
    jpeg: bytes = b""
    audio: object = None
    event: ServerEvent | None = None
    data: bytes = b""


class _Pending:
    """Items waiting for their due time, ordered by (due, pts, arrival)."""

    def __init__(self):
        self.items: list[_Due] = []
        self.now_events: list[ServerEvent] = []
        self.ended = False
        self._n = 0
        self._waiter: asyncio.Future | None = None

    def add(self, due: float, pts: int, kind: str, payload) -> None:
        self._n += 1
        bisect.insort(self.items, _Due(due, pts, self._n, kind, payload))

    def ingest(self, item: HostItem) -> None:
        match item:
            case FramesItem(t0=t0, pts=pts, jpegs=jpegs, audio=audio):
                for i, (frame_pts, jpeg) in enumerate(zip(pts, jpegs)):
                    self.add(t0 + frame_pts / FPS, frame_pts, "frame", (jpeg, None if audio is None else audio[i]))
            case EventItem(pts=None, event=event):
                self.now_events.append(event)
            case EventItem(t0=t0, pts=pts, event=event):
                # An event is due just before the frame with the same pts.
                self.add(t0 + pts / FPS - 1e-6, pts, "event", event)
            case RetractItem(from_pts=from_pts):
                self.items = [d for d in self.items if d.kind != "frame" or d.pts < from_pts]
            case EndItem(reason=reason):
                self.now_events.append(SessionClosed(reason=reason))
                self.ended = True
        self.wake()

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        """Until something arrives or `timeout` s pass. A bare future and one timer: this runs
        once a frame per viewer, and `asyncio.wait_for` adds a task, a cancellation and two
        exceptions to every timeout."""
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        timer = loop.call_later(max(0.0, timeout), self.wake) if timeout is not None else None
        try:
            await self._waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


async def paced(source: AsyncIterator[HostItem]) -> AsyncIterator[Out]:
    """Yield the session's frames and events at their due times; ends when the session does."""
    pending = _Pending()

    async def read():
        try:
            async for item in source:
                pending.ingest(item)
        finally:
            pending.ended = True
            pending.wake()

    reader = asyncio.get_running_loop().create_task(read())
    last_pts = -1
    try:
        while True:
            while pending.now_events:
                yield Out("event", event=pending.now_events.pop(0))
            if pending.items and pending.items[0].due <= time.time() + DUE_SLACK_S:
                d = pending.items.pop(0)
                if d.kind == "event":
                    yield Out("event", pts=d.pts, event=d.payload)
                elif d.pts > last_pts:  # never show a pts twice (a retract racing a send)
                    last_pts = d.pts
                    yield Out("frame", pts=d.pts, jpeg=d.payload[0], audio=d.payload[1])
                continue
            if pending.ended and not pending.now_events:
                if reader.done() and reader.exception():
                    raise reader.exception()
                return
            await pending.wait((pending.items[0].due - time.time()) if pending.items else None)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def ahead(source: AsyncIterator[HostItem]) -> AsyncIterator[Out]:
    """Client pacing: yield items as they arrive; frame `pts` is due at `t0 + pts / 25`
    (server wall clock, said by the `clock` event), and after a retract frames from
    `from_pts` on come again with new content."""
    t0 = None
    async for item in source:
        item_t0 = item.t0 if isinstance(item, (FramesItem, EventItem)) else None
        if item_t0 is not None and item_t0 != t0:
            t0 = item_t0
            yield Out("event", event=ClockEvent(t0=t0, fps=FPS))
        match item:
            case FramesItem(pts=pts, jpegs=jpegs, audio=audio):
                for i, (frame_pts, jpeg) in enumerate(zip(pts, jpegs)):
                    yield Out("frame", pts=frame_pts, jpeg=jpeg, audio=None if audio is None else audio[i])
            case EventItem(pts=pts, event=event):
                yield Out("event", pts=pts, event=event)
            case AudioItem():
                yield Out("audio", data=item.wire())
            case RetractItem(from_pts=from_pts):
                yield Out("event", event=RetractEvent(from_pts=from_pts))
            case EndItem(reason=reason):
                yield Out("event", event=SessionClosed(reason=reason))
                return


def ws_frame(pts: int, jpeg: bytes) -> bytes:
    """A WebSocket video message: `<4sQ` header (BODF, pts) then the JPEG."""
    return FRAME_HEADER.pack(FRAME_MAGIC, pts) + jpeg


def mjpeg_part(pts: int, jpeg: bytes) -> bytes:
    head = (f"--{MJPEG_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
            f"X-Frame-Index: {pts}\r\n\r\n").encode()
    return head + jpeg + b"\r\n"
