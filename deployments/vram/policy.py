"""The VRAM policy: one `Controller.step` turns (state, reading, requests) into decisions.

Each step, in order:

1. observe   fold the reading into neighbour high-water marks, our backends' live
             peaks, and unload confirmations; compute the budget
             B = total - sum(neighbour reservations) - floor.
2. requests  load reports, live peaks, sessions ended.
3. protect   free memory below the floor -> emergency; the committed ledger above
             B -> unload idle backends, then shed the lowest-priority sessions.
4. tidy      load timeouts, idle TTL.
5. sessions  place new, queued and degraded sessions on the degrade ladder.
6. admit     at most one load per GPU, only where both the ledger and live free
             memory leave the profile plus a margin.

Nothing here does I/O or reads a clock: `now_s` comes in, so tests and the
simulation drive it with simulated time.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from .config import STILL_MODE, BackendSpec, ControllerConfig, VariantSpec
from .data import (
    Action,
    Code,
    Decision,
    DeviceReading,
    LoadReport,
    PeakReport,
    Request,
    SessionEnded,
    SessionRequest,
)
from .eviction import EvictionCandidate, cheapest_set, eviction_cost_s
from .neighbours import NeighbourTracker, matches
from .profiles import ProfileKey, ProfileStore

# Share of a backend's reserved bytes that must disappear from the device total
# before an unload counts as confirmed when per-process numbers are unavailable.
_AGGREGATE_CONFIRM_SHARE = 0.8


class Phase(StrEnum):
    LOADING = "loading"
    RESIDENT = "resident"
    UNLOADING = "unloading"


@dataclass
class Backend:
    """One of our backends that holds (or is about to hold, or still holds) memory."""

    mode: str
    variant: VariantSpec
    phase: Phase
    reserved_bytes: int
    since_s: float
    last_busy_s: float
    pid: int | None = None
    # PIDs on the device when the load began: a new one during the load is this backend.
    pids_before_load: frozenset[int] = frozenset()
    unload_started_s: float | None = None
    used_at_unload_bytes: int | None = None
    # Its PID was on the device once (NVML in a container may never show our PIDs: no verdict
    # then), and the readings in a row since without it.
    seen_on_device: bool = False
    missing_readings: int = 0

    @property
    def key(self) -> ProfileKey:
        return ProfileKey(self.mode, self.variant.resolution_px, self.variant.batch)


@dataclass(frozen=True)
class Rung:
    """One step of a session's ladder: a mode and variant, and the code that names it."""

    rank: int
    mode: str
    variant: VariantSpec
    code: Code


@dataclass
class Session:
    request: SessionRequest
    # STILL_MODE, a backend mode, or "" while queued.
    mode: str
    rank: int
    since_s: float
    variant: VariantSpec | None = None
    # The rung it waits for (rendering in `mode` meanwhile).
    target: Rung | None = None
    queued_since_s: float | None = None


@dataclass
class ControllerState:
    """Everything the policy remembers between steps; plain data, easy to snapshot."""

    neighbours: NeighbourTracker
    profiles: ProfileStore
    backends: dict[str, Backend] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    # Requests per mode, decayed over the reuse horizon: an estimate of the
    # number expected in the next horizon.
    demand: dict[str, float] = field(default_factory=dict)
    demand_at_s: float = 0.0
    emergency: bool = False
    budget_bytes: int = 0
    reading: DeviceReading | None = None
    history: deque[Decision] = field(default_factory=deque)


