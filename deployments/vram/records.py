"""What the VRAM controller answers its callers, as typed records.

Frozen dataclasses of numbers, strings and `Decision`s: they pickle across Ray
handles (SessionHost, backend replicas) and callers read fields, not dict keys.
Where a client sees one (a session's `placement`, GET /v1/gpu's decisions), its
`to_json()` / `decision_json` is the shape docs/api.md and docs/vram.md describe.
"""
from __future__ import annotations

from dataclasses import dataclass

from .data import Action, Code, Decision

# Placement answers: the policy's latest word on a session.
PLACEMENT_ACTIONS = (Action.ASSIGN, Action.QUEUE, Action.REFUSE)
_DECISION_FIELDS = ("mode", "session_id", "resolution_px", "fps", "cap_bytes", "eta_s", "retry_after_s")
DEFAULT_RETRY_S = 30.0  # a refusal's Retry-After when the policy gave neither retry_after_s nor eta_s


def decision_json(d: Decision) -> dict:
    """A decision as clients see it: unset fields left out, times rounded to the millisecond."""
    out = {"action": d.action.value, "code": d.code.value, "reason": d.reason, "at_s": round(d.at_s, 3)}
    for name in _DECISION_FIELDS:
        value = getattr(d, name)
        if value is not None:
            out[name] = value
    if d.extra:
        out["extra"] = dict(d.extra)
    return out


@dataclass(frozen=True)
class Target:
    """Where the policy is taking a session that waits (in still mode) for a load."""

    mode: str
    resolution_px: int
    fps: int
    code: Code

    def to_json(self) -> dict:
        return {"mode": self.mode, "resolution_px": self.resolution_px, "fps": self.fps,
                "code": self.code.value}


@dataclass(frozen=True)
class Placement:
    """The controller's answer to a new session: assign, queue or refuse."""

    decision: Decision  # the latest assign / queue / refuse for the session
    queued: Decision | None = None  # the queue decision it waited on, if it was queued first
    target: Target | None = None

    @property
    def action(self) -> Action:
        return self.decision.action

    @property
    def code(self) -> Code:
        return self.decision.code

    @property
    def reason(self) -> str:
        return self.decision.reason

    def retry_after_s(self) -> float:
        """When a refused (or still queued) session should try again."""
        d = self.decision
        return d.retry_after_s or d.eta_s or DEFAULT_RETRY_S

    def to_json(self) -> dict:
        """The session's `placement` field (201 response, `session_ready` event)."""
        out = decision_json(self.decision)
        if self.queued is not None:
            out["queued"] = decision_json(self.queued)
        if self.target is not None:
            out["target"] = self.target.to_json()
        return out


@dataclass(frozen=True)
class Lease:
    """A starting backend replica's load lease."""

    granted: bool
    reason: str = ""  # why not, when not granted
    cap_bytes: int = 0  # the most the replica may allocate
    total_bytes: int = 0  # the device's memory (0: no reading yet)
    resolution_px: int | None = None
    batch: int | None = None
    # The simulated device: bytes allocated for the replica's PID at the grant (its "weights").
    simulated_bytes: int | None = None

    def memory_fraction(self) -> float | None:
        """The share of the device to cap torch at; None where there is nothing to cap
        (the simulated device, or no reading of the device's size)."""
        if self.simulated_bytes is not None or not self.total_bytes:
            return None
        return min(1.0, self.cap_bytes / self.total_bytes)


@dataclass(frozen=True)
class Readiness:
    """`wait_session`'s answer: whether the session is on a resident backend, and which."""

    ok: bool  # on a resident backend before the timeout
    mode: str | None  # its mode at the controller; None: the controller does not know it
    target: str | None = None  # the mode a still session waits for, if any
