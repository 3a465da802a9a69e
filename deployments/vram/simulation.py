"""A simulated GPU and a trace runner, for tests and benchmarks/vram_simulation.py.

`SimulatedDevice` implements the probe interface (`read() -> DeviceReading`) over
scripted neighbours (processes that appear, grow, shrink, vanish) and our own
backends (memory appears a little after a load starts, the load reports after
its load time, memory disappears a little after an unload). A neighbour that
cannot get the memory it asks for records an out-of-memory event and keeps
asking, as an LLM server retrying requests would.

`run_trace` drives any policy with the Controller's `step` signature over a
session trace in simulated time and returns what happened, scored against the
same budget rule the real policy uses, computed from the simulator's ground truth.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable, Protocol

from .config import STILL_MODE, ControllerConfig, VariantSpec
from .data import (
    SHED_CODES,
    Action,
    Code,
    Decision,
    DeviceReading,
    LoadReport,
    ProcessReading,
    Request,
    SessionEnded,
    SessionRequest,
)
from .neighbours import NeighbourTracker

# ==================================================================== simulated device


@dataclass(frozen=True)
class NeighbourScript:
    """A neighbour's life: at `at_s`, it wants `bytes` (0 = the process exits)."""

    name: str
    steps: tuple[tuple[float, int], ...]
    ports: tuple[int, ...] = ()


@dataclass
class _Neighbour:
    script: NeighbourScript
    pid: int | None = None
    used_bytes: int = 0
    wanted_bytes: int = 0
    next_step: int = 0
    # True while its current want failed at least once (one OOM event per want).
    starved: bool = False


@dataclass
class _Ours:
    mode: str
    bytes: int
    pid: int
    alloc_at_s: float
    ready_at_s: float
    allocated: bool = False
    ready: bool = False
    failed: bool = False
    free_at_s: float | None = None


@dataclass(frozen=True)
class OomEvent:
    at_s: float
    who: str
    wanted_bytes: int
    free_bytes: int


