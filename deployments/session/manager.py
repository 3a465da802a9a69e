"""The sessions of one host: create, find, feed, watch, sweep and close them (plain asyncio, no Ray).

The SessionHost deployment is a thin shim over this: everything Ray-specific (the host's
id, the remote backends built from handles, the VRAM gate, the WebRTC hub) is handed in,
so the whole lifecycle is unit-tested without a cluster.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any, AsyncIterator, Callable

import numpy as np

from models.base import SAMPLE_RATE_HZ, SAMPLES_PER_FRAME, Controls
from models.modes import build_pipeline, supports_control

from ..api.errors import ServiceError, error_event
from ..api.protocol import (
    ControlEvent,
    EmotionEvent,
    EndItem,
    EndOfSpeechEvent,
    EventItem,
    GazeEvent,
    GestureEvent,
    InterruptEvent,
    ListeningEvent,
    PoseEvent,
    TextEvent,
    WordsEvent,
)
from ..config import AppArgs
from ..inputs.audio_in import decode_to_16k, pcm16_to_float
from ..inputs.personas import PersonaStore
from ..rendering.interface import Backend
from ..serving_metrics import NoServingMetrics, ServingMetrics
from ..rendering.local import LocalBackend
from ..transports.encode import Mp4Writer
from ..transports.provenance import FrameMarking, Provenance
from ..vram.service import HEARTBEAT_PERIOD_S
from .avatar3d import MODE as AVATAR3D
from .avatar3d import Avatar3dSession
from .base import SessionCore
from .engine import Session, SessionConfig

log = logging.getLogger("ray.serve")
SWEEP_PERIOD_S = 1.0
OFFLINE_CHUNK_FRAMES = 50  # frames per backend call in a one-shot render
LOCAL_TEST_MODES = ("pattern",)  # rendered in the host's process when no backend deployment serves them
DEFAULT_AVATAR_ID = "default"  # avatar3d's built-in avatar (not in the persona store)


def avatar_url(avatar_id: str) -> str:
    """Where the page loads an avatar3d session's GLB."""
    return f"/v1/avatars/{avatar_id}/glb"


def decoder_pool_factory() -> Callable[[], Any]:
    """The host's warm viseme decoders, made on first use (pocketsphinx is imported then)."""
    pool = None

    def get() -> Any:
        nonlocal pool
        if pool is None:
            from models.visemes.pool import DecoderPool
            pool = DecoderPool()
        return pool
    return get


def no_video(mode: str) -> ServiceError:
    return ServiceError("mode_has_no_video", f"{mode} mode renders no video: the browser draws the avatar "
                                             "from the session WebSocket's audio and cues")


def local_backends(args: AppArgs, store: PersonaStore, served_remotely) -> tuple[Backend, dict[str, Backend]]:
    """Still mode (inline: it is cheap) and the test modes no backend deployment serves."""
    still = LocalBackend(build_pipeline("still"), store, inline=True)
    local = {m: LocalBackend(build_pipeline(m), store)
             for m in LOCAL_TEST_MODES if m in args.modes() and m not in served_remotely}
    return still, local


def webrtc_hub_factory(args: AppArgs) -> Callable[[], Any]:
    """The hub, made on first use, so hosts that never see an offer never import aiortc."""
    def make() -> Any:
        try:
            from ..transports.webrtc import WebRtcHub
        except ImportError as err:
            raise ServiceError("webrtc_unavailable",
                               f"WebRTC needs aiortc: pip install 'lockn-bod[webrtc]' ({err})") from None
        return WebRtcHub(args.webrtc)
    return make


