"""One session: its clock, speech buffer, backend carry and viewers (plain asyncio, no Ray).

The render loop keeps the video a little ahead of the wall clock:
- speech: rendered in chunks of `chunk_frames` as soon as audio is buffered,
  up to `max_lead_frames` ahead; smaller chunks when the stream would starve;
  once the video is `batch_lead_frames` ahead, up to `max_chunks_per_call`
  buffered chunks go to the backend in one call (a call costs ~2 ms of CPU in
  Ray whatever it carries; the backend still renders them chunk by chunk), as
  many as the backend, at the speed measured on this session's calls, renders
  within half the lead they start at;
- idle: in batches of `idle_batch_frames` once the lead falls to
  `idle_lead_frames`; when speech arrives, idle frames beyond that lead are
  retracted, so speech starts within a few frames.
Frames are JPEG-encoded once, by a remote backend where they are rendered
(`FrameFormat`) or here for local ones, and published to every viewer with their
pts; viewers (relays in the Router) send each frame when it is due.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.base import FPS, SAMPLES_PER_FRAME, Controls

from ..api.errors import error_event, pipeline_error
from ..api.protocol import (
    ErrorEvent,
    FramesItem,
    ModeChanged,
    RetractItem,
    ServerEvent,
    SessionReady,
    SpeechEnded,
    SpeechStarted,
    WarningEvent,
)
from ..rendering.interface import Backend
from ..transports.encode import (
    EncodedFrames,
    FrameFormat,
    JpegEncoder,
    decode_jpeg,
)
from .base import SessionConfig, SessionCore, Viewer
from .scheduler import SpeechState, smoothed_render_speed, speech_frames_to_render, wake_at_s

log = logging.getLogger("ray.serve")
def warm_up_error(mode: str, err: BaseException) -> ErrorEvent:
    """The `error` event of a backend that could not start a session: the pipeline's own code
    (e.g. `no_face`) where it gave one, else `backend_unavailable`. The session stays in still mode."""
    found = pipeline_error(err)
    if found is not None:
        return error_event(found.code, f"{mode}: {found}")
    return error_event("backend_unavailable", f"{mode} backend unavailable: {str(err) or type(err).__name__}")


@dataclass
class FrameBatch:
    """Frames published to viewers.

    frames: N×H×W×3 uint8 RGB (for in-process viewers such as WebRTC peers), or None
    when the backend sent JPEGs only (no such viewer was there when it rendered);
    audio: N×640 float32 output audio on the frame clock (zeros when idle).
    """

    t0: float
    pts: list[int]
    jpegs: list[bytes]
    audio: np.ndarray
    frames: np.ndarray | None

    def to_item(self, viewer: "Viewer") -> FramesItem:
        """What `viewer` gets of the batch: audio and raw frames only where it asked."""
        return FramesItem(self.t0, self.pts, self.jpegs, audio=self.audio if viewer.want_audio else None,
                          frames=self.raw() if viewer.want_raw else None)

    def raw(self) -> np.ndarray:
        """The frames; a batch rendered just before an in-process viewer joined has only
        its JPEGs, decoded once here."""
        if self.frames is None:
            self.frames = np.stack([decode_jpeg(j) for j in self.jpegs])
        return self.frames


@dataclass
class _Warm:
    backend: Backend
    carry: Any


class Session(SessionCore):
    """A session that streams video frames: still frames at once, its mode's once the
    backend is warm, speech rendered a little ahead of the wall clock."""

    def __init__(
        self,
        session_id: str,
        persona_id: str,
        requested_mode: str,
        sample_rate_hz: int,
        controls: Controls,
        still: Backend,
        backend: Backend | None,
        config: SessionConfig,
    ):
        super().__init__(session_id, persona_id, requested_mode, sample_rate_hz, controls, config)
        self.still, self.backend = still, backend
        self._active: Backend = still
        self._carry: Any = None
        self._warm: _Warm | None = None
        self._spans: collections.deque[np.ndarray] = collections.deque()  # rendered audio not yet shown
        self._encoder = JpegEncoder(config.jpeg_quality)
        self._produced_pts = 0
        self._speaking = False
        self._epoch = 0  # bumped by interrupt: renders begun before it are dropped
        self._drop_held = False  # set by interrupt: the backend drops what its lookahead holds
        self._hold_task: asyncio.Task | None = None
        self._render_s_per_frame: float | None = None  # the active backend's speech calls: wall s a frame
        self._first_frame_measured = False
        # Provenance (set by the manager): the session's watermark tag, and the marking of
        # frames rendered in this process; remote backends mark theirs (FrameFormat.mark_tag).
        self.mark_tag: int | None = None
        self.marking = None
        self.last_jpeg: bytes | None = None  # the newest frame published (the provenance poster)
        # Why the session shows still frames though it asked for another mode (a warm-up or
        # backend error): told again to every viewer that joins, after session_ready.
        self._still_because: ErrorEvent | None = None

    # ---------------- lifecycle ----------------
    async def start(self) -> None:
        self._carry = await self._call(self.still.start(self.persona_id, self.controls))
        self._spawn(self._run(), "render loop")
        if self.backend is not None:
            self._spawn(self._warm_up(), "backend warm-up")

    def _forget_speech(self) -> None:
        self._spans.clear()

    # ---------------- input ----------------
    def interrupt(self) -> None:
        """Drop buffered audio and frames not yet shown; idle again from the next frame."""
        self.last_input_at = time.time()
        self._epoch += 1
        self._speech.clear()
        self._spans.clear()
        self._resampler.flush()
        retract_from = self.clock.now_pts() + 1
        if self._produced_pts > retract_from:
            self._publish(RetractItem(retract_from))
            self._produced_pts = retract_from
        if self._speaking:
            self._speaking = False
            self._event(SpeechEnded(reason="interrupted", pts=self._produced_pts))
        self._eos = False
        self._drop_held = True
        self._wake.set()

    # ---------------- viewers ----------------
    def _greeting(self) -> list[ServerEvent]:
        """`session_ready`; then, while it shows still frames though it asked for another mode, why."""
        events: list[ServerEvent] = [self._ready_event()]
        if self._still_because is not None and self._active is self.still:
            events.append(self._still_because)
        return events

    def _ready_event(self) -> SessionReady:
        return SessionReady(session_id=self.session_id, mode=self._active.mode, requested_mode=self.requested_mode,
                            fps=FPS, sample_rate_hz=self.sample_rate_hz, placement=self.placement or None,
                            provenance=self.mark_tag is not None)

    # ---------------- render loop ----------------
    async def _step(self) -> bool:
        """Do the most urgent piece of work; False when there is nothing to do yet."""
        now = time.time()
        now_pts = self.clock.now_pts(now)
        if self._drop_held:
            self._drop_held = False
            self._carry = await self._call(self._active.interrupt(self.persona_id, self._carry, self.controls))
            return True
        if self._warm is not None and not self._speaking:
            self._switch_to_warm()
            return True
        if not self._speaking and self._produced_pts <= now_pts:
            self._produced_pts = now_pts + 1  # fell behind while idle: skip, never show late frames
        n = self._speech_frames_to_render(now, now_pts)
        if n:
            self._retract_idle_ahead(now_pts)
            await self._render_speech(self._speech.take_frames(n))
            return True
        last_partial_frame = len(self._speech) and not self._speech.frames
        if last_partial_frame and self._utterance_over(now) and self._produced_pts - now_pts <= self.config.max_lead_frames:
            await self._render_speech(self._speech.take_all_padded())
            return True
        if self._speaking and not len(self._speech) and self._utterance_over(now):
            await self._finish_utterance()
            return True
        if self._produced_pts <= now_pts + self.config.idle_lead_frames:
            await self._render_idle(self.config.idle_batch_frames)
            return True
        return False

    def _retract_idle_ahead(self, now_pts: int) -> None:
        """Speech starts: drop idle frames rendered beyond the lead, so it shows within a few frames."""
        keep_to = now_pts + self.config.idle_lead_frames
        if not self._speaking and self._produced_pts > keep_to:
            self._publish(RetractItem(keep_to))
            self._produced_pts = keep_to

    def _speech_frames_to_render(self, now: float, now_pts: int) -> int:
        """How many buffered whole frames to render now (0: wait); see scheduler.py."""
        return speech_frames_to_render(self.config, self._speech_state(now, now_pts))

    def _speech_state(self, now: float, now_pts: int) -> SpeechState:
        """This instant as the scheduler's pure functions see it."""
        return SpeechState(lead_frames=self._produced_pts - now_pts, buffered_samples=len(self._speech),
                           utterance_over=self._utterance_over(now), render_s_per_frame=self._render_s_per_frame,
                           speaking=self._speaking)

    def _note_render_speed(self, seconds: float, frames: int) -> None:
        self._render_s_per_frame = smoothed_render_speed(self._render_s_per_frame, seconds, frames)

    async def _render_speech(self, audio16k: np.ndarray) -> None:
        epoch, backend, started = self._epoch, self._active, time.perf_counter()
        arrived = self._speech.last_taken_arrival  # when the last sample of this audio came in
        self._spans.extend(audio16k.reshape(-1, SAMPLES_PER_FRAME))
        frames, carry = await self._render_with_fallback(
            lambda b, c: b.render(self.persona_id, c, audio16k, self.controls, self._format()))
        if self._active is backend:
            self._note_render_speed(time.perf_counter() - started, max(1, len(audio16k) // SAMPLES_PER_FRAME))
        if epoch != self._epoch:
            return  # interrupted while rendering
        self._carry = carry
        if len(frames) and not self._speaking:
            self._speaking = True
            self._event(SpeechStarted(pts=self._produced_pts))
        await self._emit(frames, speech=True, audio_arrived=arrived)

    async def _finish_utterance(self) -> None:
        epoch = self._epoch
        frames, carry = await self._render_with_fallback(
            lambda b, c: b.flush(self.persona_id, c, self.controls, self._format()))
        if epoch != self._epoch:
            return
        self._carry = carry
        await self._emit(frames, speech=True)
        self._spans.clear()
        self._speaking, self._eos = False, False
        self._event(SpeechEnded(pts=self._produced_pts))

    async def _render_idle(self, n: int) -> None:
        frames, self._carry = await self._render_with_fallback(
            lambda b, c: b.idle(self.persona_id, c, n, self.controls, self._format()))
        encoded = await self._encoded(frames)
        if len(encoded) < n:  # a backend owes n idle frames; never let the clock stall on it
            log.warning("session %s: %s gave %d of %d idle frames", self.session_id, self._active.mode, len(frames), n)
            still, _ = await self._call(self.still.idle(self.persona_id, None, n - len(frames), self.controls))
            encoded = EncodedFrames.concat([encoded, await self._encoded(still)])
        await self._emit(encoded, speech=False)

    async def _render_with_fallback(self, call) -> tuple[np.ndarray, Any]:
        """Render on the active backend; on failure say so, fall back to still, and render there."""
        try:
            return await self._call(call(self._active, self._carry))
        except Exception as err:
            if self._active is self.still:
                raise
            self._fall_back_to_still(err)
            return await self._call(call(self.still, self._carry))

    def _fall_back_to_still(self, err: Exception) -> None:
        # An error may name its own code (a VRAM shed does); anything else is a failure.
        code = getattr(err, "code", None)
        code = code if isinstance(code, str) and code else "backend_error"
        verb = "failed" if code == "backend_error" else "was withdrawn"
        reason = f"{self._active.mode} backend {verb}: {err}"
        log.warning("session %s: %s", self.session_id, reason)
        self._still_because = error_event(code, reason)
        self._event(self._still_because)
        self._active, self._carry, self._render_s_per_frame = self.still, None, None
        if self._hold_task is not None:  # let the backend scale down if no one else uses it
            self._hold_task.cancel()
        self._event(ModeChanged(mode="still", reason=reason, pts=self._produced_pts))

    def _format(self) -> FrameFormat:
        """How a remote backend should send frames: JPEGs, plus raw frames for viewers in this process."""
        return FrameFormat(self.config.jpeg_quality, raw=any(v.want_raw for v in self._viewers), mark_tag=self.mark_tag)

    async def _encoded(self, frames: np.ndarray | EncodedFrames) -> EncodedFrames:
        """A render's frames as published: a remote backend's come encoded; local ones are encoded here."""
        if isinstance(frames, EncodedFrames):
            return frames
        if self.marking is not None and len(frames):
            frames = await asyncio.to_thread(self.marking.apply, frames)
        jpegs = await asyncio.to_thread(self._encoder.encode_batch, frames) if len(frames) else []
        return EncodedFrames(jpegs, frames)

    async def _emit(self, frames: np.ndarray | EncodedFrames, speech: bool, audio_arrived: float | None = None) -> None:
        """Publish frames with their audio; `audio_arrived`: when the speech they show came in."""
        if not len(frames):
            return
        encoded = await self._encoded(frames)
        audio = np.zeros((len(frames), SAMPLES_PER_FRAME), np.float32)
        if speech:
            for i in range(len(frames)):
                if self._spans:
                    audio[i] = self._spans.popleft()
        self.last_jpeg = encoded.jpegs[-1]
        pts = list(range(self._produced_pts, self._produced_pts + len(frames)))
        self._produced_pts += len(frames)
        self._publish(FrameBatch(self.clock.t0, pts, encoded.jpegs, audio, encoded.raw))
        self._measure(pts, audio_arrived)

    def _measure(self, pts: list[int], audio_arrived: float | None) -> None:
        """Serving metrics of frames just published (serving_metrics.py)."""
        now, mode = time.time(), self._active.mode
        late = sum(1 for p in pts if now > self.clock.due(p) + 1 / FPS)
        self.metrics.frames_published(mode, len(pts), late, len(self._viewers))
        if not self._first_frame_measured:
            self._first_frame_measured = True
            self.metrics.first_frame(mode, now - self.created_at)
        if audio_arrived is not None:
            self.metrics.audio_to_frame(mode, self.clock.due(pts[-1]) - audio_arrived)

    async def _sleep_until_next_deadline(self) -> None:
        """Nothing to do: sleep until the scheduler's next deadline, or until input wakes the loop."""
        now = time.time()
        state = self._speech_state(now, self.clock.now_pts(now))
        due = wake_at_s(self.config, state, self.clock, self._produced_pts, self.last_input_at)
        timeout = max(0.0, due - now)
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # ---------------- backend switching ----------------
    async def _warm_up(self) -> None:
        backend = self.backend
        try:
            carry = await asyncio.wait_for(backend.start(self.persona_id, self.controls), self.config.ready_timeout_s)
        except Exception as err:  # stay in still mode and say why
            self._still_because = warm_up_error(backend.mode, err)
            self._event(self._still_because)
            return
        await self._tell_warnings(backend)
        self._hold_task = self._spawn(self._hold_backend(backend), "backend hold")
        self._warm = _Warm(backend, carry)
        self._wake.set()

    def rewarm(self, backend: Backend) -> None:
        """Its backend was taken away (a VRAM shed): from still mode, wait for `backend`
        again in the background and switch when it is ready, as at the start."""
        if self.closed:
            return
        self.backend, self._warm = backend, None
        self._spawn(self._warm_up(), "backend re-warm")

    async def _hold_backend(self, backend: Backend) -> None:
        """Keep one call open on the backend while this session may use it (see BackendDeployment.hold)."""
        while not self.closed:  # cancelled when the session leaves this backend or closes
            stream = backend.hold(self.persona_id)
            try:
                async for _ in stream:
                    pass  # returns only if the replica goes away
            except asyncio.CancelledError:
                stream.cancel()
                raise
            except Exception as err:
                log.info("session %s: backend hold ended (%s); holding again", self.session_id, err)
            await asyncio.sleep(1.0)

    async def _tell_warnings(self, backend: Backend) -> None:
        """What preparing the persona found (e.g. several faces, the largest used), as events."""
        try:
            found = await self._call(backend.warnings(self.persona_id))
        except Exception:  # warnings are advice: never let them stop the session
            log.exception("session %s: reading persona warnings failed", self.session_id)
            return
        for w in found:
            self._event(WarningEvent(code=w["code"], reason=w["message"]))

    def _switch_to_warm(self) -> None:
        warm, self._warm = self._warm, None
        self._active, self._carry, self._render_s_per_frame = warm.backend, warm.carry, None
        self._still_because = None
        self._event(ModeChanged(mode=warm.backend.mode, reason="backend ready", pts=self._produced_pts))

    async def _call(self, coro):
        return await asyncio.wait_for(coro, self.config.call_timeout_s)

    # ---------------- info ----------------
    @property
    def mode(self) -> str:
        return self._active.mode

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def produced_frames(self) -> int:
        return self._produced_pts