class SimulatedDevice:
    """One GPU in simulated time. Call `advance(now_s)` before `read()`."""

    def __init__(self, total_bytes: int, neighbours: list[NeighbourScript], gpu_index: int = 0,
                 alloc_delay_s: float = 1.0, free_delay_s: float = 2.0,
                 per_process_available: bool = True, first_pid: int = 1000):
        self.total_bytes = total_bytes
        self.gpu_index = gpu_index
        self.alloc_delay_s = alloc_delay_s
        self.free_delay_s = free_delay_s
        self.per_process_available = per_process_available
        self.neighbour_ooms: list[OomEvent] = []
        self.backend_ooms: list[OomEvent] = []
        self._neighbours = [_Neighbour(s) for s in neighbours]
        self._ours: dict[str, _Ours] = {}
        self._reports: list[LoadReport] = []
        # Scripted processes get PIDs from here; real processes that attach keep
        # their own (above Linux's pid_max, 2**22, the two never collide).
        self._next_pid = first_pid
        self._now_s = 0.0

    # ------------------------------------------------------------ probe interface

    def read(self) -> DeviceReading:
        if self.per_process_available:
            return self.truth()
        used = self.used_bytes()
        return DeviceReading(self.gpu_index, self.total_bytes, used, self.total_bytes - used,
                             per_process_available=False, note="simulated container")

    def truth(self) -> DeviceReading:
        """The reading with per-process numbers, whatever the probe is allowed to see."""
        used = self.used_bytes()
        processes = [ProcessReading(n.pid, n.used_bytes, n.script.name, n.script.ports)
                     for n in self._neighbours if n.pid is not None]
        processes += [ProcessReading(o.pid, o.bytes, "ray::ServeRepli")
                      for o in self._ours.values() if o.allocated]
        return DeviceReading(self.gpu_index, self.total_bytes, used, self.total_bytes - used,
                             tuple(processes))

    # ------------------------------------------------------------ actions from decisions

    def start_load(self, mode: str, peak_bytes: int, load_time_s: float) -> None:
        if mode in self._ours:
            return
        self._ours[mode] = _Ours(mode, peak_bytes, self._pid(), self._now_s + self.alloc_delay_s,
                                 self._now_s + max(load_time_s, self.alloc_delay_s))

    def unload(self, mode: str) -> None:
        ours = self._ours.get(mode)
        if ours is not None and ours.free_at_s is None:
            ours.free_at_s = self._now_s + self.free_delay_s

    # ------------------------------------------------------------ real processes (graph tests)

    def attach(self, mode: str, pid: int, peak_bytes: int) -> bool:
        """A real process (a backend replica) allocates `peak_bytes` now, as its load
        would on a GPU. False, and a backend OOM event, when it does not fit."""
        if peak_bytes > self.free_bytes():
            self.backend_ooms.append(OomEvent(self._now_s, mode, peak_bytes, self.free_bytes()))
            return False
        self._ours[mode] = _Ours(mode, peak_bytes, pid, self._now_s, self._now_s,
                                 allocated=True, ready=True)
        return True

    def reap(self, alive) -> list[str]:
        """Free the memory of attached processes that exited (`alive(pid)` is False),
        as the driver does when a process ends; returns their modes."""
        gone = [mode for mode, o in self._ours.items() if o.allocated and not alive(o.pid)]
        for mode in gone:
            del self._ours[mode]
        return gone

    def want(self, name: str, wanted_bytes: int) -> None:
        """Change a scripted neighbour's want from now on (0: the process exits)."""
        neighbour = next(n for n in self._neighbours if n.script.name == name)
        neighbour.next_step = len(neighbour.script.steps)  # the script is overridden
        neighbour.wanted_bytes, neighbour.starved = wanted_bytes, False
        self._advance_neighbour(neighbour, self._now_s)

    def take_reports(self) -> list[LoadReport]:
        reports, self._reports = self._reports, []
        return reports

    # ------------------------------------------------------------ ground truth

    def used_bytes(self) -> int:
        return self.neighbours_used_bytes() + self.our_used_bytes()

    def neighbours_used_bytes(self) -> int:
        return sum(n.used_bytes for n in self._neighbours)

    def our_used_bytes(self) -> int:
        return sum(o.bytes for o in self._ours.values() if o.allocated)

    def our_pids(self) -> set[int]:
        return {o.pid for o in self._ours.values()}

    def ready(self, mode: str) -> bool:
        ours = self._ours.get(mode)
        return ours is not None and ours.ready and ours.free_at_s is None

    def free_bytes(self) -> int:
        return self.total_bytes - self.used_bytes()

    # ------------------------------------------------------------ time

    def advance(self, now_s: float) -> None:
        """Apply everything due by `now_s`: frees first (they make room), then our
        allocations, then neighbours (so a neighbour sees the memory our unload freed)."""
        self._now_s = now_s
        for mode, ours in list(self._ours.items()):
            if ours.free_at_s is not None and ours.free_at_s <= now_s:
                del self._ours[mode]
        for ours in self._ours.values():
            self._advance_ours(ours, now_s)
        for neighbour in self._neighbours:
            self._advance_neighbour(neighbour, now_s)

    def _advance_ours(self, ours: _Ours, now_s: float) -> None:
        if ours.failed or ours.free_at_s is not None:
            return
        if not ours.allocated and ours.alloc_at_s <= now_s:
            if ours.bytes > self.free_bytes():
                ours.failed = True
                self.backend_ooms.append(OomEvent(now_s, ours.mode, ours.bytes, self.free_bytes()))
                self._reports.append(LoadReport(ours.mode, ok=False, error="CUDA out of memory"))
                ours.free_at_s = now_s
                return
            ours.allocated = True
        if ours.allocated and not ours.ready and ours.ready_at_s <= now_s:
            ours.ready = True
            self._reports.append(LoadReport(ours.mode, ok=True, pid=ours.pid, peak_bytes=ours.bytes))

    def _advance_neighbour(self, n: _Neighbour, now_s: float) -> None:
        steps = n.script.steps
        while n.next_step < len(steps) and steps[n.next_step][0] <= now_s:
            n.wanted_bytes, n.starved = steps[n.next_step][1], False
            n.next_step += 1
        if n.wanted_bytes == n.used_bytes:
            return
        if n.wanted_bytes == 0:
            n.used_bytes, n.pid = 0, None  # the process exits
            return
        if n.pid is None:
            n.pid = self._pid()
        growth = n.wanted_bytes - n.used_bytes
        if growth <= self.free_bytes():
            n.used_bytes = n.wanted_bytes
        elif not n.starved:
            n.starved = True
            self.neighbour_ooms.append(OomEvent(now_s, n.script.name, growth, self.free_bytes()))

    def _pid(self) -> int:
        self._next_pid += 1
        return self._next_pid


# ==================================================================== trace runner


class Policy(Protocol):
    def step(self, now_s: float, reading: DeviceReading, requests: list[Request]) -> list[Decision]: ...


@dataclass(frozen=True)
class SessionScript:
    request: SessionRequest
    start_s: float
    duration_s: float


