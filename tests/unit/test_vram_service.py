"""The VRAM controller's service without Ray: VramService on the simulated device, with a
fake clock and fakes for what the deployment does through Ray (publishing replica
targets, telling a SessionHost of a shed, the checkpoint store). Also the records it
answers with, the SessionHost's side over it, and deployments/ray_private.py.

Numbers (vram.testing.small_config): a 24 GiB device, floor 1 GiB, growth allowance
2 GiB, the LLM at 4 GiB; `small` needs 2 GiB, `big` 6 GiB (3 GiB at 256 px).
"""
from __future__ import annotations

import asyncio
import dataclasses
import pickle
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from deployments import ray_private
from deployments.api.errors import ServiceError
from deployments.config import AppArgs
from deployments.vram import GIB, STILL_MODE, Action, Code, NeighbourScript, SessionRequest, SimulatedDevice
from deployments.vram.autoscaling import follow_vram_controller, publish_desired
from deployments.vram.checkpoint import Checkpoints, dict_kv
from deployments.vram.gate import VramGate
from deployments.vram.policy import Controller
from deployments.vram.records import Lease, Placement, Readiness, Target, decision_json
from deployments.vram.service import (
    HOST_TIMEOUT_S,
    UNLISTED_GRACE_S,
    ServicePorts,
    ServiceSettings,
    VramService,
)
from deployments.vram.testing import LLM_PORT, small_config

ROOT = Path(__file__).resolve().parents[2]
REPLICA_PID = 4242  # a backend replica's process, alive while the fake says so
DEVICE_BYTES = 24 * GIB


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self, start_s: float = 1000.0):
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


@dataclass
class World:
    """Everything outside the service: its clocks, and what it told Ray (in order)."""

    clock: FakeClock = field(default_factory=FakeClock)
    wall: FakeClock = field(default_factory=lambda: FakeClock(1.7e9))
    kv: dict = field(default_factory=dict)  # the checkpoint store's bytes
    events: list = field(default_factory=list)  # ("publish", desired) and ("tell", decision)
    alive_pids: set = field(default_factory=lambda: {REPLICA_PID})

    def published(self) -> list[dict]:
        return [what for kind, what in self.events if kind == "publish"]

    def told(self) -> list:
        return [what for kind, what in self.events if kind == "tell"]

    def ports(self) -> ServicePorts:
        return ServicePorts(publish=lambda desired: self.events.append(("publish", desired)),
                            tell_host=lambda decision: self.events.append(("tell", decision)),
                            checkpoints=Checkpoints("app", dict_kv(self.kv), wall_clock=self.wall),
                            clock=self.clock, wall_clock=self.wall, pid_alive=self.alive_pids.__contains__)


def simulated_gpu() -> SimulatedDevice:
    return SimulatedDevice(DEVICE_BYTES, [NeighbourScript("llm", ((0.0, 4 * GIB),), (LLM_PORT,))],
                           first_pid=10_000_000)


def make_service(world: World, config_key: str = "args-a", **settings: float) -> VramService:
    knobs = {"lease_timeout_s": 1.0, "step_period_s": 0.02, **settings}
    return VramService(Controller(small_config(neighbour_settle_s=0)), simulated_gpu(),
                       ServiceSettings(config_key=config_key, **knobs), world.ports())


def request(session_id: str, mode: str = "small", **extra) -> SessionRequest:
    return SessionRequest(session_id, mode, **extra)


async def load(service: VramService, mode: str) -> Lease:
    """What a backend replica does: its lease, then its load report."""
    lease = await service.lease(mode, REPLICA_PID)
    assert lease.granted, lease.reason
    await service.report_loaded(mode, True, REPLICA_PID, lease.simulated_bytes)
    return lease


def sessions(service: VramService) -> dict:
    return service.snapshot()["sessions"]


# ---------------------------------------------------------------- placement


