"""VramService: the VRAM controller's logic as a plain asyncio object, no Ray.

The VramController deployment (deployments/vram_controller.py) is a shim over one
of these, as Ray's LLM serving wraps an injected engine: everything that touches
Ray comes in through `ServicePorts` (publishing replica targets, telling a
SessionHost of a shed, the checkpoint store, Prometheus), and the clock and the
probe are injected too, so tests/unit/test_vram_service.py drives it on the simulated
device with fakes.

What it does on top of the policy (vram/policy.py):

- steps the policy every `step_period_s` and right after a request arrives, on a
  fresh reading, and applies the decisions (targets published, sheds pushed to
  the sessions' hosts, profiles saved, metrics counted);
- answers sessions (`place`, `wait_session`, `ended`, `demote`) and backend
  replicas (`lease`, `report_loaded`), waiting on later steps where the answer
  is not known yet;
- ends the sessions of hosts that stopped listing them (`host_sessions`) or went
  silent, so a host that dies frees what it held;
- checkpoints after every step, and resumes from a recent checkpoint saved under
  the same configuration.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..api.errors import ServiceError
from ..config import AppArgs
from .config import STILL_MODE
from .data import SHED_CODES, Action, Code, Decision, LoadReport, PeakReport, SessionEnded, SessionRequest
from .checkpoint import Checkpoint, Checkpoints
from .metrics import DecisionCounts, MetricsSink, NoMetrics
from .policy import Controller, Phase
from .probes import NvmlProbe, Probe
from .records import PLACEMENT_ACTIONS, Lease, Placement, Readiness, Target, decision_json
from .setup import controller_config, pid_alive, resolve_probe, simulated_device
from .simulation import SimulatedDevice

log = logging.getLogger("ray.serve")
# Decisions kept per session for `place` (a session sees a handful in its life).
_PER_SESSION_DECISIONS = 20
_SNAPSHOT_DECISIONS = 50
HEARTBEAT_PERIOD_S = 2.0  # how often each SessionHost lists its placed sessions
HOST_TIMEOUT_S = 15.0  # a host silent this long is gone, and so are its sessions
# A session placed this recently may be missing from a host list that was in flight.
UNLISTED_GRACE_S = 5.0


def host_of(session_id: str) -> str | None:
    """Session (and render job) ids are `<host replica id>.<token>`."""
    host, dot, _ = session_id.partition(".")
    return host if dot else None


def backend_deployment_name(mode: str) -> str:
    return f"Backend-{mode}"


def config_key(args: AppArgs) -> str:
    """A checkpoint saved under other args (a redeploy) is not this controller's to resume."""
    return hashlib.sha256(args.model_dump_json().encode()).hexdigest()


@dataclass(frozen=True)
class ServiceSettings:
    step_period_s: float = 0.5
    lease_timeout_s: float = 60.0
    retry_after_s: float = 30.0  # for the refusal of a session the policy did not place
    probe_kind: str = "simulated"  # shown in the snapshot
    config_key: str = ""  # checkpoints saved under another key are not resumed


def _ignore(*_: Any) -> None:
    pass


@dataclass
class ServicePorts:
    """What the service does to the world, injected: Ray-backed in the deployment."""

    publish: Callable[[dict[str, int]], None] = _ignore  # replica target per backend deployment name
    tell_host: Callable[[Decision], None] = _ignore  # a shed / lost session's decision, to its host
    checkpoints: Checkpoints | None = None  # None: nothing saved, nothing resumed
    metrics: MetricsSink = field(default_factory=NoMetrics)
    clock: Callable[[], float] = time.monotonic  # seconds; the policy clock runs on it
    wall_clock: Callable[[], float] = time.time  # how long a restart took, across processes
    pid_alive: Callable[[int], bool] = pid_alive  # simulated device: a replica's process still runs


