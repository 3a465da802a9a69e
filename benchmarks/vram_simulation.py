"""Replay one scripted day on a simulated 80 GB GPU through three VRAM policies.

    python benchmarks/vram_simulation.py [--tick-s 1.0] [--seed 7]

Policies, all on the same trace:
- `lockn`: the real policy (deployments.vram.policy.Controller).
- `all_resident`: load every backend at start, never unload.
- `idle_lru`: load on demand when live free memory allows, evict the least recently
  used idle backend to make room, unload after 5 idle minutes (Ollama's keep_alive).

Prints one JSON object: per policy, neighbour out-of-memory events, maximum
overshoot of our memory above the budget, false rejects, evictions per hour,
time-to-free p50/p99 (length of over-budget episodes), session wait p95 (request
to first animated frame), and the share of session time in the requested mode.
Simulated time: a day runs in seconds on one CPU core.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass, field

from deployments.vram.config import (
    GIB, ControllerConfig, NeighbourSpec, PolicyConfig, default_config,
)
from deployments.vram.data import (
    Action, Code, Decision, DeviceReading, LoadReport, Request, SessionEnded, SessionRequest,
)
from deployments.vram.policy import Controller
from deployments.vram.simulation import NeighbourScript, SessionScript, SimulatedDevice, run_trace

DAY_S = 24 * 3600.0
TOTAL_BYTES = 80 * GIB
CODER_PORT, VISION_PORT = 11439, 11441


def _h(hours: float) -> float:
    return hours * 3600.0


# ==================================================================== the day


def benchmark_config() -> ControllerConfig:
    """Shipped backends; neighbours as an operator would declare them."""
    return default_config().model_copy(update={
        "policy": PolicyConfig(growth_allowance_bytes=2 * GIB, idle_ttl_s=600.0,
                               min_residency_s=60.0),
        "neighbours": (
            # The coder LLM declares what its weights need; its KV cache grows beyond.
            NeighbourSpec(name="coder-llm", port=CODER_PORT, declared_cap_bytes=36 * GIB,
                          growth_allowance_bytes=4 * GIB),
            # The vision LLM declares nothing: it is protected by observation only.
            NeighbourSpec(name="vision-llm", port=VISION_PORT),
        ),
    })


def _growth(start_s: float, end_s: float, from_gib: float, to_gib: float, step_gib: float = 1.0
            ) -> list[tuple[float, int]]:
    """KV cache growing in `step_gib` steps, evenly spread between start and end."""
    n = max(1, round((to_gib - from_gib) / step_gib))
    return [(start_s + (end_s - start_s) * k / n, int((from_gib + (to_gib - from_gib) * k / n) * GIB))
            for k in range(n + 1)]


def neighbour_scripts() -> list[NeighbourScript]:
    coder = (_growth(_h(8), _h(11.5), 30, 46) + [(_h(11.75), 34 * GIB), (_h(12.5), 0)]
             + _growth(_h(13.5), _h(17), 30, 42) + [(_h(19), 0)]
             + _growth(_h(20), _h(22), 30, 36) + [(_h(22.5), 0)])
    vision = (_growth(_h(9), _h(11), 18, 24) + [(_h(12), 0)]
              + _growth(_h(14), _h(16), 18, 21) + [(_h(17.5), 0)])
    # Someone's notebook: undeclared, appears small and grows; no policy can foresee it.
    notebook = _growth(_h(15), _h(15.4), 1, 5) + [(_h(16), 0)]
    return [NeighbourScript("llama-server", tuple(coder), (CODER_PORT,)),
            NeighbourScript("llama-server", tuple(vision), (VISION_PORT,)),
            NeighbourScript("python", tuple(notebook))]


# (start hour, end hour, sessions per hour, mode weights ditto/liveportrait/musetalk/still)
_BURSTS = (
    (7.0, 9.0, 4, (1, 1, 1, 1)),
    (9.5, 10.5, 30, (6, 1, 1, 1)),     # a demo of the expressive mode
    (10.5, 12.0, 10, (2, 2, 2, 1)),
    (12.0, 13.0, 20, (1, 4, 1, 1)),    # lunch-time kiosk on liveportrait
    (14.0, 15.5, 24, (1, 1, 5, 1)),    # dubbing work on musetalk
    (15.5, 18.0, 12, (2, 2, 2, 1)),
    (18.0, 23.0, 3, (1, 1, 1, 1)),
)
_MODES = ("ditto", "liveportrait", "musetalk", "still")


def session_scripts(seed: int) -> list[SessionScript]:
    rng = random.Random(seed)
    scripts = []
    for start_h, end_h, per_hour, weights in _BURSTS:
        t = _h(start_h)
        while True:
            t += rng.expovariate(per_hour / 3600.0)
            if t >= _h(end_h):
                break
            mode = rng.choices(_MODES, weights)[0]
            request = SessionRequest(
                f"s{len(scripts)}", mode, priority=rng.choice((0, 0, 1, 2)),
                allow_still=rng.random() > 0.1, max_wait_s=60.0)
            scripts.append(SessionScript(request, t, rng.uniform(120.0, 900.0)))
    return scripts


# ==================================================================== baselines


@dataclass
class _Loaded:
    bytes: int
    ready: bool = False
    since_s: float = 0.0
    last_used_s: float = 0.0


@dataclass
class _Baseline:
    """Bookkeeping both baselines share: sessions wait in still for their own mode."""

    config: ControllerConfig
    loaded: dict[str, _Loaded] = field(default_factory=dict)
    # session id -> mode it renders with now ("still" while waiting)
    sessions: dict[str, str] = field(default_factory=dict)
    requested: dict[str, str] = field(default_factory=dict)
    out: list[Decision] = field(default_factory=list)

    def _guess_bytes(self, mode: str) -> int:
        return self.config.backend(mode).variants[0].default_peak_bytes

    def _emit(self, action: Action, code: Code, reason: str, now_s: float, **kw) -> None:
        self.out.append(Decision(action, code, reason, at_s=now_s, **kw))

    def _load(self, mode: str, now_s: float, why: str) -> None:
        self.loaded[mode] = _Loaded(self._guess_bytes(mode), since_s=now_s, last_used_s=now_s)
        v = self.config.backend(mode).variants[0]
        self._emit(Action.LOAD, Code.LOAD_ADMITTED, why, now_s, mode=mode,
                   resolution_px=v.resolution_px, batch=v.batch)

    def _unload(self, mode: str, now_s: float, code: Code, why: str) -> None:
        del self.loaded[mode]
        self._emit(Action.UNLOAD, code, why, now_s, mode=mode)

    def _common(self, now_s: float, requests: list[Request]) -> None:
        """Reports, ends and new sessions; waiting sessions take free seats."""
        new = []
        for r in requests:
            if isinstance(r, LoadReport) and r.mode in self.loaded:
                if r.ok:
                    self.loaded[r.mode].ready = True
                else:
                    self._unload(r.mode, now_s, Code.LOAD_FAILED, r.error)
            elif isinstance(r, SessionEnded):
                mode = self.sessions.pop(r.session_id, None)
                self.requested.pop(r.session_id, None)
                if mode in self.loaded:
                    self.loaded[mode].last_used_s = now_s
            elif isinstance(r, SessionRequest):
                self.requested[r.session_id] = r.mode
                new.append(r.session_id)
        for sid in new:
            self._place(sid, now_s)
        self._promote_waiting(now_s)
        for mode in self.sessions.values():
            if mode in self.loaded:
                self.loaded[mode].last_used_s = now_s

    def _has_seat(self, mode: str) -> bool:
        """The same one-replica-per-mode seat limit as the real policy, for fairness."""
        seated = sum(1 for m in self.sessions.values() if m == mode)
        return seated < self.config.backend(mode).max_sessions

    def _ready(self, mode: str) -> bool:
        return mode in self.loaded and self.loaded[mode].ready

    def _assign(self, sid: str, mode: str, now_s: float, code: Code, why: str) -> None:
        self.sessions[sid] = mode
        self._emit(Action.ASSIGN, code, why, now_s, session_id=sid, mode=mode)

    def _place(self, sid: str, now_s: float) -> None:
        mode = self.requested[sid]
        if mode == "still" or (self._ready(mode) and self._has_seat(mode)):
            self._assign(sid, mode, now_s, Code.ADMITTED, "resident")
        else:
            self._assign(sid, "still", now_s, Code.WAIT_FOR_LOAD, "backend not ready or full")

    def _promote_waiting(self, now_s: float) -> None:
        for sid, mode in list(self.sessions.items()):
            wanted = self.requested[sid]
            if mode == "still" != wanted and self._ready(wanted) and self._has_seat(wanted):
                self._assign(sid, wanted, now_s, Code.BACKEND_READY, "backend ready with a seat")


class AllResident(_Baseline):
    """Load everything at start and keep it; retry a failed load every minute."""

    def step(self, now_s: float, reading: DeviceReading, requests: list[Request]) -> list[Decision]:
        self.out = []
        self._common(now_s, requests)
        if int(now_s) % 60 == 0:
            for spec in self.config.backends:
                if spec.mode not in self.loaded:
                    self._load(spec.mode, now_s, "everything resident")
        return self.out


class IdleLru(_Baseline):
    """Ollama-like: load on demand when free memory allows (evicting idle backends,
    least recently used first), unload after `keep_alive_s` without sessions."""

    keep_alive_s: float = 300.0

    def step(self, now_s: float, reading: DeviceReading, requests: list[Request]) -> list[Decision]:
        self.out = []
        self._common(now_s, requests)
        self._expire(now_s)
        self._load_for_waiting(now_s, reading)
        return self.out

    def _busy(self, mode: str) -> bool:
        return mode in self.sessions.values()

    def _expire(self, now_s: float) -> None:
        for mode, entry in list(self.loaded.items()):
            if entry.ready and not self._busy(mode) and now_s - entry.last_used_s >= self.keep_alive_s:
                self._unload(mode, now_s, Code.EVICT_IDLE_TTL, "keep_alive expired")

    def _load_for_waiting(self, now_s: float, reading: DeviceReading) -> None:
        if any(not e.ready for e in self.loaded.values()):
            return  # one load at a time, as Ollama does
        waiting = [self.requested[sid] for sid, mode in self.sessions.items()
                   if mode == "still" and self.requested[sid] != "still"]
        for mode in dict.fromkeys(waiting):
            if mode in self.loaded:
                continue
            need = self._guess_bytes(mode)
            if reading.free_bytes >= need:
                self._load(mode, now_s, "on demand; free memory allows")
                return
            idle = sorted((m for m, e in self.loaded.items() if e.ready and not self._busy(m)),
                          key=lambda m: self.loaded[m].last_used_s)
            freed = 0
            for victim in idle:
                if reading.free_bytes + freed >= need:
                    break
                freed += self.loaded[victim].bytes
                self._unload(victim, now_s, Code.EVICT_FOR_ROOM, f"LRU, to load {mode}")
            return


# ==================================================================== run


def run_policy(name: str, seed: int, tick_s: float) -> dict:
    config = benchmark_config()
    policy = {"lockn": lambda: Controller(config), "all_resident": lambda: AllResident(config),
              "idle_lru": lambda: IdleLru(config)}[name]()
    device = SimulatedDevice(TOTAL_BYTES, neighbour_scripts())
    started = time.perf_counter()
    result = run_trace(policy, device, config, session_scripts(seed), DAY_S, tick_s=tick_s)
    summary = result.summary()
    summary["wall_s"] = round(time.perf_counter() - started, 2)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tick-s", type=float, default=1.0, help="simulated seconds per step")
    parser.add_argument("--seed", type=int, default=7, help="session trace seed")
    args = parser.parse_args()
    report = {
        "scenario": {"gpu_total_gib": TOTAL_BYTES / GIB, "simulated_hours": DAY_S / 3600,
                     "tick_s": args.tick_s, "seed": args.seed,
                     "sessions": len(session_scripts(args.seed)),
                     "neighbours": ["coder-llm 30->46 GiB (cap 36)", "vision-llm 18->24 GiB (no cap)",
                                    "undeclared notebook 1->5 GiB"]},
        "policies": {name: run_policy(name, args.seed, args.tick_s)
                     for name in ("lockn", "all_resident", "idle_lru")},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