def test_a_session_waits_in_still_mode_for_its_backend_whose_load_is_published():
    async def main():
        world = World()
        service = make_service(world)
        assert world.published() == [{"Backend-big": 0, "Backend-small": 0}]  # a fresh start
        placement = await service.place(request("h1.a"), 1.0)
        return world, placement

    world, placement = asyncio.run(main())
    assert placement.action == Action.ASSIGN and placement.code == Code.WAIT_FOR_LOAD
    assert placement.target == Target("small", 512, 25, Code.ADMITTED)
    assert world.published()[-1] == {"Backend-big": 0, "Backend-small": 1}
    # The session's `placement` field, as clients see it (docs/api.md).
    assert placement.to_json() == {
        "action": "assign", "code": "wait_for_load", "reason": placement.reason, "at_s": 0.0,
        "mode": "still", "session_id": "h1.a", "eta_s": 5.0,
        "target": {"mode": "small", "resolution_px": 512, "fps": 25, "code": "admitted"}}
    assert "small" in placement.reason


def test_a_lease_is_granted_for_the_load_in_flight_and_the_report_makes_it_resident():
    async def main():
        service = make_service(World())
        await service.place(request("h1.a"), 1.0)
        lease = await load(service, "small")
        ready = await service.wait_session("h1.a", 1.0)
        second = await service.place(request("h1.b"), 1.0)
        return service, lease, ready, second

    service, lease, ready, second = asyncio.run(main())
    assert lease == Lease(True, cap_bytes=2 * GIB, total_bytes=DEVICE_BYTES, resolution_px=512, batch=8,
                          simulated_bytes=2 * GIB)
    assert lease.memory_fraction() is None  # the simulated device: nothing to cap
    assert ready == Readiness(True, "small", None)
    assert second.action == Action.ASSIGN and second.code == Code.ADMITTED and second.decision.mode == "small"
    snapshot = service.snapshot()
    assert snapshot["backends"]["small"]["phase"] == "resident"
    assert snapshot["backends"]["small"]["pid"] == REPLICA_PID
    assert service.device.our_used_bytes() == 2 * GIB  # the replica's simulated weights
    assert {"load_admitted", "backend_ready"} <= {d["code"] for d in snapshot["decisions"]}


def test_a_lease_is_denied_without_an_admitted_load_or_without_memory():
    async def main():
        service = make_service(World(), lease_timeout_s=0.05)
        unasked = await service.lease("big", REPLICA_PID)
        await service.place(request("h1.a"), 1.0)  # admits the load of small
        service.device.want("llm", 23 * GIB)  # the LLM grows before the replica allocates
        starved = await service.lease("small", REPLICA_PID)
        return unasked, starved

    unasked, starved = asyncio.run(main())
    assert not unasked.granted and "no load of big admitted" in unasked.reason
    assert not starved.granted and "out of memory" in starved.reason


def test_a_session_that_refuses_still_mode_is_queued_then_answered_when_its_backend_loads():
    async def main():
        service = make_service(World())
        queued = asyncio.ensure_future(service.place(request("h1.q", allow_still=False, max_wait_s=30), 5.0))
        await load(service, "small")
        return await asyncio.wait_for(queued, 5.0)

    placement = asyncio.run(main())
    assert placement.code == Code.BACKEND_READY and placement.decision.mode == "small"
    assert placement.queued.code == Code.QUEUED and placement.queued.eta_s > 0
    shown = placement.to_json()
    assert shown["queued"]["code"] == "queued" and shown["code"] == "backend_ready"


def test_a_session_with_no_room_and_no_still_mode_is_refused_with_a_retry_time():
    async def main():
        service = make_service(World())
        await service.set_neighbour("llm", 20 * GIB)
        return await service.place(request("h1.r", "big", allow_still=False, max_wait_s=0), 1.0)

    placement = asyncio.run(main())
    assert placement.action == Action.REFUSE and placement.code == Code.REFUSED_NO_ROOM
    assert placement.retry_after_s() > 0 and "no room for big" in placement.reason
    assert placement.to_json()["retry_after_s"] == placement.retry_after_s()


# ---------------------------------------------------------------- hosts and their sessions