class SessionManager:
    """One host's sessions. `gate` (a VramGate, or None where the VRAM controller is off)
    places sessions of the modes it controls; `remote` holds the backends it routes to."""

    def __init__(self, args: AppArgs, store: PersonaStore, *, host_id: str, still: Backend,
                 local: dict[str, Backend] | None = None, remote: dict[str, Backend] | None = None,
                 gate: Any = None, make_webrtc_hub: Callable[[], Any] | None = None,
                 clock: Callable[[], float] = time.time, provenance: Provenance | None = None,
                 metrics: ServingMetrics | None = None):
        """provenance: marks, ledger and signatures (transports/provenance.py); None: none.
        metrics: where sessions report frames and latencies (serving_metrics.py); None: nowhere."""
        self.args, self.store, self.host_id = args, store, host_id
        self.provenance = provenance
        self.metrics = metrics or NoServingMetrics()
        self.still, self.local, self.remote = still, dict(local or {}), dict(remote or {})
        self.gate, self.clock = gate, clock
        self.sessions: dict[str, SessionCore] = {}
        self._decoder_pool = decoder_pool_factory()
        self._make_webrtc_hub = make_webrtc_hub or webrtc_hub_factory(args)
        self._webrtc: Any = None
        self._last_heartbeat_s = 0.0
        self._heartbeat_task: asyncio.Task | None = None

    # ---------------- sessions ----------------
    async def create_session(self, persona_id: str, mode: str, sample_rate_hz: int, controls: Controls,
                             allow_still: bool = True, max_wait_s: float = 30.0, resolution_px: int = 512) -> dict:
        self._check_room()
        if mode == AVATAR3D:
            return await self._create_avatar3d(persona_id, sample_rate_hz, controls)
        session_id = self._new_id()
        backend, placement = self._backend_for(mode), None
        if self._gated(mode):
            # Refused: 503 with Retry-After and the policy's reason. Otherwise the session
            # starts in still mode and switches when its (possibly degraded) backend is up.
            placement = await self.gate.place(session_id, mode, allow_still=allow_still,
                                              max_wait_s=max_wait_s, resolution_px=resolution_px)
            backend = self.gate.backend(session_id, mode, self.remote)
        self.store.acquire(persona_id, session_id)
        session = Session(session_id, persona_id, mode, sample_rate_hz, controls, self.still,
                          backend, self.session_config(mode))
        session.placement, session.metrics = placement, self.metrics
        self._mark(session, mode)
        try:
            await session.start()
        except Exception:
            await self._discard(session, "failed to start")
            raise
        self.sessions[session_id] = session
        return session.info().model_dump() | ({"placement": placement} if placement else {})

    async def _create_avatar3d(self, avatar_id: str, sample_rate_hz: int, controls: Controls) -> dict:
        """An avatar3d session: no backend, no VRAM seat; a viseme tracker of its own."""
        from models.visemes.tracker import VisemeTracker

        session_id = self._new_id()
        tracker = await asyncio.to_thread(VisemeTracker, self._decoder_pool())  # a cold pool makes a decoder
        if avatar_id != DEFAULT_AVATAR_ID:
            self.store.acquire(avatar_id, session_id)
        session = Avatar3dSession(session_id, avatar_id, sample_rate_hz, controls, self.session_config(AVATAR3D),
                                  tracker, avatar_url(avatar_id))
        await session.start()
        self.sessions[session_id] = session
        return session.info().model_dump()

    def warm_visemes(self) -> None:
        """Make the first decoder now (0.3–0.6 s), so the first avatar3d session need not."""
        self._decoder_pool()

    def _mark(self, session: Session, mode: str) -> None:
        """The session's watermark tag and its ledger line (frames of avatar3d are drawn by the
        browser: nothing of ours to mark)."""
        if self.provenance is None or not self.provenance.enabled:
            return
        session.mark_tag = self.provenance.tag(session.session_id)
        session.marking = self.provenance.marking(session.mark_tag)
        self.provenance.record("start", session.session_id, session.persona_id, mode, session.mark_tag)

    def _check_room(self) -> None:
        """The per-host share of limits.max_sessions: a full host says when to retry."""
        if len(self.sessions) >= self.args.max_sessions_per_host():
            raise ServiceError("too_many_sessions",
                               f"{len(self.sessions)} sessions are live; the limit is {self.args.limits.max_sessions}",
                               retry_after_s=30)

    def _new_id(self) -> str:
        """Prefixed with the host's id: the SessionAffinityRouter reads it to find this host."""
        return f"{self.host_id}.{secrets.token_urlsafe(16)}"

    def _gated(self, mode: str) -> bool:
        return self.gate is not None and self.gate.controls(mode)

    def _backend_for(self, mode: str) -> Backend | None:
        if mode == "still":
            return None
        if mode in self.remote:
            return self.remote[mode]
        if mode in self.local:
            return self.local[mode]
        raise ServiceError("unknown_mode", f"mode {mode!r} is not served here")

    def session_config(self, mode: str) -> SessionConfig:
        """The render loop's settings: the mode's backend chunking, the app's timeouts and limits."""
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

    def get(self, session_id: str) -> SessionCore:
        session = self.sessions.get(session_id)
        if session is None:
            raise ServiceError("unknown_session", f"no session {session_id!r}")
        return session

    async def get_session(self, session_id: str) -> dict:
        return self.get(session_id).info().model_dump()

    async def close_session(self, session_id: str, reason: str = "closed by client") -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            raise ServiceError("unknown_session", f"no session {session_id!r}")
        await self._discard(session, reason)

    async def _discard(self, session: Session, reason: str) -> None:
        """Close a session that is no longer listed: its persona and VRAM seat go back."""
        await session.close(reason)
        if self.provenance is not None and isinstance(session, Session):
            self.provenance.record("end", session.session_id, session.persona_id, session.requested_mode,
                                   session.mark_tag)
        if session.persona_id != DEFAULT_AVATAR_ID:
            self.store.release(session.persona_id, session.session_id)
        if self._gated(session.requested_mode):
            await self.gate.ended(session.session_id)

    async def vram_notice(self, session_id: str, decision: Any) -> None:
        """The VramController moved this session off its backend (a shed, or the backend
        lost): calls fail at once with its reason, so the session falls back to still mode
        and says why. After a shed it waits for a backend again and switches back when the
        controller has room (its `mode_changed` event says so)."""
        if self.gate is None:
            return
        session = self.sessions.get(session_id)
        if self.gate.notice(session_id, decision) and session is not None:
            session.rewarm(self.gate.backend(session_id, session.requested_mode, self.remote))
        else:
            self.gate.demote(session_id)

    async def list_sessions(self) -> list[dict]:
        return [s.info().model_dump() for s in self.sessions.values()]

    # ---------------- input ----------------
    async def push_pcm16(self, session_id: str, data: bytes) -> None:
        self.get(session_id).push_audio(pcm16_to_float(data))

    async def push_audio(self, session_id: str, data: bytes, content_type: str) -> float:
        """An HTTP upload, decoded and resampled here where the session's rate is known (the
        default of raw PCM without `rate=`); the pause rule or end_of_speech ends it.
        Returns the seconds of audio accepted."""
        session = self.get(session_id)
        samples16k, seconds = await asyncio.to_thread(
            decode_to_16k, data, content_type, session.sample_rate_hz,
            self.args.limits.max_buffered_audio_s)
        session.push_audio_16k(samples16k)
        return seconds

    async def control(self, session_id: str, event: ControlEvent) -> None:
        """A client's control event, validated by the Router."""
        session = self.get(session_id)
        match event:
            case EmotionEvent(value=value, intensity=intensity):
                session.set_emotion(value, intensity)
            case InterruptEvent():
                session.interrupt()
            case EndOfSpeechEvent():
                session.end_of_speech()
            case TextEvent() | WordsEvent() | GestureEvent():
                self._avatar3d_control(session, event)
            case ListeningEvent(active=active):
                session.set_listening(active)  # every mode takes it; those that cannot listen ignore it
            case GazeEvent():
                self._check_control(session, "gaze")
                session.set_gaze(event.target, *event.point())
            case PoseEvent(pitch_deg=pitch, yaw_deg=yaw, roll_deg=roll):
                self._check_control(session, "pose")
                session.set_pose(pitch, yaw, roll)

    @staticmethod
    def _check_control(session: SessionCore, control: str) -> None:
        """Refuse a control the session's mode cannot show (by the mode asked for: a session
        streaming still frames while its backend loads takes them)."""
        if not supports_control(session.requested_mode, control):
            raise ServiceError("control_not_supported", f"`{control}` events move the eyes or head; "
                                                        f"{session.requested_mode} mode cannot (see /v1/modes)")

    @staticmethod
    def _avatar3d_control(session: SessionCore, event: ControlEvent) -> None:
        if not isinstance(session, Avatar3dSession):
            raise ServiceError("avatar3d_only", f"`{event.type}` events drive a 3D avatar; this session is in "
                                                f"{session.mode} mode")
        match event:
            case TextEvent(text=text):
                session.set_text(text)
            case WordsEvent():
                session.set_words(event)
            case GestureEvent():
                session.gesture(event)

    # ---------------- output ----------------
    async def subscribe(self, session_id: str, want_audio: bool = False) -> AsyncIterator[Any]:
        """Streams the session's items (frames, events, retracts) until it closes or the caller goes."""
        session = self.get(session_id)
        viewer = session.subscribe(want_audio)
        try:
            while True:
                item = await viewer.queue.get()
                yield item
                if isinstance(item, EndItem):
                    return
                if viewer.overflowed:
                    yield EventItem(error_event("viewer_too_slow", "viewer fell behind; reconnect"))
                    return
        finally:
            session.unsubscribe(viewer)

    # ---------------- WebRTC (peers live here, next to their session) ----------------
    async def webrtc_offer(self, session_id: str, sdp: str, type: str) -> dict:
        """An SDP offer in; the answer, with every candidate, out (no trickle ICE)."""
        session = self.get(session_id)
        if not isinstance(session, Session):
            raise no_video(session.mode)
        return await self._webrtc_hub().answer(session, sdp, type)

    async def webrtc_close(self, session_id: str, peer_id: str) -> None:
        self.get(session_id)
        if self._webrtc is None:
            raise ServiceError("unknown_peer", f"no WebRTC peer {peer_id!r} in this session")
        await self._webrtc.close_peer(session_id, peer_id)

    async def webrtc_peers(self, session_id: str) -> list[dict]:
        self.get(session_id)
        return self._webrtc.peers(session_id) if self._webrtc is not None else []

    def _webrtc_hub(self) -> Any:
        if self._webrtc is None:
            self._webrtc = self._make_webrtc_hub()
        return self._webrtc

    # ---------------- provenance ----------------
    async def provenance_poster(self, session_id: str) -> bytes:
        """The session's newest frame, signed with a manifest that declares its tag."""
        session = self.get(session_id)
        if not isinstance(session, Session):
            raise no_video(session.mode)
        if self.provenance is None or not self.provenance.enabled:
            raise ServiceError("provenance_off", "the operator turned provenance off (provenance.enabled: false)")
        if session.last_jpeg is None:
            raise ServiceError("no_frame_yet", "the session has not published a frame yet", retry_after_s=1)
        return await asyncio.to_thread(self.provenance.poster, session.last_jpeg, session.mark_tag, session_id,
                                       session.mode)

    # ---------------- one-shot render ----------------
    async def render_upload(self, persona_id: str, mode: str, data: bytes, controls: Controls) -> bytes:
        """A one-shot render of an uploaded audio file (any container audio_in takes)."""
        self.store.get(persona_id)
        audio16k, _ = await asyncio.to_thread(decode_to_16k, data, "", SAMPLE_RATE_HZ,
                                              self.args.limits.max_render_audio_s)
        return await self.render_offline(persona_id, mode, audio16k, controls)

    async def render_offline(self, persona_id: str, mode: str, audio16k: np.ndarray, controls: Controls) -> bytes:
        """The whole clip through one backend, chunk by chunk, muxed to MP4 with its audio."""
        if mode == AVATAR3D:
            raise no_video(mode)
        self.store.get(persona_id)
        backend, job_id = self._backend_for(mode) or self.still, self._new_id()
        if self._gated(mode):
            # A render job holds a seat like a session: placed, then only a resident backend renders it.
            await self.gate.place(job_id, mode, allow_still=False,
                                  max_wait_s=self.args.timeouts.backend_ready_timeout_s)
            backend = self.gate.backend(job_id, mode, self.remote)
        provenance = self.provenance if self.provenance is not None and self.provenance.enabled else None
        tag = provenance.tag(job_id) if provenance else None
        try:
            if provenance:
                provenance.record("start", job_id, persona_id, mode, tag)
            mp4 = await render_clip(backend, persona_id, audio16k, controls, provenance.marking(tag) if provenance else None)
            return await asyncio.to_thread(provenance.sign_mp4, mp4, tag, mode) if provenance else mp4
        finally:
            if provenance:
                provenance.record("end", job_id, persona_id, mode, tag)
            if self._gated(mode):
                await self.gate.ended(job_id)

    # ---------------- housekeeping ----------------
    async def run_sweeper(self, period_s: float = SWEEP_PERIOD_S) -> None:
        """Sweep every period_s for the host's lifetime; one failed pass never stops it."""
        while True:
            await asyncio.sleep(period_s)
            try:
                await self.sweep()
            except Exception:
                log.exception("session sweep failed")

    async def sweep(self, now_s: float | None = None) -> list[str]:
        """One pass: the VRAM heartbeat when due, expired sessions closed, unused personas
        removed. Returns the ids of the sessions it closed."""
        now_s = self.clock() if now_s is None else now_s
        self._heartbeat_if_due(now_s)
        closed = await self._close_expired(now_s)
        self.metrics.sessions(self.sessions_by_mode())
        # This host's sessions' markers count only while it beats: a crashed host's are orphans.
        await asyncio.to_thread(self.store.heartbeat, self.host_id)
        await asyncio.to_thread(self.store.sweep_unused, self.args.timeouts.unused_persona_ttl_s)
        return closed

    def sessions_by_mode(self) -> dict[str, int]:
        """Live sessions by the mode streaming now, every mode this host serves included."""
        counts = dict.fromkeys([*self.args.modes(), "still"], 0)
        for session in self.sessions.values():
            counts[session.mode] = counts.get(session.mode, 0) + 1
        return counts

    async def _close_expired(self, now_s: float) -> list[str]:
        t, closed = self.args.timeouts, []
        for session_id, session in list(self.sessions.items()):
            reason = session.expired(now_s, t.idle_ttl_s, t.disconnect_grace_s)
            if reason:
                log.info("closing session %s: %s", session_id, reason)
                await self.close_session(session_id, reason)
                closed.append(session_id)
        return closed

    def _heartbeat_if_due(self, now_s: float) -> None:
        """In the background: a controller that is restarting must not hold up the sweep."""
        if self.gate is None or now_s - self._last_heartbeat_s < HEARTBEAT_PERIOD_S:
            return
        self._last_heartbeat_s = now_s
        if self._heartbeat_task is None or self._heartbeat_task.done():
            self._heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        try:
            await self.gate.heartbeat(self.host_id)
        except Exception as err:  # the controller restarting: the next one goes through
            log.warning("vram heartbeat failed: %s", err)

    async def shutdown(self) -> None:
        """Close every session (idempotent): the replica is going away."""
        for session_id in list(self.sessions):
            try:
                await self.close_session(session_id, "server shutting down")
            except ServiceError:
                pass


