"""The VRAM controller's metrics: the counts GET /v1/gpu shows (plain), and the same
as Prometheus metrics through ray.serve.metrics (the deployment's sink)."""
from __future__ import annotations

from typing import Protocol

from .config import STILL_MODE
from .data import Action, Code, Decision

_TIME_TO_FREE_BOUNDARIES_S = [0.25, 0.5, 1, 2, 4, 8, 16, 32, 64]
_TIMES_TO_FREE_KEPT = 50


def decision_kind(d: Decision) -> str | None:
    """Which operator counter a decision adds to: admissions, denials, evictions, or none."""
    if d.action == Action.LOAD or (d.action == Action.ASSIGN and d.mode != STILL_MODE):
        return "admissions"
    if d.action in (Action.REFUSE, Action.QUEUE) or d.code == Code.STILL_NO_ROOM:
        return "denials"
    if d.action == Action.UNLOAD:
        return "evictions"
    return None


class MetricsSink(Protocol):
    """Where the service sends every decision and the policy's gauges after each step."""

    def count(self, d: Decision) -> None: ...

    def gauge(self, values: dict[str, float]) -> None: ...


class NoMetrics:
    """A sink that drops everything: unit tests, or no metrics system."""

    def count(self, d: Decision) -> None:
        pass

    def gauge(self, values: dict[str, float]) -> None:
        pass


class DecisionCounts:
    """The counts and recent unload-to-free times GET /v1/gpu shows."""

    def __init__(self):
        self.counts = {"admissions": 0, "denials": 0, "evictions": 0}
        self.times_to_free_s: list[float] = []

    def count(self, d: Decision) -> None:
        kind = decision_kind(d)
        if kind is not None:
            self.counts[kind] += 1
        if "time_to_free_s" in d.extra:
            kept = self.times_to_free_s + [round(d.extra["time_to_free_s"], 3)]
            self.times_to_free_s = kept[-_TIMES_TO_FREE_KEPT:]


class PrometheusMetrics:
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

    def gauge(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            if name.startswith("backend_bytes:"):
                self.backend_bytes.set(value, tags={"backend": name.split(":", 1)[1]})
            elif name in self.gauges:
                self.gauges[name].set(value)

    def count(self, d: Decision) -> None:
        self.decisions.inc(tags={"action": d.action.value, "code": d.code.value})
        kind = decision_kind(d)
        if kind == "admissions":
            self.admissions.inc(tags={"kind": "load" if d.action == Action.LOAD else "session"})
        elif kind == "denials":
            self.denials.inc(tags={"code": d.code.value})
        elif kind == "evictions":
            self.evictions.inc(tags={"backend": d.mode or "", "code": d.code.value})
        if "time_to_free_s" in d.extra:
            self.time_to_free.observe(d.extra["time_to_free_s"])