def test_a_host_heartbeat_ends_the_sessions_it_no_longer_lists():
    async def main():
        world = World()
        service = make_service(world)
        for sid in ("h1.kept", "h1.dropped"):
            await service.place(request(sid, STILL_MODE), 1.0)
        world.clock.advance(UNLISTED_GRACE_S + 1)
        await service.place(request("h1.new", STILL_MODE), 1.0)  # its host's list may predate it
        await service.host_sessions("h1", ["h1.kept"])
        await service.step()
        return service

    service = asyncio.run(main())
    assert set(sessions(service)) == {"h1.kept", "h1.new"}
    assert service.snapshot()["session_hosts"] == ["h1"]


def test_the_sessions_of_a_silent_host_end_here_too():
    async def main():
        world = World()
        service = make_service(world)
        for sid in ("h1.a", "h2.b", "h3.never-listed"):
            await service.place(request(sid, STILL_MODE), 1.0)
        await service.host_sessions("h1", ["h1.a"])
        await service.host_sessions("h2", ["h2.b"])
        world.clock.advance(HOST_TIMEOUT_S / 2)
        await service.host_sessions("h1", ["h1.a"])  # h2 says nothing more
        world.clock.advance(HOST_TIMEOUT_S / 2 + 1)
        await service.step()
        return service

    service = asyncio.run(main())
    assert set(sessions(service)) == {"h1.a"}
    assert service.snapshot()["session_hosts"] == ["h1"]


def test_a_demoted_session_stays_still_without_a_target():
    async def main():
        service = make_service(World())
        placement = await service.place(request("h1.a"), 1.0)
        await service.demote("h1.a")
        await service.step()
        return placement, service

    placement, service = asyncio.run(main())
    assert placement.target is not None  # it was waiting for small
    assert sessions(service)["h1.a"] == {"mode": STILL_MODE, "requested": STILL_MODE, "target": None}


def test_a_shed_is_pushed_to_the_sessions_host_before_its_backend_is_scaled_away():
    async def main():
        world = World()
        service = make_service(world)
        await service.place(request("h1.a"), 1.0)
        await load(service, "small")
        await service.set_neighbour("llm", 20 * GIB)  # budget 1 GiB < the 2 GiB small holds
        return world, service

    world, service = asyncio.run(main())
    shed = world.told()
    assert [(d.session_id, d.code) for d in shed] == [("h1.a", Code.SHED_OVER_BUDGET)]
    assert "must be unloaded" in shed[0].reason
    scaled_away = world.events.index(("publish", {"Backend-big": 0, "Backend-small": 0}), 1)
    assert world.events.index(("tell", shed[0])) < scaled_away
    assert sessions(service)["h1.a"]["mode"] == STILL_MODE


# ---------------------------------------------------------------- restarts and the loop


def test_a_new_service_resumes_from_the_checkpoint_and_its_clock_goes_on():
    async def main():
        world = World()
        first = make_service(world)
        await first.place(request("h1.a"), 1.0)
        await load(first, "small")
        await first.host_sessions("h1", ["h1.a"])
        world.clock.advance(3.0)
        await first.step()
        stopped_s = first.now_s()
        world.wall.advance(2.0)  # the restart takes 2 s
        world.events.clear()
        resumed = make_service(world)
        other_args = make_service(world, config_key="args-b")
        return world, stopped_s, resumed, other_args

    world, stopped_s, resumed, other_args = asyncio.run(main())
    assert resumed.resumed and not other_args.resumed
    assert resumed.now_s() == pytest.approx(stopped_s + 2.0)
    assert world.published()[0] == {"Backend-big": 0, "Backend-small": 1}  # not a fresh start's zeros
    snapshot = resumed.snapshot()
    assert snapshot["backends"]["small"]["phase"] == "resident" and snapshot["backends"]["small"]["pid"] == REPLICA_PID
    assert snapshot["sessions"]["h1.a"]["mode"] == "small" and snapshot["session_hosts"] == ["h1"]
    assert resumed.device.our_used_bytes() == 2 * GIB  # the simulated GPU kept the replica's memory