async def render_clip(backend: Backend, persona_id: str, audio16k: np.ndarray, controls: Controls,
                      marking: FrameMarking | None = None) -> bytes:
    """A whole clip in calls of OFFLINE_CHUNK_FRAMES, muxed to MP4 with its (frame-padded) audio;
    each frame marked first where `marking` is given."""
    n = -(-len(audio16k) // SAMPLES_PER_FRAME)
    audio16k = np.pad(audio16k, (0, n * SAMPLES_PER_FRAME - len(audio16k)))
    writer = Mp4Writer()
    carry = await backend.start(persona_id, controls)
    carry = await backend.plan(persona_id, carry, audio16k, controls)  # Ditto: offline motion
    step = OFFLINE_CHUNK_FRAMES * SAMPLES_PER_FRAME
    def add(frames: np.ndarray) -> None:
        if marking is not None and len(frames):
            h, w = frames.shape[1:3]  # H.264 takes even sizes: mark what the file will hold
            frames = marking.apply(np.ascontiguousarray(frames[:, : h - h % 2, : w - w % 2]))
        writer.add_frames(frames)

    for start in range(0, len(audio16k), step):
        frames, carry = await backend.render(persona_id, carry, audio16k[start : start + step], controls)
        await asyncio.to_thread(add, frames)
    tail, _ = await backend.flush(persona_id, carry, controls)
    await asyncio.to_thread(add, tail)
    return await asyncio.to_thread(writer.finish, audio16k)
