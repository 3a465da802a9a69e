"""Plain data passed in and out of the policy: readings, requests, decisions.

Everything here is a frozen dataclass of numbers and strings, so it pickles across
Ray handles and prints well in GET /v1/gpu.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

# ---------------------------------------------------------------- readings (probe -> policy)


@dataclass(frozen=True)
class ProcessReading:
    """One process holding memory on the GPU."""

    pid: int
    # None where the driver does not say (containers, WDDM).
    used_bytes: int | None
    # /proc/<pid>/comm; "" where the PID is not visible from here.
    name: str = ""
    listening_ports: tuple[int, ...] = ()


@dataclass(frozen=True)
class DeviceReading:
    """What a probe saw on one GPU at one moment."""

    gpu_index: int
    total_bytes: int
    used_bytes: int
    free_bytes: int
    processes: tuple[ProcessReading, ...] = ()
    # False when per-process numbers cannot be trusted (missing, or PIDs from
    # another PID namespace): the policy then attributes the device's used memory,
    # less our own known allocations, to one "unattributed" neighbour.
    per_process_available: bool = True
    note: str = ""


# ---------------------------------------------------------------- requests (graph -> policy)


@dataclass(frozen=True)
class SessionRequest:
    """A new session asks for a mode. The `allow_*` flags bound the degrade ladder."""

    session_id: str
    mode: str
    resolution_px: int = 512
    # Higher survives longer when sessions must be shed.
    priority: int = 0
    allow_substitute: bool = True
    allow_lower_quality: bool = True
    allow_still: bool = True
    # How long it may wait in the queue when nothing else is acceptable.
    max_wait_s: float = 30.0


@dataclass(frozen=True)
class SessionEnded:
    session_id: str


@dataclass(frozen=True)
class LoadReport:
    """A backend finished (or failed) loading; `peak_bytes` is what it measured:
    CUDA context + torch max_memory_reserved + non-torch memory NVML saw for its PID."""

    mode: str
    ok: bool
    pid: int | None = None
    peak_bytes: int | None = None
    error: str = ""


@dataclass(frozen=True)
class PeakReport:
    """A resident backend saw a new live peak (e.g. a bigger batch)."""

    mode: str
    peak_bytes: int


Request = SessionRequest | SessionEnded | LoadReport | PeakReport


# ---------------------------------------------------------------- decisions (policy -> graph)


class Action(StrEnum):
    LOAD = "load"            # scale the backend to one replica; cap its memory at cap_bytes
    UNLOAD = "unload"        # scale the backend to zero
    ASSIGN = "assign"        # the session renders with `mode` from now on (may be still)
    QUEUE = "queue"          # the session waits; eta_s says for how long, roughly
    REFUSE = "refuse"        # 503 with Retry-After: retry_after_s
    NOTE = "note"            # nothing to do; an operator should know


class Code(StrEnum):
    """Machine-readable reason of a decision; `Decision.reason` is the prose."""

    ADMITTED = "admitted"                      # requested mode, resident now
    WAIT_FOR_LOAD = "wait_for_load"            # still until its backend is up
    BACKEND_READY = "backend_ready"            # switch from still to the backend
    UPGRADED = "upgraded"                      # moved up the ladder when room appeared
    SUBSTITUTE_MODE = "substitute_mode"        # another mode than asked
    LOWER_QUALITY = "lower_quality"            # lower resolution / fps
    STILL_NO_ROOM = "still_no_room"
    QUEUED = "queued"
    REFUSED_NO_ROOM = "refused_no_room"
    REFUSED_QUEUE_TIMEOUT = "refused_queue_timeout"
    UNKNOWN_MODE = "unknown_mode"
    LOAD_ADMITTED = "load_admitted"
    LOAD_FAILED = "load_failed"
    LOAD_TIMEOUT = "load_timeout"
    EVICT_FOR_ROOM = "evict_for_room"          # idle backend, to let another load
    EVICT_IDLE_TTL = "evict_idle_ttl"
    EVICT_OVER_BUDGET = "evict_over_budget"    # a neighbour's reservation grew
    EVICT_EMERGENCY = "evict_emergency"        # free memory below the floor
    SHED_OVER_BUDGET = "shed_over_budget"
    SHED_EMERGENCY = "shed_emergency"
    UNLOAD_CONFIRMED = "unload_confirmed"
    UNLOAD_ASSUMED = "unload_assumed"          # no per-process numbers; timed out
    BACKEND_LOST = "backend_lost"              # its process left the GPU without an unload (crashed)
    EMERGENCY_ENTER = "emergency_enter"
    EMERGENCY_EXIT = "emergency_exit"
    NO_PER_PROCESS_NUMBERS = "no_per_process_numbers"
    PROFILE_UPDATED = "profile_updated"


# Codes that move a session off a backend against its will; eviction after them is allowed.
SHED_CODES = frozenset({Code.SHED_OVER_BUDGET, Code.SHED_EMERGENCY, Code.BACKEND_LOST})


@dataclass(frozen=True)
class Decision:
    action: Action
    code: Code
    reason: str
    mode: str | None = None
    session_id: str | None = None
    resolution_px: int | None = None
    fps: int | None = None
    batch: int | None = None
    # LOAD: the memory cap the backend must set on itself.
    cap_bytes: int | None = None
    eta_s: float | None = None
    retry_after_s: float | None = None
    at_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
