"""VramController: the VRAM policy (deployments/vram) as one Serve replica, on live readings.

    SessionHost ── place / ended ──►  VramController  ◄── lease / report_loaded ── Backend-<mode>
                                       │ step every step_period_s: probe.read() -> policy -> decisions
                                       ▼
                     Ray internal KV: desired replicas per backend deployment
                                       ▼
               Serve's control loop: follow_vram_controller (vram/autoscaling.py)

- Replica counts: LOAD sets a backend's target to 1, UNLOAD to 0; each backend
  deployment's custom autoscaling policy reads the target (vram/autoscaling.py).
  Unload is scale-to-zero: the replica process exits, the driver frees everything,
  and the probe confirms it (Code.UNLOAD_CONFIRMED with the time to free).
- Leases: a backend replica (`LeasedBackendDeployment`) asks for its lease before
  loading weights, caps itself at the lease (torch's per-process memory fraction,
  on CUDA), loads, measures its peak and reports it (LoadReport).
- Sessions: `VramGate` (used by the SessionHost) sends SessionRequest on create and
  SessionEnded on close, maps a refusal to 503 + Retry-After with the reason, and
  hands the session a `GatedBackend`, whose `start` waits until the controller says
  the backend is resident: the session shows still mode until then and switches
  (its `mode_changed` event) when the backend is up.
- Probes: NVML on a GPU; the simulated device (AppArgs.vram.simulated) in tests,
  where backend replicas attach their memory through `lease` and lose it when
  their process exits, as on a real GPU.
- Operators: `snapshot()` is GET /v1/gpu; Prometheus metrics go through
  ray.serve.metrics (lockn_vram_*), shown by the Ray dashboard when it runs.
- Restarts: the controller checkpoints its state after every step (vram/checkpoint.py)
  and a new replica resumes from it. Each SessionHost sends its placed sessions every
  HEARTBEAT_PERIOD_S (`host_sessions`): a session its host no longer lists, or whose
  host has gone silent, ends here too, so a host that dies frees what it held.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from ray import serve

from .api.errors import ServiceError
from .config import AppArgs
from .ray_private import call
from .vram import (
    STILL_MODE,
    Action,
    Code,
    Controller,
    Decision,
    LoadReport,
    NvmlProbe,
    PeakReport,
    SessionEnded,
    SessionRequest,
    SimulatedDevice,
)
from .vram import checkpoint as vram_checkpoint
from .vram.autoscaling import publish_desired
from .vram.data import SHED_CODES
from .vram.metrics import VramMetrics
from .vram.policy import Phase
from .vram.setup import (
    controller_config,
    decision_json,
    pid_alive,
    resolve_probe,
    simulated_device,
)

log = logging.getLogger("ray.serve")
CONTROLLER_NAME = "VramController"
SESSION_HOST_NAME = "SessionHost"
# Decisions kept per session for `place` (a session sees a handful in its life).
_PER_SESSION_DECISIONS = 20
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




class VramControllerImpl:
    """Serve deployment body (one replica per GPU): see the module docstring."""

    def __init__(self, args: dict):
        self.args = AppArgs.model_validate(args)
        self.vram = self.args.vram
        self.config = controller_config(self.args)
        self.controller = Controller.from_config(self.config)
        self.probe_kind = resolve_probe(self.vram)
        self.device: SimulatedDevice | None = None
        if self.probe_kind == "simulated":
            self.device = simulated_device(self.vram)
            self.probe = self.device
        else:
            self.probe = NvmlProbe(self.vram.policy.gpu_index)
        self.app_name = serve.get_replica_context().app_name
        self.metrics = VramMetrics()
        self._t0 = time.monotonic()
        self._inbox: list = []
        self._lock = asyncio.Lock()
        self._stepped = asyncio.Condition()
        self._wake = asyncio.Event()
        self._by_session: dict[str, list[Decision]] = {}
        self._published: dict[str, int] | None = None
        self._hosts = None  # SessionHost handle, made on first use (it binds us, not we it)
        self._placed_at: dict[str, float] = {}  # session id -> policy time it was placed
        self._hosts_seen: dict[str, float] = {}  # SessionHost id -> policy time of its last list
        # A checkpoint saved under other args (a redeploy) is not this controller's to resume.
        self._config_key = hashlib.sha256(self.args.model_dump_json().encode()).hexdigest()
        self.resumed = self._resume()
        self._publish(force=True)  # after the resume: a fresh start publishes zero replicas
        self._task = asyncio.get_event_loop().create_task(self._run(), name="vram controller")

    def _resume(self) -> bool:
        """Pick up where a replica that died left off (vram/checkpoint.py)."""
        saved = vram_checkpoint.load(self.app_name, self._config_key)
        if saved is None:
            return False
        self.controller.state = saved.state
        if self.device is not None and saved.device is not None:
            self.device = self.probe = saved.device  # the simulated GPU keeps its allocations
        self._by_session, self._placed_at, self._hosts_seen = (
            saved.by_session, saved.placed_at_s, saved.hosts_seen_s)
        # The policy clock goes on from where it stopped, plus the time the restart took.
        self._t0 = time.monotonic() - saved.now_s - max(0.0, time.time() - saved.saved_at)
        s = self.controller.state
        log.warning("vram controller resumed from its checkpoint: %d sessions, backends %s",
                    len(s.sessions), {m: b.phase.value for m, b in s.backends.items()})
        return True

    def _checkpoint(self) -> None:
        try:
            vram_checkpoint.save(self.app_name, vram_checkpoint.Checkpoint(
                self.controller.state, self.device, self._by_session, self._placed_at,
                self._hosts_seen, self.now_s(), self._config_key))
        except Exception as err:  # never stop protecting the neighbours over a checkpoint
            log.warning("vram: cannot save the checkpoint: %s", err)

    # ---------------- the loop ----------------
    def now_s(self) -> float:
        return time.monotonic() - self._t0

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep protecting the neighbours whatever one step hit
                log.exception("vram controller: step failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.vram.step_period_s)
            except asyncio.TimeoutError:
                pass

    async def _step(self, requests: list = ()) -> list[Decision]:
        async with self._lock:
            now_s = self.now_s()
            if self.device is not None:
                self.device.advance(now_s)
                self.device.reap(pid_alive)
                reading = self.device.read()
            else:
                reading = await asyncio.to_thread(self.probe.read)
            inbox, self._inbox = self._inbox + list(requests) + self._orphans(now_s), []
            decisions = self.controller.step(now_s, reading, inbox)
            self._apply(decisions, inbox)
            self._checkpoint()
        async with self._stepped:
            self._stepped.notify_all()
        return decisions

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
                self._tell_host(d)
        self._publish()
        for d in decisions:
            level = logging.WARNING if d.action in (Action.REFUSE, Action.UNLOAD) else logging.INFO
            log.log(level, "vram %s %s: %s", d.action.value, d.code.value, d.reason)
            self.metrics.count(d)
            if d.session_id is not None:
                kept = self._by_session.setdefault(d.session_id, [])
                kept.append(d)
                del kept[:-_PER_SESSION_DECISIONS]
        self.metrics.gauge(self.controller.metrics())
        if any(isinstance(r, (LoadReport, PeakReport)) for r in requests) or any(
                d.code == Code.PROFILE_UPDATED for d in decisions):
            try:
                self.controller.save_profiles()
            except OSError as err:
                log.warning("vram: cannot save profiles: %s", err)

    def _tell_host(self, d: Decision) -> None:
        """Push a decision to the SessionHost that holds the session (session-affinity
        routed by its id); fire and forget, the host logs what it cannot apply."""
        if self._hosts is None:
            self._hosts = serve.get_deployment_handle(SESSION_HOST_NAME, app_name=self.app_name)
        call(self._hosts.vram_notice, session_id=d.session_id, decision=decision_json(d))

    def _publish(self, force: bool = False) -> None:
        desired = {backend_deployment_name(m): n for m, n in self.controller.desired_replicas().items()}
        if force or desired != self._published:
            publish_desired(self.app_name, desired)
            self._published = desired

    async def _wait_for(self, predicate, timeout_s: float) -> bool:
        """Wait until `predicate()` holds after some step, or `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        async with self._stepped:
            while not predicate():
                left = deadline - time.monotonic()
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

    # ---------------- sessions (SessionHost) ----------------
    async def place(self, request: dict, wait_s: float) -> dict:
        """A new session: its placement (assign / queue / refuse) with code and reason.
        A queued session waits here up to `wait_s` for a better answer."""
        session_id = request["session_id"]
        self._placed_at[session_id] = self.now_s()
        await self._step([SessionRequest(**request)])

        def latest() -> Decision | None:
            kept = [d for d in self._by_session.get(session_id, ())
                    if d.action in (Action.ASSIGN, Action.QUEUE, Action.REFUSE)]
            return kept[-1] if kept else None

        first = latest()
        if first is not None and first.action == Action.QUEUE:
            await self._wait_for(lambda: latest() is not None and latest().action != Action.QUEUE, wait_s)
        decision = latest()
        if decision is None:  # cannot happen: the policy places every new session in its step
            return {"action": "refuse", "code": "internal", "reason": "no placement decision",
                    "retry_after_s": self.vram.policy.retry_after_s}
        out = decision_json(decision)
        if first is not None and first.action == Action.QUEUE:
            out["queued"] = decision_json(first)
        session = self.controller.state.sessions.get(session_id)
        if session is not None and session.target is not None:
            t = session.target
            out["target"] = {"mode": t.mode, "resolution_px": t.variant.resolution_px,
                             "fps": t.variant.fps, "code": t.code.value}
        return out

    async def ended(self, session_id: str) -> None:
        self._inbox.append(self._forget(session_id))
        self._wake.set()

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
            self._inbox += [self._forget(sid) for sid in unlisted]
            self._wake.set()

    async def demote(self, session_id: str) -> None:
        """The session stays in still mode for good (its backend lost, or its wait timed
        out): it holds no seat, so the policy never loads a backend for it again."""
        self._inbox += [SessionEnded(session_id), SessionRequest(session_id, STILL_MODE)]
        self._wake.set()

    async def wait_session(self, session_id: str, timeout_s: float) -> dict:
        """Wait until the policy has the session on a resident backend; returns its mode
        (a substitute, maybe, or the one it was upgraded to from still)."""
        def ready() -> bool:
            session = self.controller.state.sessions.get(session_id)
            return session is not None and self._phase(session.mode) == Phase.RESIDENT

        ok = await self._wait_for(ready, timeout_s)
        session = self.controller.state.sessions.get(session_id)
        return {"ok": ok, "mode": session.mode if session is not None else None,
                "target": session.target.mode if session is not None and session.target else None}

    # ---------------- backends (LeasedBackendDeployment) ----------------
    async def lease(self, mode: str, pid: int) -> dict:
        """A starting replica's load lease: granted while the policy has its load in flight."""
        granted = await self._wait_for(lambda: self._phase(mode) == Phase.LOADING, self.vram.lease_timeout_s)
        if not granted:
            return {"granted": False, "reason": f"no load of {mode} admitted within {self.vram.lease_timeout_s:.0f}s"}
        async with self._lock:
            backend = self.controller.state.backends[mode]
            total = self.controller.state.reading.total_bytes if self.controller.state.reading else 0
            cap = backend.reserved_bytes + self.config.policy.load_margin_bytes
            out = {"granted": True, "cap_bytes": cap, "total_bytes": total,
                   "resolution_px": backend.variant.resolution_px, "batch": backend.variant.batch}
            if self.device is not None:
                # The replica's simulated weights: its reservation, allocated now for its PID.
                if not self.device.attach(mode, pid, backend.reserved_bytes):
                    return {"granted": False, "reason": f"simulated CUDA out of memory loading {mode}"}
                out["simulated_bytes"] = backend.reserved_bytes
        return out

    async def report_loaded(self, mode: str, ok: bool, pid: int, peak_bytes: int | None, error: str = "") -> None:
        await self._step([LoadReport(mode, ok, pid=pid, peak_bytes=peak_bytes, error=error)])

    # ---------------- operators ----------------
    async def snapshot(self) -> dict:
        out = self.controller.snapshot()
        out.update({
            "probe": self.probe_kind, "now_s": round(self.now_s(), 3), "resumed": self.resumed,
            "session_hosts": sorted(self._hosts_seen),
            "step_period_s": self.vram.step_period_s,
            "desired_replicas": self.controller.desired_replicas(),
            "counters": dict(self.metrics.counts),
            "time_to_free_s": list(self.metrics.times_to_free_s),
            "decisions": [decision_json(d) for d in list(self.controller.state.history)[-50:]],
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
        await self._step()
        return {"at_s": round(self.now_s(), 3)}

    async def __del__(self):  # idempotent: Serve may call it more than once
        task = getattr(self, "_task", None)
        if task is not None:
            task.cancel()
        if getattr(self, "app_name", None):  # a clean shutdown: the app goes, or is redeployed
            try:
                vram_checkpoint.delete(self.app_name)
            except Exception:
                pass
        if getattr(self, "probe_kind", None) == "nvml":
            try:
                self.probe.close()
            except Exception:
                pass
            self.probe_kind = "closed"
