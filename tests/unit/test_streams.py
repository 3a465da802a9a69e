"""The Router's relays of a session's items (deployments/transports/streams.py: paced, ahead), without Ray."""
import asyncio
import time

import numpy as np
import pytest

from deployments.api.protocol import (
    EndItem,
    EventItem,
    FramesItem,
    RetractItem,
    SessionClosed,
    SpeechStarted,
    WarningEvent,
)
from deployments.transports import streams
from deployments.transports.streams import DUE_SLACK_S, ahead, paced
from models.base import FPS


async def _queue_source(queue: asyncio.Queue):
    while (item := await queue.get()) is not None:
        yield item


def _frames(t0: float, pts: list[int], jpegs: list[bytes] | None = None) -> FramesItem:
    return FramesItem(t0, pts, jpegs or [b"j%d" % p for p in pts])


def test_frames_come_when_due_in_order_with_events_just_before_their_frame_and_retracts_honoured():
    async def main():
        queue, out = asyncio.Queue(), []
        t0 = time.time() + 0.1
        await queue.put(_frames(t0, [0, 1, 2, 3, 4]))
        await queue.put(EventItem(SpeechStarted(pts=2), t0))

        async def feed():
            await asyncio.sleep(0.05 + 2.5 / FPS)  # while frame 2 waits: take back 3 and 4, send new ones
            await queue.put(RetractItem(3))
            await queue.put(EventItem(WarningEvent(code="several_faces", reason="the largest is used"), t0))
            await queue.put(_frames(t0, [3, 4], [b"new3", b"new4"]))
            await asyncio.sleep(max(0.0, t0 + 4.5 / FPS - time.time()))  # "end" drops what is not yet due
            await queue.put(EndItem())

        feeder = asyncio.create_task(feed())
        async for item in paced(_queue_source(queue)):
            out.append((item, time.time()))
        await feeder
        return t0, out

    t0, out = asyncio.run(main())
    shown = [(o.kind, o.pts, o.jpeg or o.event.type) for o, _ in out]
    assert shown == [("frame", 0, b"j0"), ("frame", 1, b"j1"), ("event", None, "warning"),
                     ("event", 2, "speech_started"), ("frame", 2, b"j2"), ("frame", 3, b"new3"),
                     ("frame", 4, b"new4"), ("event", None, "session_closed")]
    for o, t in out:
        if o.kind == "frame":
            assert t0 + o.pts / FPS - DUE_SLACK_S <= t < t0 + o.pts / FPS + 0.1, (o.pts, t - t0)


def test_an_item_that_arrives_during_a_long_wait_is_not_held_until_the_wait_ends():
    async def main():
        queue = asyncio.Queue()
        await queue.put(_frames(time.time() + 10, [0]))  # nothing due for 10 s
        stream = paced(_queue_source(queue))
        first = asyncio.create_task(anext(stream))
        await asyncio.sleep(0.05)
        sent = time.time()
        await queue.put(EndItem())
        item = await asyncio.wait_for(first, 1)
        await stream.aclose()
        return item, time.time() - sent

    item, delay = asyncio.run(main())
    assert item.event.wire() == {"type": "session_closed", "reason": "closed"} and delay < 0.05


def test_under_uvloop_the_relay_wakes_about_once_a_frame_not_spinning_on_early_timers(monkeypatch):
    uvloop = pytest.importorskip("uvloop")  # Serve runs the Router on it
    waits = []
    real_wait = streams._Pending.wait

    async def counted(self, timeout):
        waits.append(timeout)
        await real_wait(self, timeout)

    monkeypatch.setattr(streams._Pending, "wait", counted)

    async def source(t0: float, n: int):
        for first in range(0, n, 5):
            yield _frames(t0, list(range(first, first + 5)))
            await asyncio.sleep(0.1)
        await asyncio.sleep(n / FPS)  # the session stays open until the last frame is out

    async def main(n=50):
        return [o.pts async for o in paced(source(time.time() + 0.05, n))]

    assert uvloop.run(main()) == list(range(50))
    assert len(waits) <= 1.5 * 50, f"{len(waits)} waits for 50 frames"


async def _listed(items: list) -> list:
    async def source():
        for item in items:
            yield item

    return [o async for o in ahead(source())]


def test_client_pacing_says_the_clock_once_then_relays_items_as_they_come():
    audio = np.arange(2 * 640, dtype=np.float32).reshape(2, 640)
    items = [EventItem(SpeechStarted(pts=1), 100.0), FramesItem(100.0, [0, 1], [b"a", b"b"], audio=audio),
             RetractItem(1), FramesItem(100.0, [1], [b"c"]), EndItem("idle timeout"), FramesItem(100.0, [2], [b"x"])]
    out = asyncio.run(_listed(items))
    wire = [(o.kind, o.pts, o.jpeg or o.event.wire()) for o in out]
    assert wire == [("event", None, {"type": "clock", "t0": 100.0, "fps": FPS}),
                    ("event", 1, {"type": "speech_started", "pts": 1}),
                    ("frame", 0, b"a"), ("frame", 1, b"b"),
                    ("event", None, {"type": "retract", "from_pts": 1}),
                    ("frame", 1, b"c"),
                    ("event", None, {"type": "session_closed", "reason": "idle timeout"})]
    assert np.array_equal(out[3].audio, audio[1]) and out[5].audio is None


def test_client_pacing_says_the_clock_again_when_it_changes_and_never_for_an_item_without_one():
    items = [EventItem(SessionClosed(reason="x")), FramesItem(5.0, [0], [b"a"]), FramesItem(7.0, [0], [b"b"])]
    clocks = [o.event.wire() for o in asyncio.run(_listed(items)) if o.kind == "event" and o.event.type == "clock"]
    assert clocks == [{"type": "clock", "t0": 5.0, "fps": FPS}, {"type": "clock", "t0": 7.0, "fps": FPS}]
