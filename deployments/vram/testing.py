"""Test helpers for the VRAM policy: a hand-driven GPU. Set neighbours and our
backends' memory, step the controller, read its decisions. No Ray, no clock."""
from __future__ import annotations

from dataclasses import dataclass, field

from deployments.vram.config import (
    GIB,
    BackendSpec,
    ControllerConfig,
    NeighbourSpec,
    PolicyConfig,
    VariantSpec,
)
from deployments.vram.data import (
    Action,
    Code,
    Decision,
    DeviceReading,
    LoadReport,
    ProcessReading,
)
from deployments.vram.policy import Controller

LLM_PORT = 11439


def small_config(**policy: float) -> ControllerConfig:
    """A 24 GiB GPU's worth: a big backend with a lower variant, a small one."""
    knobs = dict(floor_bytes=1 * GIB, load_margin_bytes=0, growth_allowance_bytes=2 * GIB,
                 min_residency_s=10.0, idle_ttl_s=100.0, reuse_horizon_s=100.0)
    knobs.update(policy)
    return ControllerConfig(
        policy=PolicyConfig(**knobs),
        neighbours=(NeighbourSpec(name="llm", port=LLM_PORT),),
        backends=(
            BackendSpec(mode="big", load_time_s=10.0, max_sessions=2, substitutes=("small",),
                        variants=(VariantSpec(resolution_px=512, default_peak_bytes=6 * GIB),
                                  VariantSpec(resolution_px=256, default_peak_bytes=3 * GIB))),
            BackendSpec(mode="small", load_time_s=5.0, max_sessions=2,
                        variants=(VariantSpec(resolution_px=512, default_peak_bytes=2 * GIB),)),
        ),
    )


@dataclass
class Rig:
    config: ControllerConfig
    total_bytes: int = 24 * GIB
    llm_bytes: int = 0
    per_process: bool = True
    # mode -> (pid, bytes) of our backends that hold memory
    ours: dict[str, tuple[int, int]] = field(default_factory=dict)
    others: list[ProcessReading] = field(default_factory=list)
    controller: Controller | None = None  # a fresh one unless given
    now_s: float = 0.0

    def __post_init__(self) -> None:
        if self.controller is None:
            self.controller = Controller(self.config)

    def reading(self) -> DeviceReading:
        procs = [ProcessReading(pid, used, "ray::ServeRepli") for pid, used in self.ours.values()]
        if self.llm_bytes:
            procs.append(ProcessReading(500, self.llm_bytes, "llama-server", (LLM_PORT,)))
        procs += self.others
        used = sum(p.used_bytes or 0 for p in procs)
        if not self.per_process:
            return DeviceReading(0, self.total_bytes, used, self.total_bytes - used,
                                 per_process_available=False, note="test container")
        return DeviceReading(0, self.total_bytes, used, self.total_bytes - used, tuple(procs))

    def step(self, at_s: float, *requests) -> list[Decision]:
        self.now_s = at_s
        return self.controller.step(at_s, self.reading(), list(requests))

    def finish_load(self, at_s: float, mode: str, peak_bytes: int, pid: int) -> list[Decision]:
        self.ours[mode] = (pid, peak_bytes)
        return self.step(at_s, LoadReport(mode, ok=True, pid=pid, peak_bytes=peak_bytes))

    def free_unloaded(self, decisions: list[Decision]) -> None:
        """Our backends exit as the unloads say (the probe sees it at the next step)."""
        for d in decisions:
            if d.action == Action.UNLOAD:
                self.ours.pop(d.mode, None)


def find(decisions: list[Decision], action: Action, code: Code | None = None,
         session_id: str | None = None) -> list[Decision]:
    return [d for d in decisions if d.action == action and (code is None or d.code == code)
            and (session_id is None or d.session_id == session_id)]