@dataclass
class _SessionLog:
    script: SessionScript
    mode: str = ""
    first_animated_s: float | None = None
    requested_s: float = 0.0
    refused: bool = False
    false_reject: bool = False
    shed: bool = False


@dataclass
class RunResult:
    """Everything a benchmark or a test wants to know about one run."""

    duration_s: float
    neighbour_ooms: list[OomEvent]
    backend_ooms: list[OomEvent]
    decisions: list[Decision]
    sessions: list[_SessionLog]
    max_overshoot_bytes: int
    max_overshoot_at_s: float
    over_budget_episodes_s: list[float]
    invariant_violations: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, float | int | None]:
        hours = self.duration_s / 3600.0
        unloads = sum(1 for d in self.decisions if d.action == Action.UNLOAD)
        animated = [s for s in self.sessions if s.script.request.mode != STILL_MODE]
        waits = [s.first_animated_s - s.script.start_s for s in animated
                 if s.first_animated_s is not None]
        asked_s = sum(s.script.duration_s for s in self.sessions)
        return {
            "neighbour_oom_events": len(self.neighbour_ooms),
            "backend_oom_events": len(self.backend_ooms),
            "max_overshoot_above_budget_gib": round(self.max_overshoot_bytes / 1024**3, 3),
            "max_overshoot_at_h": round(self.max_overshoot_at_s / 3600, 3),
            "false_rejects": sum(s.false_reject for s in self.sessions),
            "refused_sessions": sum(s.refused for s in self.sessions),
            "shed_sessions": sum(s.shed for s in self.sessions),
            "evictions_per_hour": round(unloads / hours, 2) if hours else 0.0,
            "time_to_free_p50_s": _percentile(self.over_budget_episodes_s, 50),
            "time_to_free_p99_s": _percentile(self.over_budget_episodes_s, 99),
            "session_wait_p95_s": _percentile(waits, 95),
            "sessions": len(self.sessions),
            "sessions_never_animated": sum(1 for s in animated if s.first_animated_s is None),
            # Ticks land on whole steps, so a session may collect one tick more than it lasts.
            "share_time_in_requested_mode": round(sum(
                min(s.requested_s, s.script.duration_s) for s in self.sessions) / asked_s, 4)
            if asked_s else None,
        }


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1], 2)


class _Scorer:
    """Ground-truth budget (same rule as the policy, fed by the simulator) and overshoot."""

    def __init__(self, config: ControllerConfig, device: SimulatedDevice):
        self.config, self.device = config, device
        self.tracker = NeighbourTracker(config.neighbours, config.policy)
        self.max_overshoot_bytes = 0
        self.max_overshoot_at_s = 0.0
        self.episodes_s: list[float] = []
        self._over_since_s: float | None = None

    def budget_bytes(self) -> int:
        return (self.device.total_bytes - self.tracker.total_reservation_bytes()
                - self.config.policy.floor_bytes)

    def update(self, now_s: float) -> None:
        self.tracker.observe(self.device.truth(), self.device.our_pids(),
                             self.device.our_used_bytes(), now_s)
        over = self.device.our_used_bytes() - max(self.budget_bytes(), 0)
        if over > self.max_overshoot_bytes:
            self.max_overshoot_bytes, self.max_overshoot_at_s = over, now_s
        if over > 0 and self._over_since_s is None:
            self._over_since_s = now_s
        elif over <= 0 and self._over_since_s is not None:
            self.episodes_s.append(now_s - self._over_since_s)
            self._over_since_s = None

    def close(self, now_s: float) -> None:
        if self._over_since_s is not None:
            self.episodes_s.append(now_s - self._over_since_s)


Check = Callable[[Policy, list[Decision], float], list[str]]


def run_trace(policy: Policy, device: SimulatedDevice, config: ControllerConfig,
              sessions: list[SessionScript], end_s: float, tick_s: float = 1.0,
              peak_scale: float = 1.05, check: Check | None = None) -> RunResult:
    """Replay `sessions` through `policy` on `device` until `end_s`.

    Our backends really use `peak_scale` x their config guess (a little off, so that
    measured profiles matter). `check(policy, decisions, now_s)` may return invariant
    violations found after each step (the property tests use it).
    """
    run = _Run(config, device, sessions, peak_scale)
    scorer = _Scorer(config, device)
    decisions: list[Decision] = []
    violations: list[str] = []
    n_ticks = int(round(end_s / tick_s))
    for i in range(n_ticks + 1):
        now_s = i * tick_s
        device.advance(now_s)
        step = policy.step(now_s, device.read(), run.requests(now_s))
        decisions.extend(step)
        run.apply(step)
        if check is not None:
            violations += check(policy, step, now_s)
        run.account(tick_s, now_s)
        scorer.update(now_s)
    scorer.close(n_ticks * tick_s)
    return RunResult(end_s, device.neighbour_ooms, device.backend_ooms, decisions,
                     list(run.logs.values()), scorer.max_overshoot_bytes, scorer.max_overshoot_at_s,
                     scorer.episodes_s, violations)


