"""SessionHost: the deployment where sessions live for their whole lifetime.

A fixed number of replicas (sessions are not moved), reached through
`SessionAffinityRouter`, so any Router replica can serve any request for any
session. Each replica holds many sessions as asyncio tasks, runs still mode
locally, and calls the neural backends through their handles.

A thin shim over `session.manager.SessionManager`: it builds the manager from its
arguments and handles, and forwards each call with the same keyword arguments (the
Router calls them as `session_id=...`, and the SessionAffinityRouter routes on it).
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ray import serve

from models.base import Controls

from .api.protocol import ControlEvent
from .config import AppArgs
from .inputs.personas import PersonaStore
from .rendering.remote import RemoteBackend
from .serving_metrics import PrometheusServingMetrics
from .session.manager import SessionManager, local_backends
from .transports.provenance import Provenance
from .vram.data import Decision
from .vram.gate import VramGate


class SessionHostImpl:
    """Serve deployment body; `backend_handles` maps mode -> DeploymentHandle."""

    def __init__(self, args: dict, backend_handles: dict[str, Any], vram: Any = None):
        app_args = AppArgs.model_validate(args)
        store = PersonaStore(app_args.persona_dir, app_args.limits)
        still, local = local_backends(app_args, store, served_remotely=backend_handles)
        self.manager = SessionManager(
            app_args, store,
            host_id=serve.get_replica_context().replica_id.unique_id,
            still=still, local=local,
            remote={mode: RemoteBackend(mode, h) for mode, h in backend_handles.items()},
            # The VramController's handle when it runs: sessions of GPU modes are placed by it.
            gate=VramGate(vram, app_args) if vram is not None else None,
            provenance=Provenance.from_args(app_args),  # makes the keys on the first start
            metrics=PrometheusServingMetrics(),
        )
        self._sweeper = asyncio.get_event_loop().create_task(self.manager.run_sweeper())
        if "avatar3d" in app_args.modes():  # its first decoder takes 0.3–0.6 s: not in a session's way
            asyncio.get_event_loop().run_in_executor(None, self.manager.warm_visemes)

    # ---------------- sessions ----------------
    async def create_session(self, persona_id: str, mode: str, sample_rate_hz: int, controls: Controls,
                             allow_still: bool = True, max_wait_s: float = 30.0, resolution_px: int = 512) -> dict:
        return await self.manager.create_session(persona_id, mode, sample_rate_hz, controls, allow_still=allow_still,
                                                 max_wait_s=max_wait_s, resolution_px=resolution_px)

    async def get_session(self, session_id: str) -> dict:
        return await self.manager.get_session(session_id)

    async def close_session(self, session_id: str, reason: str = "closed by client") -> None:
        await self.manager.close_session(session_id, reason)

    async def vram_notice(self, session_id: str, decision: Decision) -> None:
        await self.manager.vram_notice(session_id, decision)

    async def list_sessions(self) -> list[dict]:
        return await self.manager.list_sessions()

    # ---------------- input ----------------
    async def push_pcm16(self, session_id: str, data: bytes) -> None:
        await self.manager.push_pcm16(session_id, data)

    async def push_audio(self, session_id: str, data: bytes, content_type: str) -> float:
        return await self.manager.push_audio(session_id, data, content_type)

    async def control(self, session_id: str, event: ControlEvent) -> None:
        await self.manager.control(session_id, event)

    # ---------------- output ----------------
    async def subscribe(self, session_id: str, want_audio: bool = False):
        # aclosing: a caller that goes away unsubscribes its viewer now, not when collected.
        async with contextlib.aclosing(self.manager.subscribe(session_id, want_audio)) as items:
            async for item in items:
                yield item

    async def webrtc_offer(self, session_id: str, sdp: str, type: str) -> dict:
        return await self.manager.webrtc_offer(session_id, sdp, type)

    async def webrtc_close(self, session_id: str, peer_id: str) -> None:
        await self.manager.webrtc_close(session_id, peer_id)

    async def webrtc_peers(self, session_id: str) -> list[dict]:
        return await self.manager.webrtc_peers(session_id)

    async def provenance_poster(self, session_id: str) -> bytes:
        return await self.manager.provenance_poster(session_id)

    # ---------------- one-shot render ----------------
    async def render_upload(self, persona_id: str, mode: str, data: bytes, controls: Controls) -> bytes:
        return await self.manager.render_upload(persona_id, mode, data, controls)

    async def __del__(self):  # called on replica shutdown; idempotent
        self._sweeper.cancel()
        await self.manager.shutdown()
