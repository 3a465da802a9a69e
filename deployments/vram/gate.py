"""The SessionHost's side of the VRAM controller: placement on create, SessionEnded on close."""
from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from ..api.errors import ServiceError
from ..config import AppArgs
from ..ray_private import call
from ..rendering.gated import GatedBackend
from ..rendering.remote import RemoteBackend
from .data import Action, Code, Decision, SessionRequest
from .records import Placement
from .setup import controlled_modes

log = logging.getLogger("ray.serve")


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
        """The placement as the session's `placement` field shows it, or ServiceError 503
        with Retry-After and the policy's reason."""
        request = SessionRequest(session_id, mode, resolution_px=resolution_px, allow_still=allow_still,
                                 max_wait_s=max_wait_s)
        self.placed.add(session_id)
        try:
            placement: Placement = await call(self.handle.place, request, max_wait_s + 1.0)
        except Exception:
            self.placed.discard(session_id)
            raise
        if placement.action == Action.QUEUE:  # still queued after its wait: give up its place
            await self.ended(session_id)
        if placement.action in (Action.REFUSE, Action.QUEUE):
            self.placed.discard(session_id)  # refused: the controller holds nothing for it
            raise ServiceError(placement.code.value, placement.reason,
                               retry_after_s=max(1, math.ceil(placement.retry_after_s())))
        return placement.to_json()

    def backend(self, session_id: str, mode: str, remotes: dict[str, RemoteBackend]) -> GatedBackend:
        """What the session renders with once the controller has its backend resident:
        at once, after a load, or (still for lack of room) when room appears."""
        gate = GatedBackend(session_id, mode, remotes, self.handle, self.ready_timeout_s)
        self.gates[session_id] = gate
        return gate

    def notice(self, session_id: str, decision: Decision) -> bool:
        """A decision the controller pushed for a live session: a shed, or its backend lost.
        Revokes its gate; True when the session may wait for a backend again (after a shed:
        the controller upgrades it when room appears), False when it stays still for good
        (its backend crashed: no reload for it, or a crash could loop)."""
        gate = self.gates.pop(session_id, None)
        if gate is not None:
            gate.revoke(decision.code.value, decision.reason)
        return decision.code != Code.BACKEND_LOST

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