class Controller:
    """The policy. Create once per GPU; call `step` periodically (e.g. every 0.5 s)."""

    def __init__(self, config: ControllerConfig, profiles: ProfileStore | None = None):
        self.config = config
        self.policy = config.policy
        self._specs = {b.mode: b for b in config.backends}
        self.state = ControllerState(
            neighbours=NeighbourTracker(config.neighbours, config.policy),
            profiles=profiles if profiles is not None else ProfileStore(),
        )
        self._out: list[Decision] = []
        self._now_s = 0.0

    # ================================================================ public API

    @classmethod
    def from_config(cls, config: ControllerConfig) -> "Controller":
        """A controller with the profiles measured in earlier runs (config.profile_path)."""
        profiles = ProfileStore.load(config.profile_path) if config.profile_path else ProfileStore()
        return cls(config, profiles)

    def save_profiles(self) -> None:
        """Persist measured profiles; call after steps that loaded or raised a profile."""
        if self.config.profile_path is not None:
            self.state.profiles.save(self.config.profile_path)

    def desired_replicas(self) -> dict[str, int]:
        """Replica target per backend mode: 1 while loading or resident, else 0.
        What a custom autoscaling policy (or an external scaler) should apply."""
        return {mode: int(mode in self.state.backends
                          and self.state.backends[mode].phase != Phase.UNLOADING)
                for mode in self._specs}

    def metrics(self) -> dict[str, float]:
        """Gauges for Prometheus: bytes per backend, budget, ledger, free, emergency."""
        r = self.state.reading
        out = {"budget_bytes": float(self.state.budget_bytes),
               "ledger_bytes": float(self.committed_bytes()),
               "pending_free_bytes": float(self.pending_free_bytes()),
               "free_bytes": float(r.free_bytes if r else 0),
               "neighbour_reserved_bytes": float(self.state.neighbours.total_reservation_bytes()),
               "emergency": float(self.state.emergency),
               "queued_sessions": float(sum(1 for x in self.state.sessions.values() if x.mode == ""))}
        for mode in self._specs:
            backend = self.state.backends.get(mode)
            out[f"backend_bytes:{mode}"] = float(backend.reserved_bytes if backend else 0)
        return out

    def step(self, now_s: float, reading: DeviceReading, requests: list[Request] = ()) -> list[Decision]:
        """Advance the policy to `now_s` with a fresh reading; returns this step's decisions."""
        self._now_s, self._out = now_s, []
        self._observe(reading)
        for request in requests:
            self._handle(request)
        self._protect(reading)
        self._tidy()
        self._place_sessions()
        self._admit(reading)
        self._remember(self._out)
        return self._out

    def committed_bytes(self) -> int:
        """The ledger: bytes our loading and resident backends may use."""
        return sum(b.reserved_bytes for b in self.state.backends.values() if b.phase != Phase.UNLOADING)

    def pending_free_bytes(self) -> int:
        """Bytes of unloads issued but not yet confirmed by the probe."""
        return sum(b.reserved_bytes for b in self.state.backends.values() if b.phase == Phase.UNLOADING)

    def loading_mode(self) -> str | None:
        return next((m for m, b in self.state.backends.items() if b.phase == Phase.LOADING), None)

    def snapshot(self) -> dict:
        """JSON-ready view for GET /v1/gpu."""
        s, r = self.state, self.state.reading
        return {
            "total_bytes": r.total_bytes if r else 0,
            "free_bytes": r.free_bytes if r else 0,
            "budget_bytes": s.budget_bytes,
            "ledger_bytes": self.committed_bytes(),
            "pending_free_bytes": self.pending_free_bytes(),
            "emergency": s.emergency,
            "per_process_available": r.per_process_available if r else None,
            "probe_note": r.note if r else "",
            "neighbours": {
                n.name: {"used_bytes": n.used_bytes, "high_water_bytes": n.high_water_bytes,
                         "reservation_bytes": n.reservation_bytes(), "pids": list(n.pids)}
                for n in s.neighbours.states.values()
            },
            "backends": {
                m: {"phase": b.phase.value, "reserved_bytes": b.reserved_bytes,
                    "resolution_px": b.variant.resolution_px, "batch": b.variant.batch,
                    "pid": b.pid, "sessions": self._seats(m)}
                for m, b in s.backends.items()
            },
            "queue": [sid for sid, x in s.sessions.items() if x.mode == ""],
            "sessions": {sid: {"mode": x.mode or "queued", "requested": x.request.mode,
                               "target": x.target.mode if x.target else None}
                         for sid, x in s.sessions.items()},
            "profiles": s.profiles.as_dict(),
            "decisions": [_decision_json(d) for d in list(s.history)[-50:]],
        }

    # ================================================================ 1. observe

    def _observe(self, reading: DeviceReading) -> None:
        s = self.state
        s.reading = reading
        if not reading.per_process_available and s.neighbours.aggregate is False:
            self._emit(Action.NOTE, Code.NO_PER_PROCESS_NUMBERS,
                       f"per-process GPU memory unavailable ({reading.note or 'no reason given'}); "
                       "attributing used memory minus our backends to 'unattributed'")
        self._adopt_loading_pid(reading)
        self._detect_lost(reading)
        own_pids = {b.pid for b in s.backends.values() if b.pid is not None}
        own_bytes = sum(b.reserved_bytes for b in s.backends.values())
        s.neighbours.observe(reading, own_pids, own_bytes, self._now_s)
        self._track_live_peaks(reading)
        self._confirm_unloads(reading)
        s.budget_bytes = (reading.total_bytes - s.neighbours.total_reservation_bytes()
                          - self.policy.floor_bytes)

    def _adopt_loading_pid(self, reading: DeviceReading) -> None:
        """One load at a time makes this unambiguous: an unknown PID that appeared
        since the load began, and matches no declared neighbour, is the loading backend."""
        loading = self.state.backends.get(self.loading_mode() or "")
        if loading is None or loading.pid is not None or not reading.per_process_available:
            return
        for process in reading.processes:
            if process.pid in loading.pids_before_load:
                continue
            if any(matches(spec, process) for spec in self.config.neighbours):
                continue
            loading.pid = process.pid
            self.state.neighbours.forget_pid(process.pid)
            return

    def _detect_lost(self, reading: DeviceReading) -> None:
        """A backend whose process left the GPU without an unload crashed (or was killed):
        its memory is free and its sessions have lost it. They go to still mode, told why;
        the backend leaves the ledger, so Serve is asked for zero replicas and a new session
        loads it afresh. Needs per-process numbers and a PID seen on the device before."""
        if not reading.per_process_available:
            return
        live_pids = {p.pid for p in reading.processes}
        for mode, b in list(self.state.backends.items()):
            if b.phase == Phase.UNLOADING or b.pid is None:
                continue
            if b.pid in live_pids:
                b.seen_on_device, b.missing_readings = True, 0
                continue
            if not b.seen_on_device:
                continue
            b.missing_readings += 1
            if b.missing_readings < _LOST_AFTER_READINGS:
                continue
            why = f"{mode}'s process {b.pid} left the GPU without an unload (it crashed or was killed)"
            del self.state.backends[mode]
            self._emit(Action.NOTE, Code.BACKEND_LOST, why, mode=mode, extra={"bytes": b.reserved_bytes})
            for session in self._sessions_on(mode):
                if session.target is not None and session.target.mode == mode:
                    session.target = None  # re-placed: a new load
                if session.mode == mode:
                    self._to_still(session, Code.BACKEND_LOST, why)
                    # Still for good (its host demotes it): no load for it, or a crash could loop.
                    session.rank = 0

    def _track_live_peaks(self, reading: DeviceReading) -> None:
        if not reading.per_process_available:
            return
        used_by_pid = {p.pid: p.used_bytes for p in reading.processes if p.used_bytes is not None}
        for backend in self.state.backends.values():
            if backend.phase == Phase.RESIDENT and backend.pid in used_by_pid:
                self._raise_profile(backend, used_by_pid[backend.pid], "NVML live peak")

    def _raise_profile(self, backend: Backend, peak_bytes: int, source: str) -> None:
        raised = self.state.profiles.observe(backend.key, peak_bytes, self._now_s)
        if raised and peak_bytes > backend.reserved_bytes:
            self._emit(Action.NOTE, Code.PROFILE_UPDATED,
                       f"{backend.key.as_str()} peaked at {_gib(peak_bytes)} ({source}), "
                       f"above its reservation of {_gib(backend.reserved_bytes)}", mode=backend.mode)
            backend.reserved_bytes = peak_bytes

    def _confirm_unloads(self, reading: DeviceReading) -> None:
        """Unload is confirmed by the probe, never assumed (except after a timeout
        without per-process numbers, and then the decision says so)."""
        live_pids = {p.pid for p in reading.processes}
        for mode, b in list(self.state.backends.items()):
            if b.phase != Phase.UNLOADING:
                continue
            if reading.per_process_available and b.pid is not None:
                confirmed = b.pid not in live_pids
                how = f"pid {b.pid} left the GPU"
            else:
                dropped = (b.used_at_unload_bytes or 0) - reading.used_bytes
                confirmed = dropped >= _AGGREGATE_CONFIRM_SHARE * b.reserved_bytes
                how = f"device used memory fell by {_gib(max(dropped, 0))}"
            waited_s = self._now_s - (b.unload_started_s or self._now_s)
            if confirmed:
                self._emit(Action.NOTE, Code.UNLOAD_CONFIRMED,
                           f"{mode} unloaded after {waited_s:.1f}s: {how}", mode=mode,
                           extra={"time_to_free_s": waited_s})
            elif waited_s >= self.policy.unload_confirm_timeout_s and (
                    not reading.per_process_available or b.pid is None):
                self._emit(Action.NOTE, Code.UNLOAD_ASSUMED,
                           f"{mode} assumed unloaded after {waited_s:.1f}s: the probe cannot "
                           "see per-process memory", mode=mode, extra={"time_to_free_s": waited_s})
            else:
                continue
            del self.state.backends[mode]

    # ================================================================ 2. requests

    def _handle(self, request: Request) -> None:
        if isinstance(request, SessionRequest):
            self._new_session(request)
        elif isinstance(request, SessionEnded):
            self._end_session(request.session_id)
        elif isinstance(request, LoadReport):
            self._load_reported(request)
        elif isinstance(request, PeakReport):
            backend = self.state.backends.get(request.mode)
            if backend is not None:
                self._raise_profile(backend, request.peak_bytes, "backend report")

    def _new_session(self, request: SessionRequest) -> None:
        if request.mode != STILL_MODE and request.mode not in self._specs:
            self._emit(Action.REFUSE, Code.UNKNOWN_MODE,
                       f"unknown mode {request.mode!r}; known: {sorted(self._specs)} and still",
                       session_id=request.session_id)
            return
        self._count_demand(request.mode)
        # Rank far below every rung: the placement pass treats it as "not placed yet".
        self.state.sessions[request.session_id] = Session(request, "", rank=_UNPLACED,
                                                          since_s=self._now_s)

    def _count_demand(self, mode: str) -> None:
        s = self.state
        decay = math.exp(-(self._now_s - s.demand_at_s) / self.policy.reuse_horizon_s)
        s.demand = {m: n * decay for m, n in s.demand.items()}
        s.demand[mode] = s.demand.get(mode, 0.0) + 1.0
        s.demand_at_s = self._now_s

    def _end_session(self, session_id: str) -> None:
        session = self.state.sessions.pop(session_id, None)
        if session is None:
            return
        for mode in (session.mode, session.target.mode if session.target else None):
            backend = self.state.backends.get(mode or "")
            if backend is not None:
                backend.last_busy_s = self._now_s

    def _load_reported(self, report: LoadReport) -> None:
        backend = self.state.backends.get(report.mode)
        if backend is None or backend.phase != Phase.LOADING:
            return  # a late report for a load we already gave up on
        if not report.ok:
            self._unload(backend, Code.LOAD_FAILED, f"{report.mode} failed to load: {report.error}")
            return
        backend.phase, backend.since_s, backend.last_busy_s = Phase.RESIDENT, self._now_s, self._now_s
        if report.pid is not None and report.pid != backend.pid:
            # The replica's own PID over the one adopted from the device (in a container the
            # two differ): whether the device shows it is yet to be seen.
            backend.pid, backend.seen_on_device, backend.missing_readings = report.pid, False, 0
        if report.peak_bytes is not None:
            self.state.profiles.observe(backend.key, report.peak_bytes, self._now_s)
            # The first measurement replaces the guess, lower or higher.
            backend.reserved_bytes = self.state.profiles.peak_bytes(backend.key, backend.reserved_bytes)
        for session in self.state.sessions.values():
            if session.target is not None and session.target.mode == report.mode:
                self._move(session, session.target, Code.BACKEND_READY,
                           f"{report.mode} is loaded; switching from {session.mode or 'queue'}")

    # ================================================================ 3. protect

    def _protect(self, reading: DeviceReading) -> None:
        self._update_emergency(reading)
        if self.state.emergency:
            need = self.policy.floor_bytes - reading.free_bytes - self.pending_free_bytes()
            self._reclaim(need, Code.EVICT_EMERGENCY, Code.SHED_EMERGENCY,
                          f"free memory {_gib(reading.free_bytes)} is below the floor "
                          f"{_gib(self.policy.floor_bytes)}")
        over = self.committed_bytes() - max(self.state.budget_bytes, 0)
        if over > 0:
            self._reclaim(over, Code.EVICT_OVER_BUDGET, Code.SHED_OVER_BUDGET,
                          f"our ledger exceeds the budget {_gib(self.state.budget_bytes)} "
                          f"by {_gib(over)} (neighbour reservations grew)")

    def _update_emergency(self, reading: DeviceReading) -> None:
        s, floor = self.state, self.policy.floor_bytes
        if not s.emergency and reading.free_bytes < floor:
            s.emergency = True
            self._emit(Action.NOTE, Code.EMERGENCY_ENTER,
                       f"free {_gib(reading.free_bytes)} < floor {_gib(floor)}: no loads, "
                       "unloading idle backends, shedding the lowest-priority sessions if needed")
        elif s.emergency and reading.free_bytes >= floor + self.policy.load_margin_bytes:
            # The margin is hysteresis: leave only with room to spare.
            s.emergency = False
            self._emit(Action.NOTE, Code.EMERGENCY_EXIT,
                       f"free {_gib(reading.free_bytes)} is back above the floor")

    def _reclaim(self, need_bytes: int, evict_code: Code, shed_code: Code, why: str) -> None:
        """Free `need_bytes`: idle backends first (cheapest set), then shed sessions,
        lowest priority first. Protection ignores minimum residency: neighbours first."""
        if need_bytes <= 0:
            return
        idle = [b for b in self._active() if not self._seats(b.mode)]
        chosen = cheapest_set([self._candidate(b) for b in idle], need_bytes)
        victims = [self.state.backends[c.mode] for c in (chosen if chosen is not None else [])]
        if chosen is None:
            victims = list(idle)
            freed = sum(b.reserved_bytes for b in victims)
            for backend in self._busy_by_priority():
                if freed >= need_bytes:
                    break
                self._shed(backend, shed_code, why)
                victims.append(backend)
                freed += backend.reserved_bytes
        for backend in victims:
            self._unload(backend, evict_code, f"unloading {backend.mode}: {why}")

    def _busy_by_priority(self) -> list[Backend]:
        """Backends with sessions, those whose best session matters least first."""
        def key(b: Backend) -> tuple[int, float]:
            top = max((x.request.priority for x in self._sessions_on(b.mode)), default=-10**9)
            return top, self._candidate(b).cost_s
        return sorted((b for b in self._active() if self._seats(b.mode)), key=key)

    def _shed(self, backend: Backend, code: Code, why: str) -> None:
        for session in self._sessions_on(backend.mode):
            if session.target is not None and session.target.mode == backend.mode:
                session.target = None
            if session.mode == backend.mode:
                self._to_still(session, code, f"{backend.mode} must be unloaded: {why}")

    # ================================================================ 4. tidy

    def _tidy(self) -> None:
        for backend in list(self._active()):
            age_s = self._now_s - backend.since_s
            if backend.phase == Phase.LOADING and age_s > self.policy.load_timeout_s:
                self._unload(backend, Code.LOAD_TIMEOUT,
                             f"{backend.mode} did not report loaded within {self.policy.load_timeout_s:.0f}s")
                continue
            if self._seats(backend.mode):
                backend.last_busy_s = self._now_s
                continue
            idle_s = self._now_s - backend.last_busy_s
            if (backend.phase == Phase.RESIDENT and idle_s >= self.policy.idle_ttl_s
                    and age_s >= self.policy.min_residency_s):
                self._unload(backend, Code.EVICT_IDLE_TTL,
                             f"{backend.mode} idle for {idle_s:.0f}s (ttl {self.policy.idle_ttl_s:.0f}s)")

    # ================================================================ 5. sessions

    def _place_sessions(self) -> None:
        """New sessions, sessions whose target vanished, and degraded sessions try the
        ladder; each moves only to a better rung than the one it has."""
        for session in sorted(self.state.sessions.values(), key=lambda x: -x.request.priority):
            if session.rank == 0 or (session.target is not None and session.target.mode in self.state.backends):
                continue
            session.target = None
            self._place(session)

    def _place(self, session: Session) -> None:
        request, fresh = session.request, session.rank == _UNPLACED
        if request.mode == STILL_MODE:
            self._to_still(session, Code.ADMITTED, "still mode requested: no GPU needed")
            session.rank = 0  # nothing better to move to
            return
        for rung in self._ladder(request):
            if rung.rank >= session.rank:
                break
            verdict = self._can_serve(rung)
            if verdict == _NOW:
                code = rung.code if fresh else Code.UPGRADED
                self._move(session, rung, code, _rung_reason(rung, request, fresh))
                return
            if verdict == _LATER:
                self._wait_for(session, rung)
                return
        if fresh:
            self._no_rung(session)

    def _ladder(self, request: SessionRequest) -> list[Rung]:
        """ditto -> liveportrait or musetalk -> lower resolution/fps; still is not a rung
        here (it needs no memory) but the fallback in `_no_rung`."""
        spec = self._specs[request.mode]
        subs = [self._specs[m] for m in spec.substitutes] if request.allow_substitute else []
        tops = [(spec, Code.ADMITTED)] + [(s, Code.SUBSTITUTE_MODE) for s in subs]
        rungs = [(b, _variants_for(b, request.resolution_px)[0], code) for b, code in tops]
        if request.allow_lower_quality:
            for b, _ in tops:
                rungs += [(b, v, Code.LOWER_QUALITY) for v in _variants_for(b, request.resolution_px)[1:]]
        return [Rung(i, b.mode, v, code) for i, (b, v, code) in enumerate(rungs)]

    def _can_serve(self, rung: Rung) -> str:
        """_NOW (resident with a free seat), _LATER (loading, or loadable), or _NO."""
        backend = self.state.backends.get(rung.mode)
        spec = self._specs[rung.mode]
        if backend is not None:
            if backend.variant != rung.variant or backend.phase == Phase.UNLOADING:
                return _NO
            if self._seats(rung.mode) >= spec.max_sessions:
                return _NO
            return _NOW if backend.phase == Phase.RESIDENT else _LATER
        if self.state.emergency:
            return _NO
        bytes_needed = self._profile_bytes(rung.mode, rung.variant)
        return _LATER if self._evictions_for(bytes_needed, respect_residency=True) is not None else _NO

    def _wait_for(self, session: Session, rung: Rung) -> None:
        """Show still while the backend loads, or queue where still is not accepted."""
        session.target = rung
        eta_s = self._eta_s(rung.mode)
        if session.mode == "" and session.rank == _UNPLACED and session.request.allow_still:
            self._to_still(session, Code.WAIT_FOR_LOAD,
                           f"{rung.mode} is not resident yet; still mode until it loads (~{eta_s:.0f}s)",
                           eta_s=eta_s)
        elif session.mode == "":
            self._queue_or_refuse(session, eta_s, f"waiting for {rung.mode} to load (~{eta_s:.0f}s)")

    def _no_rung(self, session: Session) -> None:
        if session.request.allow_still:
            self._to_still(session, Code.STILL_NO_ROOM,
                           f"{self._obstacle(session.request.mode)}; still mode, upgraded when "
                           "room appears")
        else:
            self._keep_queued(session)

    def _obstacle(self, mode: str) -> str:
        """Why the requested mode cannot serve: a full replica, or memory."""
        backend, spec = self.state.backends.get(mode), self._specs[mode]
        if backend is not None and self._seats(mode) >= spec.max_sessions:
            return f"{mode}'s replica is full ({spec.max_sessions} sessions) and no fallback has room"
        return (f"no room for {mode} or its fallbacks next to the neighbours (budget "
                f"{_gib(self.state.budget_bytes)}, ledger {_gib(self.committed_bytes())})")

    def _keep_queued(self, session: Session) -> None:
        """Queue while an ETA exists within the session's patience; else 503."""
        eta_s = self._room_eta_s(session.request)
        why = f"no room now; room expected in ~{eta_s:.0f}s" if eta_s is not None else ""
        self._queue_or_refuse(session, eta_s, why)

    def _queue_or_refuse(self, session: Session, eta_s: float | None, why: str) -> None:
        """Queue while the ETA fits the session's patience; else 503 with Retry-After."""
        waited_s = self._now_s - (session.queued_since_s or self._now_s)
        if eta_s is not None and waited_s + eta_s <= session.request.max_wait_s:
            self._queue(session, eta_s, why)
            return
        session.target = None
        code = Code.REFUSED_QUEUE_TIMEOUT if session.queued_since_s is not None else Code.REFUSED_NO_ROOM
        retry_s = max(eta_s or self.policy.retry_after_s, 1.0)
        self._emit(Action.REFUSE, code,
                   f"no room for {session.request.mode} within {session.request.max_wait_s:.0f}s "
                   "and still mode not accepted", session_id=session.request.session_id,
                   mode=session.request.mode, retry_after_s=retry_s)
        del self.state.sessions[session.request.session_id]

    def _queue(self, session: Session, eta_s: float, why: str) -> None:
        if session.queued_since_s is not None:
            return  # already told; repeating the ETA every step is noise
        session.mode, session.queued_since_s = "", self._now_s
        self._emit(Action.QUEUE, Code.QUEUED, why, session_id=session.request.session_id,
                   mode=session.request.mode, eta_s=eta_s)

    def _room_eta_s(self, request: SessionRequest) -> float | None:
        """When idle backends kept only by minimum residency may go, plus a load.
        None when room depends on other sessions ending (unknowable)."""
        best: float | None = None
        for rung in self._ladder(request):
            need = self._profile_bytes(rung.mode, rung.variant)
            if rung.mode in self.state.backends or self._evictions_for(need, respect_residency=False) is None:
                continue
            young = [b for b in self._active() if not self._seats(b.mode)]
            wait_s = max((self.policy.min_residency_s - (self._now_s - b.since_s) for b in young), default=0.0)
            eta = max(wait_s, 0.0) + self._specs[rung.mode].load_time_s
            best = eta if best is None else min(best, eta)
        return best

    def _eta_s(self, mode: str) -> float:
        """Rough time until `mode` is ready: the load in flight, then this one."""
        spec = self._specs[mode]
        backend = self.state.backends.get(mode)
        if backend is not None and backend.phase == Phase.LOADING:
            return max(spec.load_time_s - (self._now_s - backend.since_s), 0.0)
        current = self.state.backends.get(self.loading_mode() or "")
        ahead_s = 0.0 if current is None else max(
            self._specs[current.mode].load_time_s - (self._now_s - current.since_s), 0.0)
        return ahead_s + spec.load_time_s

    # ================================================================ 6. admit

    def _admit(self, reading: DeviceReading) -> None:
        """Start at most one load: the most wanted target whose room can be had."""
        if self.loading_mode() is not None or self.state.emergency:
            return
        for rung in self._wanted_loads():
            need = self._profile_bytes(rung.mode, rung.variant)
            evict = self._evictions_for(need, respect_residency=True)
            if evict is None:
                continue
            if evict:
                for backend in evict:
                    self._unload(backend, Code.EVICT_FOR_ROOM,
                                 f"unloading idle {backend.mode} to make room for {rung.mode}")
                return  # load once the unloads are confirmed
            if self._fits_live(reading, need) and self._fits_confirmed(need):
                self._load(rung, need, reading)
                return
            if self.pending_free_bytes():
                return  # memory is still being freed: wait for the probe to see it

    def _fits_confirmed(self, need_bytes: int) -> bool:
        """The ledger plans with unloads in flight as freed; a load waits until the probe
        has confirmed them, so our real usage never exceeds the budget in between."""
        room = (self.state.budget_bytes - self.committed_bytes() - self.pending_free_bytes()
                - self.policy.load_margin_bytes)
        return room >= need_bytes

    def _wanted_loads(self) -> list[Rung]:
        """Targets of waiting sessions that are not loading yet, most wanted first."""
        votes: dict[tuple[str, VariantSpec], tuple[int, int, Rung]] = {}
        for session in self.state.sessions.values():
            rung = session.target
            if rung is None or rung.mode in self.state.backends:
                continue
            count, top, _ = votes.get((rung.mode, rung.variant), (0, -10**9, rung))
            votes[(rung.mode, rung.variant)] = (count + 1, max(top, session.request.priority), rung)
        ranked = sorted(votes.values(), key=lambda v: (-v[1], -v[0], v[2].rank))
        return [rung for _, _, rung in ranked]

    def _fits_live(self, reading: DeviceReading, need_bytes: int) -> bool:
        """Live check on top of the ledger: after the load, free memory stays above the
        floor, otherwise the load itself would trigger an emergency."""
        return reading.free_bytes - need_bytes - self.policy.load_margin_bytes >= self.policy.floor_bytes

    def _load(self, rung: Rung, need_bytes: int, reading: DeviceReading) -> None:
        self.state.backends[rung.mode] = Backend(
            mode=rung.mode, variant=rung.variant, phase=Phase.LOADING, reserved_bytes=need_bytes,
            since_s=self._now_s, last_busy_s=self._now_s,
            pids_before_load=frozenset(p.pid for p in reading.processes))
        waiting = sum(1 for x in self.state.sessions.values() if x.target and x.target.mode == rung.mode)
        self._emit(Action.LOAD, Code.LOAD_ADMITTED,
                   f"loading {rung.mode}@{rung.variant.resolution_px}px for {waiting} session(s): "
                   f"{_gib(need_bytes)} fits the budget {_gib(self.state.budget_bytes)} "
                   f"(ledger {_gib(self.committed_bytes() - need_bytes)}) and free {_gib(reading.free_bytes)}",
                   mode=rung.mode, resolution_px=rung.variant.resolution_px, fps=rung.variant.fps,
                   batch=rung.variant.batch, cap_bytes=need_bytes + self.policy.load_margin_bytes)

    # ================================================================ helpers

    def _evictions_for(self, need_bytes: int, respect_residency: bool) -> list[Backend] | None:
        """Idle backends to unload so that `need_bytes` fits the ledger ([] if it fits now),
        or None if it cannot fit. Unloads in flight count as freed: the ledger is a plan."""
        room = self.state.budget_bytes - self.committed_bytes() - self.policy.load_margin_bytes
        if room >= need_bytes:
            return []
        idle = [b for b in self._active()
                if b.phase == Phase.RESIDENT and not self._seats(b.mode)
                and (not respect_residency or self._now_s - b.since_s >= self.policy.min_residency_s)]
        chosen = cheapest_set([self._candidate(b) for b in idle], need_bytes - room)
        return None if chosen is None else [self.state.backends[c.mode] for c in chosen]

    def _candidate(self, backend: Backend) -> EvictionCandidate:
        demand = self.state.demand.get(backend.mode, 0.0) * math.exp(
            -(self._now_s - self.state.demand_at_s) / self.policy.reuse_horizon_s)
        cost = eviction_cost_s(self._specs[backend.mode].load_time_s, demand)
        return EvictionCandidate(backend.mode, backend.reserved_bytes, cost)

    def _profile_bytes(self, mode: str, variant: VariantSpec) -> int:
        key = ProfileKey(mode, variant.resolution_px, variant.batch)
        return self.state.profiles.peak_bytes(key, variant.default_peak_bytes)

    def _active(self) -> list[Backend]:
        return [b for b in self.state.backends.values() if b.phase != Phase.UNLOADING]

    def _sessions_on(self, mode: str) -> list[Session]:
        return [x for x in self.state.sessions.values()
                if x.mode == mode or (x.target is not None and x.target.mode == mode)]

    def _seats(self, mode: str) -> int:
        return len(self._sessions_on(mode))

    def _unload(self, backend: Backend, code: Code, why: str) -> None:
        for session in self._sessions_on(backend.mode):
            session.target = None  # re-placed by the next placement pass
        backend.phase, backend.unload_started_s = Phase.UNLOADING, self._now_s
        backend.used_at_unload_bytes = self.state.reading.used_bytes if self.state.reading else None
        self._emit(Action.UNLOAD, code, why, mode=backend.mode, extra={"bytes": backend.reserved_bytes})

    def _move(self, session: Session, rung: Rung, code: Code, why: str) -> None:
        session.mode, session.variant, session.rank = rung.mode, rung.variant, rung.rank
        session.target, session.queued_since_s = None, None
        self._emit(Action.ASSIGN, code, why, session_id=session.request.session_id, mode=rung.mode,
                   resolution_px=rung.variant.resolution_px, fps=rung.variant.fps)

    def _to_still(self, session: Session, code: Code, why: str, eta_s: float | None = None) -> None:
        session.mode, session.variant, session.queued_since_s = STILL_MODE, None, None
        session.rank = _STILL_RANK
        self._emit(Action.ASSIGN, code, why, session_id=session.request.session_id,
                   mode=STILL_MODE, eta_s=eta_s)

    def _emit(self, action: Action, code: Code, reason: str, **fields) -> None:
        self._out.append(Decision(action, code, reason, at_s=self._now_s, **fields))

    def _remember(self, decisions: list[Decision]) -> None:
        history = self.state.history
        history.extend(decisions)
        while len(history) > self.policy.decision_history:
            history.popleft()


