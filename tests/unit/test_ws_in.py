"""WebSocket input forwarding: order kept, audio joined while a push is in flight."""
import asyncio

import pytest

from deployments.api.edge import http_status
from deployments.api.errors import ServiceError
from deployments.inputs.ws_in import InputForwarder, describe_dropped


class FakeHost:
    """The host calls as the forwarder makes them; a push can be held open to let messages queue."""

    def __init__(self):
        self.calls, self.reported = [], []
        self.release = asyncio.Event()
        self.release.set()
        self.refuse: ServiceError | None = None

    async def push(self, data: bytes):
        self.calls.append(("audio", data))
        await self.release.wait()
        if self.refuse is not None:
            raise self.refuse

    async def control(self, event: dict):
        self.calls.append(("event", event["type"]))

    async def report(self, err: ServiceError):
        self.reported.append(err.code)

    def forwarder(self, max_push_bytes: int = 1 << 20) -> InputForwarder:
        return InputForwarder(self.push, self.control, self.report, max_push_bytes)


def test_audio_that_queues_behind_a_push_goes_in_one_push_and_events_keep_their_place():
    async def main():
        host = FakeHost()
        f = host.forwarder()
        run = asyncio.create_task(f.run())
        host.release.clear()
        await f.put_audio(b"a1")
        await asyncio.sleep(0.01)  # a1 is in flight; the rest queues behind it
        for message in (b"a2", b"a3", {"type": "end_of_speech"}, b"a4", {"type": "interrupt"}):
            await (f.put_audio(message) if isinstance(message, bytes) else f.put_event(message))
        host.release.set()
        await f.drained(timeout_s=5)
        run.cancel()
        return host.calls

    assert asyncio.run(main()) == [("audio", b"a1"), ("audio", b"a2a3"), ("event", "end_of_speech"),
                                   ("audio", b"a4"), ("event", "interrupt")]


def test_a_push_is_joined_only_up_to_its_size_limit():
    async def main():
        host = FakeHost()
        f = host.forwarder(max_push_bytes=4)
        run = asyncio.create_task(f.run())
        host.release.clear()
        await f.put_audio(b"00")
        await asyncio.sleep(0.01)
        for m in (b"11", b"22", b"33", b"44"):
            await f.put_audio(m)
        host.release.set()
        await f.drained(timeout_s=5)
        run.cancel()
        return [data for _, data in host.calls]

    assert asyncio.run(main()) == [b"00", b"1122", b"3344"]


def test_odd_length_audio_is_refused_before_it_could_shift_the_samples_joined_after_it():
    async def main():
        f = FakeHost().forwarder()
        with pytest.raises(ServiceError) as raised:
            await f.put_audio(b"abc")
        return raised.value

    err = asyncio.run(main())
    assert http_status(err.code) == 400 and err.code == "bad_audio"


def test_a_refused_push_is_reported_and_forwarding_goes_on_until_the_session_is_gone():
    async def main():
        host = FakeHost()
        f = host.forwarder()
        run = asyncio.create_task(f.run())
        host.refuse = ServiceError("audio_buffer_full", "full")
        await f.put_audio(b"a1")
        await asyncio.sleep(0.01)
        host.refuse = None
        await f.put_event({"type": "interrupt"})
        await f.drained(timeout_s=5)
        host.refuse = ServiceError("unknown_session", "gone")
        await f.put_audio(b"a2")
        await asyncio.wait_for(run, 5)  # returns by itself
        return host

    host = asyncio.run(main())
    assert host.reported == ["audio_buffer_full", "unknown_session"]
    assert host.calls == [("audio", b"a1"), ("event", "interrupt"), ("audio", b"a2")]


class BoundedHost(FakeHost):
    """A host whose speech buffer holds `capacity_bytes`: a push that would overflow it is refused whole."""

    def __init__(self, capacity_bytes: int):
        super().__init__()
        self.capacity_bytes, self.buffered_bytes, self.reasons = capacity_bytes, 0, []

    async def push(self, data: bytes):
        self.calls.append(("audio", data))
        await self.release.wait()
        if self.buffered_bytes + len(data) > self.capacity_bytes:
            raise ServiceError("audio_buffer_full", "speech buffer full")
        self.buffered_bytes += len(data)

    async def report(self, err: ServiceError):
        self.reported.append(err.code)
        self.reasons.append(err.reason)


def test_an_overflowing_joined_push_drops_only_the_messages_that_do_not_fit():
    async def main():
        host = BoundedHost(capacity_bytes=12)
        f = host.forwarder()
        run = asyncio.create_task(f.run())
        host.release.clear()
        await f.put_audio(b"00")
        await asyncio.sleep(0.01)  # in flight; the rest is joined behind it
        for m in (b"1111", b"2222", b"3333", b"44"):
            await f.put_audio(m)
        host.release.set()
        await f.drained(timeout_s=5)
        run.cancel()
        return host

    host = asyncio.run(main())
    pushed = [data for _, data in host.calls]
    assert pushed == [b"00", b"11112222333344", b"1111", b"2222", b"3333", b"44"]
    assert host.buffered_bytes == 12  # 00, 1111, 2222 and 44 went in; only 3333 was dropped
    assert host.reported == ["audio_buffer_full"]  # one event for the joined push
    assert "dropped 2 samples: 5..7 of this connection's audio" in host.reasons[0]


def test_a_refused_single_message_names_its_samples_in_the_stream():
    async def main():
        host = BoundedHost(capacity_bytes=4)
        f = host.forwarder()
        run = asyncio.create_task(f.run())
        for m in (b"aaaa", b"bbbbbb"):
            await f.put_audio(m)
            await f.drained(timeout_s=5)
        run.cancel()
        return host

    host = asyncio.run(main())
    assert host.reported == ["audio_buffer_full"]
    assert host.reasons[0] == "speech buffer full; dropped 3 samples: 2..5 of this connection's audio"


def test_dropped_ranges_are_reported_compactly():
    assert describe_dropped([(0, 4), (8, 12)]) == "dropped 4 samples: 0..2, 4..6 of this connection's audio"
    many = describe_dropped([(i * 10, i * 10 + 2) for i in range(6)])
    assert many.endswith("and 2 more ranges of this connection's audio") and many.startswith("dropped 6 samples")
