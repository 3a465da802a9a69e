"""A session's backend under the VRAM controller: called only while the controller has it resident."""
from __future__ import annotations

import asyncio
from typing import Any

from models.base import Controls

from ..ray_private import call
from .interface import Backend
from .remote import RemoteBackend


class GatedBackend(Backend):
    """A session's backend, called only once the controller has the session on a
    resident backend, and no more once the controller takes it away.

    Until `start` returns the session renders still frames (its warm-up awaits it), so
    no request waits on a zero-replica deployment and Serve's cold-start path never
    loads a backend the controller has not admitted. The mode is the controller's: the
    requested one, a substitute, or the one a still session is upgraded to. `revoke`
    (a shed, or the backend lost) cancels the calls in flight and makes every later call
    fail at once with the controller's reason, so the session falls back to still mode
    (its `error` and `mode_changed` events say why) before the replica is gone, instead
    of waiting on a deployment at zero replicas.

    Its `hold` is the interface's idle one: the controller sets these deployments'
    replica counts, and a call held open, or opened again after the controller unloaded
    the deployment, would have Serve start a replica of it (its cold-start path,
    graph.VRAM_LOOK_BACK_S)."""

    def __init__(self, session_id: str, requested_mode: str, remotes: dict[str, RemoteBackend],
                 vram: Any, ready_timeout_s: float):
        self.session_id, self.mode, self.remotes = session_id, requested_mode, remotes
        self.requested_mode = requested_mode
        self.vram, self.ready_timeout_s = vram, ready_timeout_s
        self.remote: RemoteBackend | None = None
        self.revoked: BackendRevoked | None = None
        self._in_flight: set[asyncio.Future] = set()

    def revoke(self, code: str, reason: str) -> None:
        """Calls in flight are cancelled too: one waiting on a replica that crashed (or is
        going) would otherwise hold the session's frames until its timeout."""
        self.revoked = BackendRevoked(code, reason)
        for task in list(self._in_flight):
            task.cancel()

    def _backend(self) -> RemoteBackend:
        if self.revoked is not None:
            raise self.revoked
        return self.remote

    async def _forward(self, method: str, persona_id: str, *args: Any) -> Any:
        task = asyncio.ensure_future(getattr(self._backend(), method)(persona_id, *args))
        self._in_flight.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            if self.revoked is not None and task.cancelled():
                raise self.revoked from None  # cancelled by `revoke`, not by the session
            raise
        finally:
            self._in_flight.discard(task)

    async def start(self, persona_id: str, controls: Controls) -> Any:
        ready = await call(self.vram.wait_session, self.session_id, self.ready_timeout_s)  # a vram Readiness
        if not ready.ok or ready.mode not in self.remotes:
            await call(self.vram.demote, self.session_id)
            raise RuntimeError(f"no backend was loaded for this session within {self.ready_timeout_s:.0f}s "
                               f"(controller: {ready.mode or 'session unknown'})")
        self.mode, self.remote = ready.mode, self.remotes[ready.mode]
        return await self._forward("start", persona_id, controls)


class BackendRevoked(RuntimeError):
    """The VRAM controller moved this session off its backend. `code` is the decision's
    (e.g. `shed_over_budget`); the session's `error` event carries it instead of
    `backend_error`, and the message is the controller's reason."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{reason} ({code})")
        self.code = code
