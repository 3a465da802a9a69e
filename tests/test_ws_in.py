"""WebSocket input forwarding: order kept, audio joined while a push is in flight."""
import asyncio

import pytest

from deployments.api.edge import http_status
from deployments.api.errors import ServiceError
from deployments.inputs.ws_in import InputForwarder


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
