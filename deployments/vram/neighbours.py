"""Who else is on the GPU, and how much memory we hold back for each of them.

A neighbour's reservation is the larger of its declared cap and its observed
high-water mark plus a growth allowance (an LLM's KV cache grows with context).

Which high-water mark: a settled neighbour (present for `neighbour_settle_s`) is
reserved at the peak of its current run; its growth from there is covered by the
allowance and by our reaction time (an unload takes seconds; KV caches grow over
minutes). A neighbour that is absent (an LLM server unloaded at lunch) or still
loading is reserved at the largest size it ever reached while loading, so that
its return finds room; its later KV growth is again a matter of reaction.
Holding its all-time peak instead would idle that memory all day for a peak the
next run may never reach. Undeclared processes are tracked per PID and
forgotten when they exit; without per-process numbers, everything not ours is
one "unattributed" neighbour that keeps its all-time peak.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .config import NeighbourSpec, PolicyConfig
from .data import DeviceReading, ProcessReading

UNATTRIBUTED = "unattributed"


@dataclass
class NeighbourState:
    name: str
    declared: bool
    declared_cap_bytes: int
    growth_allowance_bytes: int
    settle_s: float
    used_bytes: int = 0
    # All-time peak (reported), peak since it last appeared, and the largest size it
    # reached while loading (the first `settle_s` of any run).
    high_water_bytes: int = 0
    lifetime_high_water_bytes: int = 0
    load_high_water_bytes: int = 0
    present_since_s: float | None = None
    pids: tuple[int, ...] = ()
    now_s: float = 0.0

    def reservation_bytes(self) -> int:
        if self.present_since_s is None:
            peak = self.load_high_water_bytes  # absent: room for its return
        elif self._settled():
            peak = self.lifetime_high_water_bytes
        else:
            peak = max(self.lifetime_high_water_bytes, self.load_high_water_bytes)
        observed = peak + self.growth_allowance_bytes if peak else 0
        return max(self.declared_cap_bytes, observed)

    def see(self, used_bytes: int, pids: tuple[int, ...], now_s: float) -> None:
        present = used_bytes > 0
        if present and self.present_since_s is None:
            self.present_since_s, self.lifetime_high_water_bytes = now_s, 0
        elif not present:
            self.present_since_s = None
        self.used_bytes, self.pids, self.now_s = used_bytes, pids, now_s
        self.high_water_bytes = max(self.high_water_bytes, used_bytes)
        self.lifetime_high_water_bytes = max(self.lifetime_high_water_bytes, used_bytes)
        if present and not self._settled():
            self.load_high_water_bytes = max(self.load_high_water_bytes, used_bytes)

    def _settled(self) -> bool:
        return (self.present_since_s is not None
                and self.now_s - self.present_since_s >= self.settle_s)


def matches(spec: NeighbourSpec, process: ProcessReading) -> bool:
    if spec.pid is not None and spec.pid == process.pid:
        return True
    if spec.process_name is not None and process.name == spec.process_name:
        return True
    return spec.port is not None and spec.port in process.listening_ports


@dataclass
class NeighbourTracker:
    """Folds readings into per-neighbour high-water marks."""

    specs: tuple[NeighbourSpec, ...]
    policy: PolicyConfig
    states: dict[str, NeighbourState] = field(default_factory=dict)
    # True while readings lack per-process numbers (see _observe_aggregate).
    aggregate: bool = False
    _now_s: float = 0.0

    def __post_init__(self) -> None:
        for spec in self.specs:
            self.states[spec.name] = self._new_state(spec.name, True, spec.declared_cap_bytes,
                                                     spec.growth_allowance_bytes)

    def _new_state(self, name: str, declared: bool, cap_bytes: int,
                   allowance_bytes: int | None) -> NeighbourState:
        allowance = self.policy.growth_allowance_bytes if allowance_bytes is None else allowance_bytes
        return NeighbourState(name, declared, cap_bytes, allowance, self.policy.neighbour_settle_s)

    def observe(self, reading: DeviceReading, own_pids: set[int], own_bytes: int,
                now_s: float) -> None:
        """Update from one reading. `own_pids`/`own_bytes` are our backends, excluded."""
        self.aggregate = not reading.per_process_available
        self._now_s = now_s
        if not self.aggregate:
            self._observe_per_process(reading, own_pids)
        else:
            self._observe_aggregate(reading, own_bytes)

    def _observe_per_process(self, reading: DeviceReading, own_pids: set[int]) -> None:
        by_name: dict[str, list[ProcessReading]] = {s.name: [] for s in self.specs}
        undeclared: list[ProcessReading] = []
        for process in reading.processes:
            if process.pid in own_pids:
                continue
            spec = next((s for s in self.specs if matches(s, process)), None)
            (by_name[spec.name] if spec else undeclared).append(process)
        for name, processes in by_name.items():
            used = sum(p.used_bytes or 0 for p in processes)
            self.states[name].see(used, tuple(p.pid for p in processes), self._now_s)
        self._track_undeclared(undeclared)

    def _track_undeclared(self, processes: list[ProcessReading]) -> None:
        alive = set()
        for process in processes:
            key = f"pid:{process.pid}" + (f" ({process.name})" if process.name else "")
            alive.add(key)
            if key not in self.states:
                self.states[key] = self._new_state(key, False, 0, None)
            self.states[key].see(process.used_bytes or 0, (process.pid,), self._now_s)
        # An undeclared process that exited freed its memory; its PID will not return.
        for key in [k for k, s in self.states.items()
                    if not s.declared and k != UNATTRIBUTED and k not in alive]:
            del self.states[key]

    def _observe_aggregate(self, reading: DeviceReading, own_bytes: int) -> None:
        """No per-process numbers: whatever is used and is not ours is a neighbour's."""
        if UNATTRIBUTED not in self.states:
            state = self._new_state(UNATTRIBUTED, False, 0, None)
            state.settle_s = float("inf")  # no lifetimes to tell apart: keep the all-time peak
            self.states[UNATTRIBUTED] = state
        self.states[UNATTRIBUTED].see(max(0, reading.used_bytes - own_bytes), (), self._now_s)

    def forget_pid(self, pid: int) -> None:
        """A PID we first took for a neighbour turned out to be one of our backends."""
        for key in [k for k, s in self.states.items() if not s.declared and s.pids == (pid,)]:
            del self.states[key]

    def total_reservation_bytes(self) -> int:
        if not self.aggregate:
            return sum(s.reservation_bytes() for s in self.states.values())
        # The unattributed total already contains the declared neighbours' usage:
        # adding their caps on top would count them twice.
        caps = sum(s.declared_cap_bytes for s in self.states.values() if s.declared)
        return max(caps, self.states[UNATTRIBUTED].reservation_bytes())

    def total_used_bytes(self) -> int:
        return sum(s.used_bytes for s in self.states.values())