def test_the_step_loop_runs_on_its_own_and_a_clean_close_leaves_nothing_to_resume():
    async def main():
        world = World()
        service = make_service(world)
        service.start()
        await service.place(request("h1.a", STILL_MODE), 1.0)
        await service.ended("h1.a")
        for _ in range(100):
            if not sessions(service):
                break
            await asyncio.sleep(0.01)
        ended = not sessions(service)
        service.close()
        service.close()  # Serve may call __del__ twice
        await asyncio.sleep(0)
        return world, service, ended

    world, service, ended = asyncio.run(main())
    assert ended and service._task.cancelled()
    assert world.kv == {} and not make_service(world).resumed


# ---------------------------------------------------------------- records


def test_the_records_pickle_across_processes():
    async def main():
        service = make_service(World())
        queued = asyncio.ensure_future(service.place(request("h1.q", allow_still=False, max_wait_s=30), 5.0))
        lease = await load(service, "small")
        return await queued, lease, await service.wait_session("h1.q", 1.0)

    placement, lease, ready = asyncio.run(main())
    assert isinstance(placement, Placement) and placement.queued is not None
    for record in (placement, lease, ready):
        assert pickle.loads(pickle.dumps(record)) == record
    assert Lease(True, cap_bytes=6 * GIB, total_bytes=DEVICE_BYTES).memory_fraction() == 0.25
    assert Lease(True, cap_bytes=6 * GIB).memory_fraction() is None  # no reading of the device yet


def test_gpu_decisions_are_the_decisions_as_clients_see_them():
    async def main():
        service = make_service(World())
        await service.place(request("h1.a"), 1.0)
        return service

    service = asyncio.run(main())
    history = list(service.controller.state.history)
    assert service.snapshot()["decisions"] == [decision_json(d) for d in history]
    load_admitted = next(decision_json(d) for d in history if d.action == Action.LOAD)
    assert set(load_admitted) <= {"action", "code", "reason", "at_s", "mode", "session_id", "resolution_px",
                                  "fps", "cap_bytes", "eta_s", "retry_after_s", "extra"}
    assert load_admitted["action"] == "load" and load_admitted["cap_bytes"] == 2 * GIB


# ---------------------------------------------------------------- the SessionHost's side, over the service


class LocalHandle:
    """A DeploymentHandle's shape over a local object; arguments and results are pickled
    both ways, as Ray would."""

    def __init__(self, target):
        self._target = target

    def __getattr__(self, name: str):
        method = getattr(self._target, name)

        async def remote(*args, **kwargs):
            args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
            return pickle.loads(pickle.dumps(await method(*args, **kwargs)))

        return SimpleNamespace(remote=lambda *args, **kwargs: asyncio.ensure_future(remote(*args, **kwargs)))


class Remote:
    """Stands in for a RemoteBackend of the pattern mode."""

    mode = "pattern"

    async def start(self, persona_id, controls):
        return f"carry of {persona_id}"


def pattern_args(tmp_path: Path) -> AppArgs:
    return AppArgs.model_validate({
        "data_dir": str(tmp_path), "enable_test_modes": True, "backends": {"pattern": {}},
        "timeouts": {"backend_ready_timeout_s": 5},
        "vram": {"probe": "simulated", "profile_file": None, "lease_timeout_s": 5,
                 "policy": {"floor_bytes": GIB, "load_margin_bytes": 0, "growth_allowance_bytes": GIB,
                            "neighbour_settle_s": 0, "min_residency_s": 0, "retry_after_s": 7},
                 "neighbours": [{"name": "llm", "port": LLM_PORT}],
                 "backends": [{"mode": "pattern", "load_time_s": 3, "variants": [
                     {"resolution_px": 512, "default_peak_bytes": 6 * GIB}]}],
                 "simulated": {"total_bytes": DEVICE_BYTES,
                               "neighbours": [{"name": "llm", "port": LLM_PORT, "steps": [[0, 4 * GIB]]}]}}})


