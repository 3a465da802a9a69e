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
import math
import os
import time
from pathlib import Path
from typing import Any

from ray import serve

from .backends import MEMORY_FRACTION_OPTION, BackendDeployment, RemoteBackend
from .calls import call
from .config import AppArgs, VramArgs
from .protocol import ServiceError
from .vram import (
    STILL_MODE, Action, Code, Controller, ControllerConfig, Decision, LoadReport, NeighbourScript,
    NvmlProbe, PeakReport, SessionEnded, SessionRequest, SimulatedDevice, default_config,
)
from .vram import checkpoint as vram_checkpoint
from .vram.autoscaling import publish_desired
from .vram.data import SHED_CODES
from .vram.policy import Phase

log = logging.getLogger("ray.serve")
CONTROLLER_NAME = "VramController"
SESSION_HOST_NAME = "SessionHost"
# Scripted neighbours' PIDs start above Linux's pid_max (2**22): never a real process's.
SIMULATED_FIRST_PID = 10_000_000
# Decisions kept per session for `place` (a session sees a handful in its life).
_PER_SESSION_DECISIONS = 20
_TIME_TO_FREE_BOUNDARIES_S = [0.25, 0.5, 1, 2, 4, 8, 16, 32, 64]
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


# ==================================================================== configuration


def resolve_probe(vram: VramArgs) -> str:
    """'auto' becomes 'nvml' where NVML sees a GPU, else 'off'."""
    if vram.probe != "auto":
        return vram.probe
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return "nvml" if pynvml.nvmlDeviceGetCount() > 0 else "off"
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver, no device: nothing to protect here
        return "off"


def _specs(args: AppArgs) -> dict:
    return {b.mode: b for b in (args.vram.backends if args.vram.backends is not None
                                else default_config().backends)}


def controlled_modes(args: AppArgs) -> list[str]:
    """Backend modes the controller drives: those with a spec (vram.backends, or the
    shipped defaults for the neural modes). Others (the CPU `pattern` test mode without
    a spec) keep Serve's request-driven autoscaling and need no placement."""
    if args.vram.probe == "off":
        return []
    specs = _specs(args)
    return [m for m in args.backends if m in specs]


def controller_config(args: AppArgs) -> ControllerConfig:
    """The policy's config for the controlled backends (substitutes limited to those)."""
    modes = controlled_modes(args)
    specs = _specs(args)
    backends = tuple(specs[m].model_copy(update={"substitutes": tuple(s for s in specs[m].substitutes if s in modes)})
                     for m in modes)
    profile_path = args.data_dir / args.vram.profile_file if args.vram.profile_file else None
    return ControllerConfig(policy=args.vram.policy, neighbours=tuple(args.vram.neighbours),
                            backends=backends, profile_path=profile_path)


def simulated_device(vram: VramArgs) -> SimulatedDevice:
    sim = vram.simulated
    scripts = [NeighbourScript(n.name, tuple((float(t), int(b)) for t, b in n.steps),
                               (n.port,) if n.port is not None else ()) for n in sim.neighbours]
    return SimulatedDevice(sim.total_bytes, scripts, gpu_index=vram.policy.gpu_index,
                           per_process_available=sim.per_process_available, first_pid=SIMULATED_FIRST_PID)


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (its memory would be freed already)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def decision_json(d: Decision) -> dict:
    out = {"action": d.action.value, "code": d.code.value, "reason": d.reason, "at_s": round(d.at_s, 3)}
    for name in ("mode", "session_id", "resolution_px", "fps", "cap_bytes", "eta_s", "retry_after_s"):
        value = getattr(d, name)
        if value is not None:
            out[name] = value
    if d.extra:
        out["extra"] = dict(d.extra)
    return out


# ==================================================================== metrics