class _Run:
    """Feeds sessions and load reports to the policy and carries out its decisions."""

    def __init__(self, config: ControllerConfig, device: SimulatedDevice,
                 sessions: list[SessionScript], peak_scale: float):
        self.device, self.peak_scale = device, peak_scale
        self.specs = {b.mode: b for b in config.backends}
        self.logs = {s.request.session_id: _SessionLog(s) for s in sessions}
        self._arrivals = sorted(sessions, key=lambda s: s.start_s)
        self._ends = sorted(sessions, key=lambda s: s.start_s + s.duration_s)
        self._a = self._e = 0
        # Sessions between arrival and end: the only ones whose time is accounted.
        self._live: dict[str, _SessionLog] = {}

    def true_peak_bytes(self, mode: str, variant: VariantSpec) -> int:
        return int(variant.default_peak_bytes * self.peak_scale)

    def requests(self, now_s: float) -> list[Request]:
        out: list[Request] = list(self.device.take_reports())
        while self._e < len(self._ends) and _end_s(self._ends[self._e]) <= now_s:
            sid = self._ends[self._e].request.session_id
            out.append(SessionEnded(sid))
            self.logs[sid].mode = ""
            self._live.pop(sid, None)
            self._e += 1
        while self._a < len(self._arrivals) and self._arrivals[self._a].start_s <= now_s:
            script = self._arrivals[self._a]
            if _end_s(script) > now_s:
                out.append(script.request)
                self._live[script.request.session_id] = self.logs[script.request.session_id]
            self._a += 1
        return out

    def apply(self, decisions: list[Decision]) -> None:
        for d in decisions:
            if d.action == Action.LOAD:
                variant = next(v for v in self.specs[d.mode].variants
                               if v.resolution_px == d.resolution_px and v.batch == d.batch)
                self.device.start_load(d.mode, self.true_peak_bytes(d.mode, variant),
                                       self.specs[d.mode].load_time_s)
            elif d.action == Action.UNLOAD:
                self.device.unload(d.mode)
            elif d.session_id in self.logs:
                self._apply_to_session(d, self.logs[d.session_id])

    def _apply_to_session(self, d: Decision, log: _SessionLog) -> None:
        if d.action == Action.ASSIGN:
            log.mode = d.mode
            log.shed = log.shed or d.code in SHED_CODES
            if d.code == Code.STILL_NO_ROOM:
                log.false_reject = log.false_reject or self._would_have_fit(log)
        elif d.action == Action.REFUSE:
            log.mode, log.refused = "", True
            log.false_reject = log.false_reject or self._would_have_fit(log)
        elif d.action == Action.QUEUE:
            log.mode = ""

    def _would_have_fit(self, log: _SessionLog) -> bool:
        """In hindsight the requested mode could have served it: its replica had a free
        seat, and it was resident or free memory held its true peak above a floor."""
        spec = self.specs.get(log.script.request.mode)
        if spec is None:
            return False
        seated = sum(1 for other in self.logs.values() if other.mode == spec.mode)
        if seated >= spec.max_sessions:
            return False  # one replica per mode: a full replica is not a memory decision
        if self.device.ready(spec.mode):
            return True
        need = self.true_peak_bytes(spec.mode, spec.variants[0]) + _FLOOR_FOR_SCORING_BYTES
        return self.device.free_bytes() >= need

    def account(self, tick_s: float, now_s: float) -> None:
        for log in self._live.values():
            if log.mode == STILL_MODE == log.script.request.mode:
                log.requested_s += tick_s
            if not log.mode or log.mode == STILL_MODE or not self.device.ready(log.mode):
                continue  # no frames from a backend that is not really up
            if log.first_animated_s is None:
                log.first_animated_s = now_s
            if log.mode == log.script.request.mode:
                log.requested_s += tick_s


def _end_s(script: SessionScript) -> float:
    return script.start_s + script.duration_s


# A hindsight "it would have fit" must still leave this much free, as any sane policy would.
_FLOOR_FOR_SCORING_BYTES = 2 * 1024**3