def test_the_gate_places_refuses_and_gates_a_session_over_the_service(tmp_path):
    async def main():
        world = World()
        args = pattern_args(tmp_path)
        service = VramService.from_args(args, world.ports())
        gate = VramGate(LocalHandle(service), args)
        shown = await gate.place("h1.a", "pattern")
        gated = gate.backend("h1.a", "pattern", {"pattern": Remote()})
        starting = asyncio.ensure_future(gated.start("persona", None))
        await load(service, "pattern")
        carry = await asyncio.wait_for(starting, 5.0)
        await service.set_neighbour("llm", 17 * GIB)  # budget 5 GiB < the 6 GiB pattern holds
        with pytest.raises(ServiceError) as refused:
            await gate.place("h1.b", "pattern", allow_still=False, max_wait_s=0)
        return service, gate, gated, shown, carry, world.told(), refused.value

    service, gate, gated, shown, carry, told, refused = asyncio.run(main())
    assert service.settings.probe_kind == "simulated" and gate.controls("pattern")
    assert shown["code"] == "wait_for_load" and shown["target"]["mode"] == "pattern"
    assert carry == "carry of persona" and gated.mode == "pattern"
    assert (refused.code, refused.retry_after_s) == ("refused_no_room", 7)
    assert gate.placed == {"h1.a"}  # the refused one holds nothing
    # The shed the controller pushed: the session may wait for a backend again.
    assert gate.notice("h1.a", told[0]) is True and gated.revoked.code == "shed_over_budget"
    lost = dataclasses.replace(told[0], code=Code.BACKEND_LOST, reason="pattern's process left the GPU")
    assert gate.notice("h1.a", lost) is False  # its backend crashed: still mode for good


# ---------------------------------------------------------------- ray_private.py


def test_ray_private_refuses_a_ray_minor_it_was_not_checked_against():
    pinned = ray_private.PINNED_RAY_MINOR
    ray_private.check_ray_version(f"{pinned}.0")
    ray_private.check_ray_version(f"{pinned}.9")
    for other in ("2.61.0", "2.6.0", "3.0.0"):
        with pytest.raises(ImportError, match="deployments/ray_private.py"):
            ray_private.check_ray_version(other)
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"ray[serve]=={pinned}.*" in dependencies  # the pin and the check move together


def test_the_autoscaling_policy_follows_what_the_controller_published(monkeypatch):
    kv: dict = {}
    monkeypatch.setattr(ray_private, "_internal_kv_put",
                        lambda key, value, overwrite, namespace: kv.__setitem__((namespace, key), value))
    monkeypatch.setattr(ray_private, "_internal_kv_get", lambda key, namespace: kv.get((namespace, key)))
    ctx = SimpleNamespace(app_name="app", deployment_name="Backend-x", target_num_replicas=3)
    assert follow_vram_controller(ctx) == (3, {})  # nothing published yet: keep the target
    publish_desired("app", {"Backend-x": 1})
    assert follow_vram_controller(ctx) == (1, {})
    publish_desired("app", {"Backend-x": 0})
    assert follow_vram_controller(ctx) == (0, {})


_UNPICKLE_WITHOUT_OUR_PACKAGE = """
import sys
from types import SimpleNamespace
sys.modules["deployments"] = None  # as in Serve's controller: our package does not import
import ray.experimental.internal_kv as kv
kv._internal_kv_get = lambda key, namespace: b"1" if key == b"desired/app/Backend-x" else None
from ray import cloudpickle
policy = cloudpickle.loads(sys.stdin.buffer.read())
print(policy(SimpleNamespace(app_name="app", deployment_name="Backend-x", target_num_replicas=3)))
"""


def test_the_autoscaling_policy_unpickles_where_our_package_does_not_import():
    """Serve pickles the policy's module by value into its controller process."""
    from ray.serve.config import AutoscalingPolicy

    pickled = AutoscalingPolicy(policy_function=follow_vram_controller).get_serialized_policy_def()
    done = subprocess.run([sys.executable, "-c", _UNPICKLE_WITHOUT_OUR_PACKAGE], input=pickled,
                          capture_output=True, cwd="/", timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "(1, {})"
