"""Typed configuration of the VRAM controller: neighbours, backends, policy knobs.

All memory is in bytes and all durations in seconds; the names say so.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

GIB = 1024**3
MIB = 1024**2

# The mode a session falls back to when no GPU backend can serve it: the portrait,
# unanimated, audio passed through. It needs no memory and is always available.
STILL_MODE = "still"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NeighbourSpec(_Frozen):
    """A process we share the GPU with and must never push out of memory.

    It is recognised by any of: its PID, its process name (as in /proc/<pid>/comm),
    or a TCP port it listens on (e.g. an LLM server on 11439).
    """

    name: str
    pid: int | None = None
    process_name: str | None = None
    port: int | None = None
    # Memory to hold for it even when it is smaller or not running yet.
    declared_cap_bytes: int = Field(default=0, ge=0)
    # Extra room above its high-water mark for KV-cache growth; None = policy default.
    growth_allowance_bytes: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _has_a_way_to_match(self) -> "NeighbourSpec":
        if self.pid is None and self.process_name is None and self.port is None:
            raise ValueError(f"neighbour {self.name!r} needs a pid, process_name or port")
        return self


class VariantSpec(_Frozen):
    """One way to run a backend: output resolution, frame rate and render batch.

    `default_peak_bytes` is only the first guess; measured profiles replace it.
    """

    resolution_px: int = Field(gt=0)
    fps: int = Field(default=25, gt=0)
    batch: int = Field(default=8, gt=0)
    default_peak_bytes: int = Field(gt=0)


class BackendSpec(_Frozen):
    """A GPU backend (one Serve deployment) and how sessions may fall back from it."""

    mode: str
    load_time_s: float = Field(gt=0)
    # Best first; later entries are the "lower resolution / fps" rung of the ladder.
    variants: tuple[VariantSpec, ...] = Field(min_length=1)
    # Modes a session for this mode may be moved to, best first.
    substitutes: tuple[str, ...] = ()
    # Concurrent sessions one resident replica renders in real time.
    max_sessions: int = Field(default=4, gt=0)


class PolicyConfig(_Frozen):
    """Knobs of the policy. Defaults suit an 80 GB GPU shared with LLMs."""

    gpu_index: int = 0
    # Free memory never planned away: CUDA allocator slack, display, stray tools.
    floor_bytes: int = Field(default=2 * GIB, ge=0)
    # Extra room a load must leave on top of its profile.
    load_margin_bytes: int = Field(default=512 * MIB, ge=0)
    # Default KV-cache growth room for neighbours that do not declare their own.
    growth_allowance_bytes: int = Field(default=4 * GIB, ge=0)
    # A neighbour that (re)appeared is loading for this long: until then it is
    # reserved at its all-time peak, afterwards at the peak of its current run.
    neighbour_settle_s: float = Field(default=120.0, ge=0)
    # Against thrashing: a backend is not evicted to make room before this age...
    min_residency_s: float = Field(default=60.0, ge=0)
    # ...and an idle backend is unloaded after this long without sessions.
    idle_ttl_s: float = Field(default=600.0, ge=0)
    # Window over which the chance that a mode is used again is estimated.
    reuse_horizon_s: float = Field(default=600.0, gt=0)
    # A load that does not report back in time is treated as failed.
    load_timeout_s: float = Field(default=120.0, gt=0)
    # Without per-process numbers an unload is confirmed by the device total,
    # or assumed after this long (and the decision says it was assumed).
    unload_confirm_timeout_s: float = Field(default=30.0, gt=0)
    # Retry-After sent with a 503 when no ETA can be given.
    retry_after_s: float = Field(default=30.0, gt=0)
    # How many recent decisions the state keeps for GET /v1/gpu.
    decision_history: int = Field(default=200, gt=0)


class ControllerConfig(_Frozen):
    """Everything the controller needs; what the graph engineer builds from YAML."""

    policy: PolicyConfig = PolicyConfig()
    neighbours: tuple[NeighbourSpec, ...] = ()
    backends: tuple[BackendSpec, ...] = Field(min_length=1)
    # Where measured profiles persist between runs; None keeps them in memory only.
    profile_path: Path | None = None

    @model_validator(mode="after")
    def _modes_are_consistent(self) -> "ControllerConfig":
        modes = [b.mode for b in self.backends]
        if len(set(modes)) != len(modes):
            raise ValueError(f"duplicate backend modes in {modes}")
        if STILL_MODE in modes:
            raise ValueError(f"{STILL_MODE!r} needs no backend and must not be declared")
        for backend in self.backends:
            unknown = set(backend.substitutes) - set(modes)
            if unknown:
                raise ValueError(f"{backend.mode} substitutes unknown modes {sorted(unknown)}")
        return self

    def backend(self, mode: str) -> BackendSpec:
        for spec in self.backends:
            if spec.mode == mode:
                return spec
        raise KeyError(mode)


def default_config() -> ControllerConfig:
    """The shipped defaults: the four backends at fp16 next to two local LLMs.

    Peaks are first guesses from DESIGN; measured profiles override them.
    """
    return ControllerConfig(
        neighbours=(
            NeighbourSpec(name="coder-llm", port=11439),
            NeighbourSpec(name="vision-llm", port=11441),
        ),
        backends=(
            BackendSpec(
                # LivePortrait's and MuseTalk's networks in one process: their peaks added
                # (a first guess until measured), falling back to either one alone.
                mode="photoreal",
                load_time_s=20.0,
                variants=(
                    VariantSpec(resolution_px=512, default_peak_bytes=7 * GIB),
                    VariantSpec(resolution_px=512, fps=20, default_peak_bytes=6 * GIB),
                ),
                substitutes=("liveportrait", "musetalk"),
            ),
            BackendSpec(
                mode="ditto",
                load_time_s=20.0,
                variants=(
                    VariantSpec(resolution_px=512, default_peak_bytes=5 * GIB + 512 * MIB),
                    VariantSpec(resolution_px=256, fps=20, default_peak_bytes=3 * GIB + 512 * MIB),
                ),
                substitutes=("liveportrait", "musetalk"),
            ),
            BackendSpec(
                mode="liveportrait",
                load_time_s=8.0,
                variants=(
                    VariantSpec(resolution_px=512, default_peak_bytes=3 * GIB),
                    VariantSpec(resolution_px=256, fps=20, default_peak_bytes=2 * GIB + 256 * MIB),
                ),
                substitutes=("musetalk",),
            ),
            BackendSpec(
                mode="musetalk",
                load_time_s=12.0,
                variants=(
                    VariantSpec(resolution_px=256, batch=16, default_peak_bytes=4 * GIB),
                    VariantSpec(resolution_px=256, fps=20, batch=8, default_peak_bytes=3 * GIB),
                ),
                substitutes=("liveportrait",),
            ),
        ),
    )
