"""A host's sessions without Ray: the SessionManager with local backends and a fake VRAM gate."""
import asyncio
import time

import numpy as np
import pytest

from deployments.api.errors import ServiceError
from deployments.api.protocol import EndItem, EventItem, InterruptEvent, SessionReady
from deployments.config import AppArgs
from deployments.session.manager import SessionManager, local_backends
from models.base import SAMPLE_RATE_HZ, Controls

HOST_ID = "host1"


class FakeGate:
    """The VramGate's surface, recording what the manager asks: every mode in `modes` is placed."""

    def __init__(self, modes=("pattern",), refuse=False):
        self.modes, self.refuse = set(modes), refuse
        self.placed, self.ended_ids, self.heartbeats, self.demoted, self.notices = [], [], [], [], []
        self.shed = True  # notice(): True after a shed (wait for the backend again), False when lost

    def controls(self, mode):
        return mode in self.modes

    async def place(self, session_id, mode, *, allow_still=True, max_wait_s=30.0, resolution_px=512):
        if self.refuse:
            raise ServiceError("no_room", "the GPU is full", retry_after_s=7)
        self.placed.append((session_id, mode, allow_still))
        return {"action": "admit", "mode": mode}

    def backend(self, session_id, mode, remotes):
        return remotes[mode]

    def notice(self, session_id, decision):
        self.notices.append((session_id, decision))
        return self.shed

    def demote(self, session_id):
        self.demoted.append(session_id)

    async def heartbeat(self, host_id):
        self.heartbeats.append(host_id)

    async def ended(self, session_id):
        self.ended_ids.append(session_id)


def make_manager(store, tmp_path, gate=None, remote_pattern=False, **limits) -> SessionManager:
    """A manager serving still and (locally, or as if remote for the gate) pattern."""
    args = AppArgs(data_dir=tmp_path, enable_test_modes=True, backends={}, limits=limits)
    still, local = local_backends(args, store, served_remotely=())
    remote = {"pattern": local.pop("pattern")} if remote_pattern else {}
    return SessionManager(args, store, host_id=HOST_ID, still=still, local=local, remote=remote, gate=gate)


def run(coro_fn):
    """Each test's body in a fresh loop: sessions' tasks never outlive their test."""
    return asyncio.run(coro_fn())


async def create(manager, store, mode="still", rate_hz=SAMPLE_RATE_HZ) -> dict:
    return await manager.create_session(store.record.persona_id, mode, rate_hz, Controls())


async def error_code(coro) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        await coro
    return info.value