class VramMetrics:
    """Prometheus metrics through Ray (ray.serve.metrics adds deployment and replica tags)."""

    GAUGES = ("budget_bytes", "ledger_bytes", "pending_free_bytes", "free_bytes",
              "neighbour_reserved_bytes", "emergency", "queued_sessions")

    def __init__(self):
        from ray.serve import metrics

        self.gauges = {name: metrics.Gauge(f"lockn_vram_{name}", description=f"VRAM controller: {name}")
                       for name in self.GAUGES}
        self.backend_bytes = metrics.Gauge("lockn_vram_backend_bytes", tag_keys=("backend",),
                                           description="bytes reserved for each backend (0: not resident)")
        self.decisions = metrics.Counter("lockn_vram_decisions_total", tag_keys=("action", "code"),
                                         description="every policy decision, by action and reason code")
        self.admissions = metrics.Counter("lockn_vram_admissions_total", tag_keys=("kind",),
                                          description="loads admitted (kind=load) and sessions placed on a backend")
        self.denials = metrics.Counter("lockn_vram_denials_total", tag_keys=("code",),
                                       description="sessions refused, queued or sent to still mode for lack of room")
        self.evictions = metrics.Counter("lockn_vram_evictions_total", tag_keys=("backend", "code"),
                                         description="backends scaled to zero, by reason")
        self.time_to_free = metrics.Histogram("lockn_vram_time_to_free_seconds",
                                              boundaries=_TIME_TO_FREE_BOUNDARIES_S,
                                              description="unload decision to memory seen free by the probe")
        # The same counts, for GET /v1/gpu.
        self.counts = {"admissions": 0, "denials": 0, "evictions": 0}
        self.times_to_free_s: list[float] = []

    def gauge(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            if name.startswith("backend_bytes:"):
                self.backend_bytes.set(value, tags={"backend": name.split(":", 1)[1]})
            elif name in self.gauges:
                self.gauges[name].set(value)

    def count(self, d: Decision) -> None:
        self.decisions.inc(tags={"action": d.action.value, "code": d.code.value})
        if d.action == Action.LOAD or (d.action == Action.ASSIGN and d.mode != STILL_MODE):
            self.admissions.inc(tags={"kind": "load" if d.action == Action.LOAD else "session"})
            self.counts["admissions"] += 1
        elif d.action in (Action.REFUSE, Action.QUEUE) or d.code == Code.STILL_NO_ROOM:
            self.denials.inc(tags={"code": d.code.value})
            self.counts["denials"] += 1
        elif d.action == Action.UNLOAD:
            self.evictions.inc(tags={"backend": d.mode or "", "code": d.code.value})
            self.counts["evictions"] += 1
        if "time_to_free_s" in d.extra:
            self.time_to_free.observe(d.extra["time_to_free_s"])
            self.times_to_free_s = (self.times_to_free_s + [round(d.extra["time_to_free_s"], 3)])[-50:]


# ==================================================================== the deployment


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
            raise ServiceError(409, "not_simulated", "neighbours can only be scripted on the simulated device")
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


# ==================================================================== backends under leases


def measure_peak_bytes(pid: int) -> int | None:
    """What this backend holds on the GPU after loading: NVML's number for its PID
    (CUDA context + allocator + non-torch memory), else torch's reserved peak."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if p.pid == pid and p.usedGpuMemory:
                        return int(p.usedGpuMemory)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.max_memory_reserved())
    except ImportError:
        pass
    return None


class LeasedBackendDeployment(BackendDeployment):
    """A backend replica that loads only under a lease from the VramController.

    Lease first (no GPU memory before it), cap this process at the lease on CUDA,
    load in a worker thread, then report the measured peak. On failure the report
    says why and the constructor raises (Serve retries or gives up).
    """

    async def __init__(self, mode: str, persona_dir: str, options: dict | None = None,
                       chunk_frames: int | None = None, vram: Any = None):
        self.vram_handle, self.pid = vram, os.getpid()
        lease = await call(vram.lease, mode, self.pid)
        if not lease["granted"]:
            raise RuntimeError(f"{mode}: {lease['reason']}")
        self.lease = lease
        options = dict(options or {})
        if "simulated_bytes" not in lease and lease["total_bytes"]:
            options.setdefault(MEMORY_FRACTION_OPTION, min(1.0, lease["cap_bytes"] / lease["total_bytes"]))
        try:
            await asyncio.to_thread(BackendDeployment.__init__, self, mode, persona_dir, options, chunk_frames)
        except Exception as err:
            await call(vram.report_loaded, mode, False, self.pid, None, f"{type(err).__name__}: {err}")
            raise
        peak = lease.get("simulated_bytes") or await asyncio.to_thread(measure_peak_bytes, self.pid)
        await call(vram.report_loaded, mode, True, self.pid, peak, "")


class GatedBackend:
    """A session's backend, called only once the controller has the session on a
    resident backend, and no more once the controller takes it away.

    Until `start` returns the session renders still frames (its warm-up awaits it), so
    no request waits on a zero-replica deployment and Serve's cold-start path never
    loads a backend the controller has not admitted. The mode is the controller's: the
    requested one, a substitute, or the one a still session is upgraded to. `revoke`
    (a shed, or the backend lost) cancels the calls in flight and makes every later call
    fail at once with the controller's reason, so the session falls back to still mode
    (its `error` and `mode_changed` events say why) before the replica is gone, instead
    of waiting on a deployment at zero replicas."""

    def __init__(self, session_id: str, requested_mode: str, remotes: dict[str, RemoteBackend],
                 vram: Any, ready_timeout_s: float):
        self.session_id, self.mode, self.remotes = session_id, requested_mode, remotes
        self.requested_mode = requested_mode
        self.vram, self.ready_timeout_s = vram, ready_timeout_s
        self.remote: RemoteBackend | None = None
        self.revoked: BackendRevoked | None = None
        self._in_flight: set[asyncio.Future] = set()

    def revoke(self, code: str, reason: str) -> None:
        """Calls in flight are cancelled too: one waiting on a replica that crashed (or is
        going) would otherwise hold the session's frames until its timeout."""
        self.revoked = BackendRevoked(code, reason)
        for task in list(self._in_flight):
            task.cancel()

    def _backend(self) -> RemoteBackend:
        if self.revoked is not None:
            raise self.revoked
        return self.remote

    async def _call(self, method: str, *args):
        task = asyncio.ensure_future(getattr(self._backend(), method)(*args))
        self._in_flight.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            if self.revoked is not None and task.cancelled():
                raise self.revoked from None  # cancelled by `revoke`, not by the session
            raise
        finally:
            self._in_flight.discard(task)

    async def start(self, persona_id, controls):
        state = await call(self.vram.wait_session, self.session_id, self.ready_timeout_s)
        if not state["ok"] or state["mode"] not in self.remotes:
            await call(self.vram.demote, self.session_id)
            raise RuntimeError(f"no backend was loaded for this session within {self.ready_timeout_s:.0f}s "
                               f"(controller: {state['mode'] or 'session unknown'})")
        self.mode, self.remote = state["mode"], self.remotes[state["mode"]]
        return await self._call("start", persona_id, controls)

    async def render(self, persona_id, carry, audio16k, controls, fmt=None):
        return await self._call("render", persona_id, carry, audio16k, controls, fmt)

    async def flush(self, persona_id, carry, controls, fmt=None):
        return await self._call("flush", persona_id, carry, controls, fmt)

    async def idle(self, persona_id, carry, n, controls, fmt=None):
        return await self._call("idle", persona_id, carry, n, controls, fmt)

    async def interrupt(self, persona_id, carry, controls):
        return await self._call("interrupt", persona_id, carry, controls)

    async def plan(self, persona_id, carry, audio16k, controls):
        return await self._call("plan", persona_id, carry, audio16k, controls)

    async def warnings(self, persona_id):
        return await self._call("warnings", persona_id)


class BackendRevoked(RuntimeError):
    """The VRAM controller moved this session off its backend. `code` is the decision's
    (e.g. `shed_over_budget`); the session's `error` event carries it instead of
    `backend_error`, and the message is the controller's reason."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{reason} ({code})")
        self.code = code


class VramGate:
    """The SessionHost's side: placement on create, SessionEnded on close."""

    def __init__(self, handle: Any, args: AppArgs):
        self.handle, self.ready_timeout_s = handle, args.timeouts.backend_ready_timeout_s
        self.modes = frozenset(controlled_modes(args))
        self.gates: dict[str, GatedBackend] = {}
        self.placed: set[str] = set()  # placed and not yet ended: the heartbeat's list

    def controls(self, mode: str) -> bool:
        return mode in self.modes

    async def place(self, session_id: str, mode: str, *, allow_still: bool = True,
                    max_wait_s: float = 30.0, resolution_px: int = 512) -> dict:
        """The placement, or ServiceError 503 with Retry-After and the policy's reason."""
        request = {"session_id": session_id, "mode": mode, "allow_still": allow_still,
                   "max_wait_s": max_wait_s, "resolution_px": resolution_px}
        self.placed.add(session_id)
        try:
            placement = await call(self.handle.place, request, max_wait_s + 1.0)
        except Exception:
            self.placed.discard(session_id)
            raise
        if placement["action"] == "queue":  # still queued after its wait: give up its place
            await self.ended(session_id)
        if placement["action"] in ("refuse", "queue"):
            self.placed.discard(session_id)  # refused: the controller holds nothing for it
            retry_s = placement.get("retry_after_s") or placement.get("eta_s") or 30.0
            raise ServiceError(503, placement["code"], placement["reason"], retry_after_s=max(1, math.ceil(retry_s)))
        return placement

    def backend(self, session_id: str, mode: str, remotes: dict[str, RemoteBackend]) -> GatedBackend:
        """What the session renders with once the controller has its backend resident:
        at once, after a load, or (still for lack of room) when room appears."""
        gate = GatedBackend(session_id, mode, remotes, self.handle, self.ready_timeout_s)
        self.gates[session_id] = gate
        return gate

    def notice(self, session_id: str, decision: dict) -> bool:
        """A decision the controller pushed for a live session: a shed, or its backend lost.
        Revokes its gate; True when the session may wait for a backend again (after a shed:
        the controller upgrades it when room appears), False when it stays still for good
        (its backend crashed: no reload for it, or a crash could loop)."""
        gate = self.gates.pop(session_id, None)
        if gate is not None:
            gate.revoke(decision["code"], decision["reason"])
        return decision["code"] != Code.BACKEND_LOST.value

    def demote(self, session_id: str) -> None:
        """The session stays in still mode for good: it holds no seat at the controller."""
        call(self.handle.demote, session_id)

    async def heartbeat(self, host_id: str) -> None:
        await asyncio.wait_for(call(self.handle.host_sessions, host_id, sorted(self.placed)), 10.0)

    async def ended(self, session_id: str) -> None:
        self.gates.pop(session_id, None)
        self.placed.discard(session_id)
        try:
            await asyncio.wait_for(call(self.handle.ended, session_id), 10.0)
        except Exception as err:  # the controller also forgets nothing: log and go on
            log.warning("vram: could not report session %s ended: %s", session_id, err)
