"""What every kind of session shares: its identity, clock, speech input and viewers.

`engine.Session` renders video frames from that input; `avatar3d.Avatar3dSession`
sends the speech itself with lip-sync cues, for an avatar the browser draws. Both
take audio, emotion and interrupts the same way and publish to viewers the same way.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, replace

import numpy as np

from models.base import SAMPLE_RATE_HZ, Controls

from ..serving_metrics import NoServingMetrics, ServingMetrics

from ..api.errors import ServiceError, error_event
from ..api.protocol import EndItem, EventItem, HostItem, ServerEvent, SessionInfo, session_urls
from ..inputs.audio_in import StreamResampler
from ..transports.encode import DEFAULT_JPEG_QUALITY
from .clock import SessionClock, SpeechBuffer

log = logging.getLogger("ray.serve")
# The stream resampler may give out a few samples more than a push's share (its filter delay).
RESAMPLER_SLACK_SAMPLES = 64


@dataclass
class SessionConfig:
    chunk_frames: int = 5
    idle_lead_frames: int = 2
    idle_batch_frames: int = 5  # idle frames per backend call and per published item
    max_lead_frames: int = 25
    max_chunks_per_call: int = 1
    batch_lead_frames: int = 10  # never batch below this lead: it would delay the first frames
    speech_gap_s: float = 0.4
    max_buffered_audio_s: float = 120.0
    call_timeout_s: float = 30.0
    ready_timeout_s: float = 120.0
    max_viewers: int = 8
    viewer_queue_items: int = 256
    jpeg_quality: int = DEFAULT_JPEG_QUALITY


@dataclass(eq=False)  # identity-hashed: viewers live in a set
class Viewer:
    want_audio: bool
    queue: asyncio.Queue
    want_raw: bool = False  # raw frames: only for viewers in this process (never across Ray)
    overflowed: bool = False


@contextlib.contextmanager
def buffer_full_as_service_error():
    try:
        yield
    except OverflowError as err:
        raise ServiceError("audio_buffer_full", str(err)) from None


class SessionCore:
    """A session's input and viewers. Subclasses run the loop that turns buffered speech
    into what viewers get (`_run`), and say what a viewer is told first (`_greeting`)."""

    def __init__(self, session_id: str, persona_id: str, requested_mode: str, sample_rate_hz: int,
                 controls: Controls, config: SessionConfig):
        self.session_id, self.persona_id = session_id, persona_id
        self.requested_mode, self.sample_rate_hz = requested_mode, sample_rate_hz
        self.controls, self.config = controls, config
        self.placement: dict | None = None  # the VRAM controller's decision, where it placed the session
        self.metrics: ServingMetrics = NoServingMetrics()  # set by the manager
        self.clock = SessionClock()
        self.created_at = time.time()
        self.last_input_at = self.created_at
        self.last_viewer_left_at: float | None = None
        self.closed = False
        self._resampler = StreamResampler(sample_rate_hz)
        self._speech = SpeechBuffer(int(config.max_buffered_audio_s * SAMPLE_RATE_HZ))
        self._eos = False  # end_of_speech came: the utterance is over once its audio is out
        self._viewers: set[Viewer] = set()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    # ---------------- lifecycle ----------------
    async def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for viewer in list(self._viewers):
            self._put(viewer, EndItem(reason), force=True)
        self._speech.clear()
        self._forget_speech()

    def _forget_speech(self) -> None:
        """Drop what the subclass holds of speech not yet shown (close and interrupt)."""

    # ---------------- the loop ----------------
    async def _run(self) -> None:
        """The most urgent piece of work (`_step`), else sleep until there may be some; one
        step that fails is told to viewers as an `internal` error and the loop goes on."""
        while not self.closed:
            try:
                if not await self._step():
                    await self._sleep_until_next_deadline()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # keep streaming whatever happens in one step
                log.exception("session %s: step failed", self.session_id)
                self._event(error_event("internal", str(err)))
                self._after_failed_step()
                await asyncio.sleep(0.04)

    async def _step(self) -> bool:
        """Do the most urgent piece of work; False when there is nothing to do yet."""
        raise NotImplementedError

    async def _sleep_until_next_deadline(self) -> None:
        raise NotImplementedError

    def _after_failed_step(self) -> None:
        """What a subclass resets when a step failed."""

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.session_id} {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---------------- input ----------------
    def push_audio(self, samples: np.ndarray) -> None:
        """samples: float32 mono at the session's rate (a WebSocket's PCM). Refused before the
        resampler sees it when it cannot fit, so a refused push leaves no seam in the stream."""
        at_16k = -(-len(samples) * SAMPLE_RATE_HZ // self.sample_rate_hz) + RESAMPLER_SLACK_SAMPLES
        with buffer_full_as_service_error():
            self._speech.check_room(at_16k)
        self.push_audio_16k(self._resampler.push(samples))

    def push_audio_16k(self, samples16k: np.ndarray) -> None:
        """Audio already at 16 kHz (an HTTP upload, resampled from its own rate)."""
        self.last_input_at = time.time()
        with buffer_full_as_service_error():
            self._speech.push(samples16k)
        self._eos = False
        self._wake.set()

    def set_emotion(self, value: str, intensity: float) -> None:
        self._change_controls(emotion=value, intensity=intensity)

    def set_listening(self, active: bool) -> None:
        """The user started or stopped talking (the backend eases in and out of listening)."""
        self._change_controls(listening=active)

    def set_gaze(self, target: str, x: float, y: float) -> None:
        """Where the eyes look, a point in [-1, 1]² (`target` names it for the page: camera,
        away, point)."""
        self._change_controls(gaze_x=x, gaze_y=y)

    def set_pose(self, pitch_deg: float, yaw_deg: float, roll_deg: float) -> None:
        """Head angles from the portrait's own pose (the backend eases toward them)."""
        self._change_controls(head_pitch_deg=pitch_deg, head_yaw_deg=yaw_deg, head_roll_deg=roll_deg)

    def _change_controls(self, **changes) -> None:
        """The controls every next render gets (they travel with each backend call)."""
        self.last_input_at = time.time()
        self.controls = replace(self.controls, **changes)

    def end_of_speech(self) -> None:
        self.last_input_at = time.time()
        tail = self._resampler.flush()
        if len(tail):
            self._speech.push(tail)
        self._eos = True
        self._wake.set()

    def _utterance_over(self, now: float) -> bool:
        return self._eos or now - self.last_input_at > self.config.speech_gap_s

    # ---------------- viewers ----------------
    def subscribe(self, want_audio: bool = False, want_raw: bool = False) -> Viewer:
        if len(self._viewers) >= self.config.max_viewers:
            raise ServiceError("too_many_viewers", f"session already has {self.config.max_viewers} viewers")
        viewer = Viewer(want_audio, asyncio.Queue(self.config.viewer_queue_items), want_raw)
        for event in self._greeting():
            self._put(viewer, EventItem(event, self.clock.t0))
        self._viewers.add(viewer)
        self.last_viewer_left_at = None
        return viewer

    def _greeting(self) -> list[ServerEvent]:
        """What a viewer that joins is told first: `session_ready`, then what it must know."""
        raise NotImplementedError

    def unsubscribe(self, viewer: Viewer) -> None:
        self._viewers.discard(viewer)
        if not self._viewers:
            self.last_viewer_left_at = time.time()

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def _put(self, viewer: Viewer, item: HostItem, force: bool = False) -> None:
        try:
            viewer.queue.put_nowait(item)
        except asyncio.QueueFull:
            if force:  # make room for the final item
                viewer.queue.get_nowait()
                viewer.queue.put_nowait(item)
            else:
                viewer.overflowed = True  # the relay ends this viewer with an error event

    def _publish(self, item) -> None:
        """To every viewer: a HostItem as it is, or (`to_item`) what each viewer asked for of it."""
        for viewer in list(self._viewers):
            self._put(viewer, item.to_item(viewer) if hasattr(item, "to_item") else item)

    def _event(self, event: ServerEvent) -> None:
        """To every viewer: at once, or (an event with a `pts`) just before that frame."""
        self._publish(EventItem(event, self.clock.t0))

    # ---------------- info ----------------
    @property
    def mode(self) -> str:
        raise NotImplementedError

    @property
    def speaking(self) -> bool:
        raise NotImplementedError

    @property
    def produced_frames(self) -> int:
        """Frames (or their span of audio) sent so far, on the session clock."""
        raise NotImplementedError

    def info(self) -> SessionInfo:
        return SessionInfo(
            session_id=self.session_id, persona_id=self.persona_id, mode=self.mode,
            requested_mode=self.requested_mode, sample_rate_hz=self.sample_rate_hz,
            emotion=self.controls.emotion, intensity=self.controls.intensity, viewers=self.viewers,
            frames_out=self.produced_frames, buffered_audio_s=len(self._speech) / SAMPLE_RATE_HZ,
            speaking=self.speaking, created_at=self.created_at, urls=session_urls(self.session_id),
            listening=self.controls.listening, gaze=(self.controls.gaze_x, self.controls.gaze_y),
            pose_deg={"pitch": self.controls.head_pitch_deg, "yaw": self.controls.head_yaw_deg,
                      "roll": self.controls.head_roll_deg},
        )

    def expired(self, now: float, idle_ttl_s: float, disconnect_grace_s: float) -> str | None:
        """Why the session should close now, or None."""
        if self._viewers:
            return None
        quiet_s = now - self.last_input_at
        if self.last_viewer_left_at is not None and now - self.last_viewer_left_at > disconnect_grace_s \
                and quiet_s > disconnect_grace_s:
            return "client disconnected"
        if quiet_s > idle_ttl_s:
            return "idle timeout"
        return None