class VramService:
    """The controller for one GPU; see the module docstring."""

    def __init__(self, controller: Controller, probe: Probe | SimulatedDevice,
                 settings: ServiceSettings, ports: ServicePorts):
        self.controller, self.probe, self.settings, self.ports = controller, probe, settings, ports
        # The simulated GPU also takes replicas' allocations (`lease`) and scripted neighbours.
        self.device = probe if isinstance(probe, SimulatedDevice) else None
        self.counts = DecisionCounts()
        self._t0 = ports.clock()
        self._inbox: list = []
        self._lock = asyncio.Lock()
        self._stepped = asyncio.Condition()
        self._wake = asyncio.Event()
        self._by_session: dict[str, list[Decision]] = {}
        self._published: dict[str, int] | None = None
        self._placed_at: dict[str, float] = {}  # session id -> policy time it was placed
        self._hosts_seen: dict[str, float] = {}  # SessionHost id -> policy time of its last list
        self._task: asyncio.Task | None = None
        self._closed = False
        self.resumed = self._resume()
        self._publish(force=True)  # after the resume: a fresh start publishes zero replicas

    @classmethod
    def from_args(cls, args: AppArgs, ports: ServicePorts) -> "VramService":
        """The controller the app's arguments describe, on NVML or the simulated device."""
        controller = Controller.from_config(controller_config(args))
        probe_kind = resolve_probe(args.vram)
        probe = (simulated_device(args.vram) if probe_kind == "simulated"
                 else NvmlProbe(args.vram.policy.gpu_index))
        settings = ServiceSettings(step_period_s=args.vram.step_period_s,
                                   lease_timeout_s=args.vram.lease_timeout_s,
                                   retry_after_s=args.vram.policy.retry_after_s,
                                   probe_kind=probe_kind, config_key=config_key(args))
        return cls(controller, probe, settings, ports)

    # ---------------- lifetime ----------------
    def start(self) -> None:
        """Run the step loop on the current event loop."""
        self._task = asyncio.get_event_loop().create_task(self._run(), name="vram controller")

    def close(self) -> None:
        """A clean shutdown (the app goes, or is redeployed): nothing to resume. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        if self.ports.checkpoints is not None:
            try:
                self.ports.checkpoints.delete()
            except Exception as err:
                log.warning("vram: cannot delete the checkpoint: %s", err)
        if isinstance(self.probe, NvmlProbe):
            try:
                self.probe.close()
            except Exception as err:
                log.warning("vram: cannot close NVML: %s", err)

    def now_s(self) -> float:
        return self.ports.clock() - self._t0

    def _resume(self) -> bool:
        """Pick up where a replica that died left off (vram/checkpoint.py)."""
        saved = self.ports.checkpoints.load(self.settings.config_key) if self.ports.checkpoints else None
        if saved is None:
            return False
        self.controller.state = saved.state
        if self.device is not None and saved.device is not None:
            self.device = self.probe = saved.device  # the simulated GPU keeps its allocations
        self._by_session, self._placed_at, self._hosts_seen = (
            saved.by_session, saved.placed_at_s, saved.hosts_seen_s)
        # The policy clock goes on from where it stopped, plus the time the restart took.
        restart_s = max(0.0, self.ports.wall_clock() - saved.saved_at)
        self._t0 = self.ports.clock() - saved.now_s - restart_s
        s = self.controller.state
        log.warning("vram controller resumed from its checkpoint: %d sessions, backends %s",
                    len(s.sessions), {m: b.phase.value for m, b in s.backends.items()})
        return True

    def _checkpoint(self) -> None:
        if self.ports.checkpoints is None:
            return
        try:
            self.ports.checkpoints.save(Checkpoint(
                self.controller.state, self.device, self._by_session, self._placed_at,
                self._hosts_seen, self.now_s(), self.settings.config_key, self.ports.wall_clock()))
        except Exception as err:  # never stop protecting the neighbours over a checkpoint
            log.warning("vram: cannot save the checkpoint: %s", err)

    # ---------------- the loop ----------------
    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep protecting the neighbours whatever one step hit
                log.exception("vram controller: step failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.step_period_s)
            except asyncio.TimeoutError:
                pass

    async def step(self, requests: list = ()) -> list[Decision]:
        """One policy step on a fresh reading, with the requests queued since the last."""
        async with self._lock:
            now_s = self.now_s()
            reading = await self._read(now_s)
            inbox, self._inbox = self._inbox + list(requests) + self._orphans(now_s), []
            decisions = self.controller.step(now_s, reading, inbox)
            self._apply(decisions, inbox)
            self._checkpoint()
        async with self._stepped:
            self._stepped.notify_all()
        return decisions

    async def _read(self, now_s: float):
        if self.device is None:
            return await asyncio.to_thread(self.probe.read)
        self.device.advance(now_s)
        self.device.reap(self.ports.pid_alive)
        return self.device.read()

    def _orphans(self, now_s: float) -> list[SessionEnded]:
        """Sessions whose host has gone silent (or never spoke) for HOST_TIMEOUT_S: no one
        will say they ended. Placed sessions of a live host are listed by `host_sessions`."""
        for host, seen_s in list(self._hosts_seen.items()):
            if now_s - seen_s > HOST_TIMEOUT_S:
                del self._hosts_seen[host]
                log.warning("vram: session host %s is silent; ending its sessions", host)
        gone = [sid for sid in self.controller.state.sessions
                if host_of(sid) is not None and host_of(sid) not in self._hosts_seen
                and now_s - self._placed_at.get(sid, 0.0) > HOST_TIMEOUT_S]
        return [self._forget(sid) for sid in gone]

    def _forget(self, session_id: str) -> SessionEnded:
        self._by_session.pop(session_id, None)
        self._placed_at.pop(session_id, None)
        return SessionEnded(session_id)

    def _apply(self, decisions: list[Decision], requests: list) -> None:
        # Sessions leave a backend before its replica goes: tell their hosts first.
        for d in decisions:
            if d.code in SHED_CODES and d.session_id is not None:
                self.ports.tell_host(d)
        self._publish()
        for d in decisions:
            self._record(d)
        self.ports.metrics.gauge(self.controller.metrics())
        if any(isinstance(r, (LoadReport, PeakReport)) for r in requests) or any(
                d.code == Code.PROFILE_UPDATED for d in decisions):
            try:
                self.controller.save_profiles()
            except OSError as err:
                log.warning("vram: cannot save profiles: %s", err)

    def _record(self, d: Decision) -> None:
        level = logging.WARNING if d.action in (Action.REFUSE, Action.UNLOAD) else logging.INFO
        log.log(level, "vram %s %s: %s", d.action.value, d.code.value, d.reason)
        self.counts.count(d)
        self.ports.metrics.count(d)
        if d.session_id is not None:
            kept = self._by_session.setdefault(d.session_id, [])
            kept.append(d)
            del kept[:-_PER_SESSION_DECISIONS]

    def _publish(self, force: bool = False) -> None:
        desired = {backend_deployment_name(m): n for m, n in self.controller.desired_replicas().items()}
        if force or desired != self._published:
            self.ports.publish(desired)
            self._published = desired

    async def _wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until `predicate()` holds after some step, or `timeout_s` (event-loop time)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with self._stepped:
            while not predicate():
                left = deadline - loop.time()
                if left <= 0:
                    return False
                try:
                    await asyncio.wait_for(self._stepped.wait(), left)
                except asyncio.TimeoutError:
                    return predicate()
        return True

    def _phase(self, mode: str) -> Phase | None:
        backend = self.controller.state.backends.get(mode)
        return backend.phase if backend is not None else None

    def _wake_loop(self, *requests) -> None:
        self._inbox += requests
        self._wake.set()

    # ---------------- sessions (SessionHost) ----------------
    async def place(self, request: SessionRequest, wait_s: float) -> Placement:
        """A new session: its placement (assign / queue / refuse) with code and reason.
        A queued session waits here up to `wait_s` for a better answer."""
        session_id = request.session_id
        self._placed_at[session_id] = self.now_s()
        await self.step([request])
        first = self._latest_placement(session_id)
        if first is not None and first.action == Action.QUEUE:
            await self._wait_for(lambda: self._latest_action(session_id) not in (None, Action.QUEUE), wait_s)
        decision = self._latest_placement(session_id)
        if decision is None:  # cannot happen: the policy places every new session in its step
            raise ServiceError("internal", "no placement decision", retry_after_s=self.settings.retry_after_s)
        queued = first if first is not None and first.action == Action.QUEUE else None
        return Placement(decision, queued, self._target(session_id))

    def _latest_placement(self, session_id: str) -> Decision | None:
        kept = [d for d in self._by_session.get(session_id, ()) if d.action in PLACEMENT_ACTIONS]
        return kept[-1] if kept else None

    def _latest_action(self, session_id: str) -> Action | None:
        latest = self._latest_placement(session_id)
        return latest.action if latest is not None else None

    def _target(self, session_id: str) -> Target | None:
        session = self.controller.state.sessions.get(session_id)
        if session is None or session.target is None:
            return None
        t = session.target
        return Target(t.mode, t.variant.resolution_px, t.variant.fps, t.code)

    async def ended(self, session_id: str) -> None:
        self._wake_loop(self._forget(session_id))

    async def host_sessions(self, host_id: str, session_ids: list[str]) -> None:
        """A SessionHost's heartbeat: the sessions it has placed and not yet ended. One it
        no longer lists ended without a word (an `ended` call that failed, say)."""
        now_s = self.now_s()
        self._hosts_seen[host_id] = now_s
        listed = set(session_ids)
        unlisted = [sid for sid in self.controller.state.sessions
                    if host_of(sid) == host_id and sid not in listed
                    and now_s - self._placed_at.get(sid, 0.0) > UNLISTED_GRACE_S]
        if unlisted:
            log.warning("vram: host %s no longer has sessions %s; ending them", host_id, unlisted)
            self._wake_loop(*[self._forget(sid) for sid in unlisted])

    async def demote(self, session_id: str) -> None:
        """The session stays in still mode for good (its backend lost, or its wait timed
        out): it holds no seat, so the policy never loads a backend for it again."""
        self._wake_loop(SessionEnded(session_id), SessionRequest(session_id, STILL_MODE))

    async def wait_session(self, session_id: str, timeout_s: float) -> Readiness:
        """Wait until the policy has the session on a resident backend; its mode then
        (a substitute, maybe, or the one it was upgraded to from still)."""
        def ready() -> bool:
            session = self.controller.state.sessions.get(session_id)
            return session is not None and self._phase(session.mode) == Phase.RESIDENT

        ok = await self._wait_for(ready, timeout_s)
        session = self.controller.state.sessions.get(session_id)
        if session is None:
            return Readiness(ok, None)
        return Readiness(ok, session.mode, session.target.mode if session.target else None)

    # ---------------- backends (LeasedBackendDeployment) ----------------
    async def lease(self, mode: str, pid: int) -> Lease:
        """A starting replica's load lease: granted while the policy has its load in flight."""
        timeout_s = self.settings.lease_timeout_s
        if not await self._wait_for(lambda: self._phase(mode) == Phase.LOADING, timeout_s):
            return Lease(False, f"no load of {mode} admitted within {timeout_s:.0f}s")
        async with self._lock:
            state = self.controller.state
            backend = state.backends[mode]
            simulated = None
            if self.device is not None:
                # The replica's simulated weights: its reservation, allocated now for its PID.
                if not self.device.attach(mode, pid, backend.reserved_bytes):
                    return Lease(False, f"simulated CUDA out of memory loading {mode}")
                simulated = backend.reserved_bytes
            return Lease(True, cap_bytes=backend.reserved_bytes + self.controller.policy.load_margin_bytes,
                         total_bytes=state.reading.total_bytes if state.reading else 0,
                         resolution_px=backend.variant.resolution_px, batch=backend.variant.batch,
                         simulated_bytes=simulated)

    async def report_loaded(self, mode: str, ok: bool, pid: int, peak_bytes: int | None, error: str = "") -> None:
        await self.step([LoadReport(mode, ok, pid=pid, peak_bytes=peak_bytes, error=error)])

    # ---------------- operators ----------------
    def snapshot(self) -> dict:
        """JSON for GET /v1/gpu: the policy's view, and the service's."""
        out = self.controller.snapshot()
        history = list(self.controller.state.history)[-_SNAPSHOT_DECISIONS:]
        out.update({
            "probe": self.settings.probe_kind, "now_s": round(self.now_s(), 3), "resumed": self.resumed,
            "session_hosts": sorted(self._hosts_seen),
            "step_period_s": self.settings.step_period_s,
            "desired_replicas": self.controller.desired_replicas(),
            "counters": dict(self.counts.counts),
            "time_to_free_s": list(self.counts.times_to_free_s),
            "decisions": [decision_json(d) for d in history],
        })
        if self.device is not None:
            out["simulated"] = {"neighbour_oom_events": len(self.device.neighbour_ooms),
                                "backend_oom_events": len(self.device.backend_ooms)}
        return out

    async def set_neighbour(self, name: str, wanted_bytes: int) -> dict:
        """Simulated device only: a scripted neighbour wants `wanted_bytes` from now on."""
        if self.device is None:
            raise ServiceError("not_simulated", "neighbours can only be scripted on the simulated device")
        async with self._lock:
            self.device.advance(self.now_s())
            self.device.want(name, wanted_bytes)
        await self.step()
        return {"at_s": round(self.now_s(), 3)}