async def wait_for_mode(manager, session_id, mode, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while (await manager.get_session(session_id))["mode"] != mode:
        assert time.monotonic() < deadline, f"the session never reached {mode}"
        await asyncio.sleep(0.02)


def test_a_still_session_holds_its_persona_until_closed(store, tmp_path):
    async def main():
        manager = make_manager(store, tmp_path)
        info = await create(manager, store)
        sid = info["session_id"]
        assert info["mode"] == "still" and sid.startswith(f"{HOST_ID}."), "the affinity router reads the prefix"
        assert store.sessions_of(store.record.persona_id) == [sid]
        assert [s["session_id"] for s in await manager.list_sessions()] == [sid]
        await manager.close_session(sid)
        assert store.sessions_of(store.record.persona_id) == []
        assert await manager.list_sessions() == []

    run(main)


def test_a_pattern_session_switches_to_its_local_backend(store, tmp_path):
    async def main():
        manager = make_manager(store, tmp_path)
        info = await create(manager, store, "pattern")
        assert info["requested_mode"] == "pattern"
        await wait_for_mode(manager, info["session_id"], "pattern")
        await manager.shutdown()
        assert await manager.list_sessions() == []

    run(main)


def test_the_per_host_limit_refuses_with_a_retry_hint(store, tmp_path):
    async def main():
        manager = make_manager(store, tmp_path, max_sessions=1)
        await create(manager, store)
        err = await error_code(create(manager, store))
        assert err.code == "too_many_sessions" and err.retry_after_s == 30
        assert len(store.sessions_of(store.record.persona_id)) == 1, "the refused session acquired nothing"
        await manager.shutdown()

    run(main)


def test_unknown_sessions_and_modes_are_errors(store, tmp_path):
    async def main():
        manager = make_manager(store, tmp_path)
        sid = f"{HOST_ID}.nosuchsession"
        for call in (manager.get_session(sid), manager.close_session(sid), manager.push_pcm16(sid, b"\0\0"),
                     manager.push_audio(sid, b"\0\0", "audio/pcm"), manager.control(sid, InterruptEvent()),
                     manager.webrtc_peers(sid)):
            assert (await error_code(call)).code == "unknown_session"
        assert (await error_code(create(manager, store, "ditto"))).code == "unknown_mode"
        assert store.sessions_of(store.record.persona_id) == []

    run(main)


def test_the_sweep_closes_an_expired_session_and_releases_its_persona(store, tmp_path):
    async def main():
        manager = make_manager(store, tmp_path)
        sid = (await create(manager, store))["session_id"]
        assert await manager.sweep(time.time()) == [], "a fresh session stays"
        later_s = time.time() + manager.args.timeouts.idle_ttl_s + 1
        assert await manager.sweep(later_s) == [sid]
        assert await manager.list_sessions() == [] and store.sessions_of(store.record.persona_id) == []

    run(main)


def test_an_upload_is_decoded_at_the_sessions_rate(store, tmp_path):
    async def main():
        manager = make_manager(store, tmp_path)
        sid = (await create(manager, store, rate_hz=24000))["session_id"]
        one_second = (np.sin(np.arange(24000) / 10) * 8000).astype("<i2").tobytes()
        assert await manager.push_audio(sid, one_second, "audio/pcm") == 1.0, "raw PCM defaults to the session rate"
        assert await manager.push_audio(sid, one_second, "audio/pcm; rate=48000") == 0.5
        err = await error_code(manager.push_audio(sid, one_second, "text/plain"))
        assert err.code == "unsupported_media_type"
        await manager.shutdown()

    run(main)


def test_a_viewer_sees_ready_first_and_the_end_on_close(store, tmp_path):
    async def main():
        manager = make_manager(store, tmp_path)
        sid = (await create(manager, store))["session_id"]
        stream = manager.subscribe(sid)
        first = await anext(stream)
        assert isinstance(first, EventItem) and isinstance(first.event, SessionReady)
        assert (await manager.get_session(sid))["viewers"] == 1
        await manager.close_session(sid, "bye")
        items = [item async for item in stream]
        assert isinstance(items[-1], EndItem) and items[-1].reason == "bye"

    run(main)


@pytest.mark.parametrize("mode", ["still", "pattern"])
def test_a_one_shot_render_is_an_mp4(store, tmp_path, mode):
    async def main():
        manager = make_manager(store, tmp_path)
        audio16k = (np.sin(np.arange(SAMPLE_RATE_HZ) / 20) * 0.3).astype(np.float32)
        mp4 = await manager.render_offline(store.record.persona_id, mode, audio16k, Controls())
        assert mp4[4:8] == b"ftyp" and len(mp4) > 1000

    run(main)


def test_a_gated_session_is_placed_and_ended(store, tmp_path):
    async def main():
        gate = FakeGate()
        manager = make_manager(store, tmp_path, gate=gate, remote_pattern=True)
        still_id = (await create(manager, store))["session_id"]
        info = await create(manager, store, "pattern")
        sid = info["session_id"]
        assert gate.placed == [(sid, "pattern", True)], "only the modes the gate controls are placed"
        assert info["placement"] == {"action": "admit", "mode": "pattern"}
        await wait_for_mode(manager, sid, "pattern")
        await manager.close_session(sid)
        await manager.close_session(still_id)
        assert gate.ended_ids == [sid]

    run(main)


def test_a_refused_placement_acquires_nothing(store, tmp_path):
    async def main():
        manager = make_manager(store, tmp_path, gate=FakeGate(refuse=True), remote_pattern=True)
        err = await error_code(create(manager, store, "pattern"))
        assert (err.code, err.retry_after_s) == ("no_room", 7)
        assert store.sessions_of(store.record.persona_id) == [] and await manager.list_sessions() == []

    run(main)


def test_a_gated_one_shot_render_holds_a_seat_while_it_renders(store, tmp_path):
    async def main():
        gate = FakeGate()
        manager = make_manager(store, tmp_path, gate=gate, remote_pattern=True)
        audio16k = np.zeros(SAMPLE_RATE_HZ // 2, np.float32)
        assert (await manager.render_offline(store.record.persona_id, "pattern", audio16k, Controls()))[4:8] == b"ftyp"
        [(job_id, mode, allow_still)] = gate.placed
        assert job_id.startswith(f"{HOST_ID}.") and mode == "pattern" and allow_still is False
        assert gate.ended_ids == [job_id]

    run(main)


def test_the_sweep_sends_the_heartbeat_at_most_every_period(store, tmp_path):
    async def main():
        gate = FakeGate()
        manager = make_manager(store, tmp_path, gate=gate)
        now_s = time.time()
        await manager.sweep(now_s)
        await manager.sweep(now_s + 0.5)
        await asyncio.sleep(0)  # the heartbeat runs in the background
        assert gate.heartbeats == [HOST_ID]
        await manager.sweep(now_s + 5.0)
        await asyncio.sleep(0)
        assert gate.heartbeats == [HOST_ID, HOST_ID]

    run(main)


@pytest.mark.parametrize("shed, rewarmed", [(True, True), (False, False)])
def test_a_vram_notice_rewarms_after_a_shed_and_demotes_when_lost(store, tmp_path, shed, rewarmed):
    async def main():
        gate = FakeGate()
        gate.shed = shed
        manager = make_manager(store, tmp_path, gate=gate, remote_pattern=True)
        sid = (await create(manager, store, "pattern"))["session_id"]
        await manager.vram_notice(sid, {"code": "shed"})
        assert gate.notices == [(sid, {"code": "shed"})]
        assert gate.demoted == ([] if rewarmed else [sid])
        await manager.shutdown()
        assert gate.ended_ids == [sid]

    run(main)


def test_a_session_that_fails_to_start_gives_back_its_persona_and_seat(store, tmp_path):
    async def main():
        gate = FakeGate()
        manager = make_manager(store, tmp_path, gate=gate, remote_pattern=True)

        async def broken_start(persona_id, controls):
            raise RuntimeError("no still frame")

        manager.still.start = broken_start
        with pytest.raises(RuntimeError):
            await create(manager, store, "pattern")
        assert store.sessions_of(store.record.persona_id) == [] and await manager.list_sessions() == []
        assert [s for s, _, _ in gate.placed] == gate.ended_ids and len(gate.ended_ids) == 1

    run(main)
