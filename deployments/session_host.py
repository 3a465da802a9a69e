"""SessionHost: the deployment where sessions live for their whole lifetime.

A fixed number of replicas (sessions are not moved), reached through
`SessionAffinityRouter`, so any Router replica can serve any request for any
session. Each replica holds many sessions as asyncio tasks, runs still mode
locally, and calls the neural backends through their handles.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

import numpy as np
from ray import serve

from models.base import SAMPLES_PER_FRAME, Controls
from models.modes import build_pipeline

from .api.errors import ServiceError, error_event
from .config import AppArgs
from .inputs.personas import PersonaStore
from .rendering.local import LocalBackend
from .rendering.remote import RemoteBackend
from .session.engine import Session, SessionConfig
from .transports.encode import Mp4Writer
from .vram.gate import VramGate
from .vram_controller import HEARTBEAT_PERIOD_S

log = logging.getLogger("ray.serve")
SWEEP_PERIOD_S = 1.0
OFFLINE_CHUNK_FRAMES = 50  # frames per backend call in a one-shot render


class SessionHostImpl:
    """Serve deployment body; `backend_handles` maps mode -> DeploymentHandle."""

    def __init__(self, args: dict, backend_handles: dict[str, Any], vram: Any = None):
        self.args = AppArgs.model_validate(args)
        # The VramController's handle when it runs: sessions of GPU modes are placed by it.
        self.vram = VramGate(vram, self.args) if vram is not None else None
        self.store = PersonaStore(self.args.persona_dir, self.args.limits)
        self.still = LocalBackend(build_pipeline("still"), self.store, inline=True)
        self.local_test_modes = {m: LocalBackend(build_pipeline(m), self.store)
                                 for m in ("pattern",) if m in self.args.modes() and m not in backend_handles}
        self.remote = {mode: RemoteBackend(mode, h) for mode, h in backend_handles.items()}
        self.sessions: dict[str, Session] = {}
        self.host_id = serve.get_replica_context().replica_id.unique_id
        self._sweeper = asyncio.get_event_loop().create_task(self._sweep_forever())

    # ---------------- sessions ----------------
    async def create_session(self, persona_id: str, mode: str, sample_rate_hz: int, controls: Controls,
                             allow_still: bool = True, max_wait_s: float = 30.0, resolution_px: int = 512) -> dict:
        if len(self.sessions) >= self.args.max_sessions_per_host():
            raise ServiceError("too_many_sessions",
                               f"{len(self.sessions)} sessions are live; the limit is {self.args.limits.max_sessions}",
                               retry_after_s=30)
        session_id = f"{self.host_id}.{secrets.token_urlsafe(16)}"
        backend, placement = self._backend_for(mode), None
        if self.vram is not None and self.vram.controls(mode):
            # Refused: 503 with Retry-After and the policy's reason. Otherwise the session
            # starts in still mode and switches when its (possibly degraded) backend is up.
            placement = await self.vram.place(session_id, mode, allow_still=allow_still,
                                              max_wait_s=max_wait_s, resolution_px=resolution_px)
            backend = self.vram.backend(session_id, mode, self.remote)
        self.store.acquire(persona_id, session_id)
        session = Session(session_id, persona_id, mode, sample_rate_hz, controls, self.still,
                          backend, self._session_config(mode))
        session.placement = placement
        try:
            await session.start()
        except Exception:
            await session.close("failed to start")
            self.store.release(persona_id, session_id)
            if placement is not None:
                await self.vram.ended(session_id)
            raise
        self.sessions[session_id] = session
        return session.info().model_dump() | ({"placement": placement} if placement else {})

    def _backend_for(self, mode: str):
        if mode == "still":
            return None
        if mode in self.remote:
            return self.remote[mode]
        if mode in self.local_test_modes:
            return self.local_test_modes[mode]
        raise ServiceError("unknown_mode", f"mode {mode!r} is not served here")

    def _session_config(self, mode: str) -> SessionConfig:
        a = self.args
        backend = a.backends.get(mode)
        return SessionConfig(
            chunk_frames=backend.chunk_frames if backend else 5,
            max_chunks_per_call=backend.max_chunks_per_call if backend else 1,
            speech_gap_s=a.timeouts.speech_gap_s,
            max_buffered_audio_s=a.limits.max_buffered_audio_s,
            call_timeout_s=a.timeouts.backend_call_timeout_s,
            ready_timeout_s=a.timeouts.backend_ready_timeout_s,
            max_viewers=a.limits.max_viewers_per_session,
            jpeg_quality=a.jpeg_quality,
        )

    def _get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise ServiceError("unknown_session", f"no session {session_id!r}")
        return session

    async def get_session(self, session_id: str) -> dict:
        return self._get(session_id).info().model_dump()

    async def close_session(self, session_id: str, reason: str = "closed by client") -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            raise ServiceError("unknown_session", f"no session {session_id!r}")
        await session.close(reason)
        self.store.release(session.persona_id, session_id)
        if self.vram is not None and self.vram.controls(session.requested_mode):
            await self.vram.ended(session_id)

    async def vram_notice(self, session_id: str, decision: dict) -> None:
        """The VramController moved this session off its backend (a shed, or the backend
        lost): calls fail at once with its reason, so the session falls back to still mode
        and says why. After a shed it waits for a backend again and switches back when the
        controller has room (its `mode_changed` event says so)."""
        if self.vram is None:
            return
        session = self.sessions.get(session_id)
        if self.vram.notice(session_id, decision) and session is not None:
            session.rewarm(self.vram.backend(session_id, session.requested_mode, self.remote))
        else:
            self.vram.demote(session_id)

    async def list_sessions(self) -> list[dict]:
        return [s.info().model_dump() for s in self.sessions.values()]

    # ---------------- input ----------------
    async def push_pcm16(self, session_id: str, data: bytes) -> None:
        from .inputs.audio_in import pcm16_to_float

        self._get(session_id).push_audio(pcm16_to_float(data))

    async def push_audio(self, session_id: str, samples: np.ndarray, rate_hz: int) -> None:
        """An HTTP upload: resampled here from its own rate (the pause rule or end_of_speech ends it)."""
        from .inputs.audio_in import resample_to_16k

        session = self._get(session_id)
        session.push_audio_16k(await asyncio.to_thread(resample_to_16k, samples, rate_hz))

    async def control(self, session_id: str, event: dict) -> None:
        session = self._get(session_id)
        kind = event["type"]
        if kind == "emotion":
            session.set_emotion(event["value"], event.get("intensity", 1.0))
        elif kind == "interrupt":
            session.interrupt()
        elif kind == "end_of_speech":
            session.end_of_speech()

    # ---------------- output ----------------
    async def subscribe(self, session_id: str, want_audio: bool = False):
        """Streams the session's items (frames, events, retracts) until it closes or the caller goes."""
        session = self._get(session_id)
        viewer = session.subscribe(want_audio)
        try:
            while True:
                item = await viewer.queue.get()
                yield item
                if item["type"] == "end":
                    return
                if viewer.overflowed:
                    yield {"type": "event", "pts": None,
                           "event": error_event("viewer_too_slow", "viewer fell behind; reconnect")}
                    return
        finally:
            session.unsubscribe(viewer)

    # ---------------- WebRTC (peers live here, next to their session) ----------------
    async def webrtc_offer(self, session_id: str, sdp: str, type: str) -> dict:
        """An SDP offer in; the answer, with every candidate, out (no trickle ICE)."""
        session = self._get(session_id)
        return await self._webrtc_hub().answer(session, sdp, type)

    async def webrtc_peers(self, session_id: str) -> list[dict]:
        self._get(session_id)
        hub = getattr(self, "_webrtc", None)
        return hub.peers(session_id) if hub is not None else []

    def _webrtc_hub(self):
        """Made on first use, so hosts that never see an offer never import aiortc."""
        hub = getattr(self, "_webrtc", None)
        if hub is None:
            try:
                from .transports.webrtc import WebRtcHub
            except ImportError as err:
                raise ServiceError("webrtc_unavailable",
                                   f"WebRTC needs aiortc: pip install 'lockn-bod[webrtc]' ({err})") from None
            hub = self._webrtc = WebRtcHub(self.args.webrtc)
        return hub

    # ---------------- one-shot render ----------------
    async def render_offline(self, persona_id: str, mode: str, audio16k: np.ndarray, controls: Controls) -> bytes:
        """The whole clip through one backend, chunk by chunk, muxed to MP4 with its audio."""
        self.store.get(persona_id)
        backend, job_id = self._backend_for(mode) or self.still, None
        if self.vram is not None and self.vram.controls(mode):
            # A render job holds a seat like a session: placed, then only a resident backend renders it.
            job_id = f"{self.host_id}.{secrets.token_urlsafe(16)}"
            await self.vram.place(job_id, mode, allow_still=False,
                                  max_wait_s=self.args.timeouts.backend_ready_timeout_s)
            backend = self.vram.backend(job_id, mode, self.remote)
        try:
            return await self._render_clip(backend, persona_id, audio16k, controls)
        finally:
            if job_id is not None:
                await self.vram.ended(job_id)

    async def _render_clip(self, backend, persona_id: str, audio16k: np.ndarray, controls: Controls) -> bytes:
        n = -(-len(audio16k) // SAMPLES_PER_FRAME)
        audio16k = np.pad(audio16k, (0, n * SAMPLES_PER_FRAME - len(audio16k)))
        writer = Mp4Writer()
        carry = await backend.start(persona_id, controls)
        carry = await backend.plan(persona_id, carry, audio16k, controls)  # Ditto: offline motion
        step = OFFLINE_CHUNK_FRAMES * SAMPLES_PER_FRAME
        for start in range(0, len(audio16k), step):
            frames, carry = await backend.render(persona_id, carry, audio16k[start : start + step], controls)
            await asyncio.to_thread(writer.add_frames, frames)
        tail, _ = await backend.flush(persona_id, carry, controls)
        await asyncio.to_thread(writer.add_frames, tail)
        return await asyncio.to_thread(writer.finish, audio16k)

    # ---------------- housekeeping ----------------
    async def _sweep_forever(self) -> None:
        t = self.args.timeouts
        last_heartbeat, heartbeat = 0.0, None
        while True:
            await asyncio.sleep(SWEEP_PERIOD_S)
            now = time.time()
            if self.vram is not None and now - last_heartbeat >= HEARTBEAT_PERIOD_S:
                last_heartbeat = now
                # In the background: a controller that is restarting must not hold up the sweep.
                if heartbeat is None or heartbeat.done():
                    heartbeat = asyncio.get_running_loop().create_task(self._heartbeat())
            for session_id, session in list(self.sessions.items()):
                reason = session.expired(now, t.idle_ttl_s, t.disconnect_grace_s)
                if reason:
                    log.info("closing session %s: %s", session_id, reason)
                    await self.close_session(session_id, reason)
            await asyncio.to_thread(self.store.sweep_unused, t.unused_persona_ttl_s)

    async def _heartbeat(self) -> None:
        try:
            await self.vram.heartbeat(self.host_id)
        except Exception as err:  # the controller restarting: the next one goes through
            log.warning("vram heartbeat failed: %s", err)

    async def __del__(self):  # called on replica shutdown; idempotent
        for session_id in list(self.sessions):
            try:
                await self.close_session(session_id, "server shutting down")
            except ServiceError:
                pass