# Ranks: rungs count up from 0 (the requested mode); still and the queue sit below them.
_STILL_RANK = 10**6
_UNPLACED = 10**7
_NOW, _LATER, _NO = "now", "later", "no"
# Readings in a row without a backend's PID before it counts as lost (one may race its exit
# against a report; two at the step period are still well under a second).
_LOST_AFTER_READINGS = 2


def _variants_for(spec: BackendSpec, resolution_px: int) -> list[VariantSpec]:
    """The backend's variants no larger than asked, best first (the smallest if none)."""
    fitting = [v for v in spec.variants if v.resolution_px <= resolution_px]
    return fitting or [spec.variants[-1]]


def _rung_reason(rung: Rung, request: SessionRequest, fresh: bool) -> str:
    where = f"{rung.mode}@{rung.variant.resolution_px}px/{rung.variant.fps}fps"
    if not fresh:
        return f"upgraded to {where}: room appeared"
    if rung.code == Code.ADMITTED:
        return f"{where} is resident with a free seat"
    return f"{where} instead of {request.mode}: no room for anything better"


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 1024**3:.1f} GiB"


def _decision_json(d: Decision) -> dict:
    out = {"action": d.action.value, "code": d.code.value, "reason": d.reason, "at_s": d.at_s}
    for name in ("mode", "session_id", "resolution_px", "cap_bytes", "eta_s", "retry_after_s"):
        value = getattr(d, name)
        if value is not None:
            out[name] = value
    return out
