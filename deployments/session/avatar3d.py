"""An avatar3d session: the speech itself and its lip-sync cues, for an avatar the browser draws.

No frames are rendered. Speech pushed in (any TTS's raw PCM) goes through a viseme
tracker; the session sends each utterance's audio on the 16 kHz output clock (sample
s is due at t0 + s / 16000, the clock video frames use: frame i = samples
[640 i, 640 (i+1))) with its cues, so that TalkingHead in the page moves the lips:

- cues for a span are always sent before the audio that covers it: audio goes out
  only as far as the tracker's final cues reach (`final_samples`);
- audio and cues run up to `LEAD_S` ahead of the clock, so the page never starves;
- an utterance starts (its `speech_started` and first sample fixed) when its first
  cues are final, at the next frame boundary and never before the last one ended;
- `text` (the sentence) makes the tracker align it instead of guessing phones;
  `words` (a TTS's word timings) pass through for TalkingHead's word mode;
- interrupt: `retract` and `speech_ended` (interrupted) at once; the tracker is
  reset by the loop before it is fed again (a feed may be running in a thread);
- `listening`, `gaze` and `pose` are passed on as cues for the page (eye contact and nods,
  where the eyes look, head angles); a viewer that joins later is told the state in force.
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

import numpy as np

from models.base import FPS, SAMPLE_RATE_HZ, SAMPLES_PER_FRAME, Controls
from models.emotion import talkinghead_mood

from ..api.protocol import (
    AudioItem,
    GazeCue,
    GestureCue,
    GestureEvent,
    ListeningCue,
    MoodEvent,
    PoseCue,
    RetractEvent,
    ServerEvent,
    SessionReady,
    SpeechEnded,
    SpeechStarted,
    VisemesEvent,
    WordsCue,
    WordsEvent,
)
from .base import SessionConfig, SessionCore

MODE = "avatar3d"
LEAD_S = 1.0  # audio and cues go out this far ahead of the clock
FEED_AHEAD_S = 0.5  # once started, the tracker is fed this far beyond what may go out (its hold-back)
FEED_CHUNK_SAMPLES = SAMPLE_RATE_HZ // 5  # 200 ms a tracker call: ~14 ms of CPU
# Once an utterance has started, audio streamed in small pieces (20 ms from a microphone) is
# fed in pieces of at least this: a loop turn and a thread hop each cost more than the
# decoding of 20 ms, and the page's pre-roll absorbs the extra delay.
MIN_FEED_SAMPLES = SAMPLE_RATE_HZ // 10
SPEAKING_WAKE_S = 0.1  # while speaking, look again this often (audio goes out as the clock moves)
IDLE_WAKE_S = 1.0


def pcm16(samples: np.ndarray) -> bytes:
    """float32 [-1, 1] (n,) -> PCM16LE bytes."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


@dataclass
class _Utterance:
    """The utterance being tracked. Sample offsets count from its first sample."""

    start_sample: int | None = None  # on the session clock; None until its first cues are final
    fed: list[np.ndarray] = field(default_factory=list)  # audio fed to the tracker, not yet sent
    fed_samples: int = 0
    sent_samples: int = 0
    cues_sent: bool = False  # any cue went out: text can no longer refine this one
    finished: bool = False  # the tracker's last cues are out; the rest of its audio follows

    def take_audio(self, n: int) -> np.ndarray:
        """The next n fed samples to send: (n,) float32."""
        data = np.concatenate(self.fed) if len(self.fed) > 1 else self.fed[0]
        head, rest = data[:n], data[n:]
        self.fed = [rest] if len(rest) else []
        self.sent_samples += len(head)
        return head


class Avatar3dSession(SessionCore):
    """`tracker`: a VisemeTracker (models.visemes), this session's own; `avatar_url`: the
    GLB the page loads."""

    def __init__(self, session_id: str, avatar_id: str, sample_rate_hz: int, controls: Controls,
                 config: SessionConfig, tracker, avatar_url: str):
        super().__init__(session_id, avatar_id, MODE, sample_rate_hz, controls, config)
        self.avatar_url = avatar_url
        self._tracker = tracker
        self._utterance: _Utterance | None = None
        self._last_end_sample = 0  # where the last utterance's audio ended on the clock
        self._pending_text: str | None = None  # for the next utterance
        self._pending_words: WordsEvent | None = None
        self._reset_tracker = False  # set by interrupt; done by the loop
        self._epoch = 0  # bumped by interrupt: a feed begun before it is dropped
        # The last `gaze` as the page got it; None until one came (the page keeps TalkingHead's
        # own idle gaze until then, which an explicit `camera` is not: it holds eye contact).
        self._gaze: GazeCue | None = None

    async def start(self) -> None:
        self._spawn(self._run(), "avatar3d loop")

    async def close(self, reason: str = "closed") -> None:
        await super().close(reason)
        self._tracker.close()

    def _forget_speech(self) -> None:
        self._utterance = None

    # ---------------- input ----------------
    def set_emotion(self, value: str, intensity: float) -> None:
        super().set_emotion(value, intensity)
        self._event(self._mood_event())

    def set_listening(self, active: bool) -> None:
        super().set_listening(active)
        self._event(ListeningCue(active=active))

    def set_gaze(self, target: str, x: float, y: float) -> None:
        super().set_gaze(target, x, y)
        self._gaze = GazeCue(target=target, x=x, y=y)
        self._event(self._gaze)

    def set_pose(self, pitch_deg: float, yaw_deg: float, roll_deg: float) -> None:
        super().set_pose(pitch_deg, yaw_deg, roll_deg)
        self._event(self._pose_cue())

    def set_text(self, text: str) -> None:
        """The sentence of the utterance not yet started, or else of the next one (the loop
        hands it to the tracker: a feed may be running in a thread)."""
        self.last_input_at = time.time()
        self._pending_text = text
        self._wake.set()

    def set_words(self, words: WordsEvent) -> None:
        """A TTS's word timings for the next utterance to start."""
        self.last_input_at = time.time()
        self._pending_words = words

    def gesture(self, event: GestureEvent) -> None:
        self.last_input_at = time.time()
        self._event(GestureCue(name=event.name, duration_s=event.duration_s, mirror=event.mirror))

    def interrupt(self) -> None:
        """Drop buffered speech; what was sent ahead is void from the next frame."""
        self.last_input_at = time.time()
        self._epoch += 1
        self._speech.clear()
        self._resampler.flush()
        u, self._utterance = self._utterance, None
        if u is not None and u.start_sample is not None:
            from_pts = self.clock.now_pts() + 1
            void_from = max(from_pts * SAMPLES_PER_FRAME, u.start_sample)
            self._last_end_sample = min(self._last_end_sample, void_from)
            self._event(RetractEvent(from_pts=from_pts, sample=void_from))
            self._event(SpeechEnded(reason="interrupted", pts=from_pts))
        self._reset_tracker = True
        self._pending_words = None
        self._eos = False
        self._wake.set()

    # ---------------- viewers ----------------
    def _greeting(self) -> list[ServerEvent]:
        ready = SessionReady(session_id=self.session_id, mode=MODE, requested_mode=MODE, fps=FPS,
                             sample_rate_hz=self.sample_rate_hz, avatar_url=self.avatar_url,
                             output_sample_rate_hz=SAMPLE_RATE_HZ)
        return [ready, self._mood_event(), *self._attention_cues()]

    def _attention_cues(self) -> list[ServerEvent]:
        """The listening, gaze and pose in force, for a viewer that joins: only what differs
        from a page's own start (not listening, TalkingHead's idle gaze, the head at rest)."""
        cues: list[ServerEvent] = []
        if self.controls.listening:
            cues.append(ListeningCue(active=True))
        if self._gaze is not None:
            cues.append(self._gaze)
        pose = self._pose_cue()
        if (pose.yaw_deg, pose.pitch_deg, pose.roll_deg) != (0.0, 0.0, 0.0):
            cues.append(pose)
        return cues

    def _pose_cue(self) -> PoseCue:
        c = self.controls
        return PoseCue(yaw_deg=c.head_yaw_deg, pitch_deg=c.head_pitch_deg, roll_deg=c.head_roll_deg)

    def _mood_event(self) -> MoodEvent:
        mood, expression = talkinghead_mood(self.controls.emotion, self.controls.intensity)
        return MoodEvent(emotion=self.controls.emotion, intensity=self.controls.intensity, mood=mood,
                         expression=expression, speaking=self.speaking)

    # ---------------- the loop ----------------
    def _after_failed_step(self) -> None:
        self._reset_tracker, self._utterance = True, None  # that utterance is lost; the next starts clean

    async def _step(self) -> bool:
        """Do the next piece of work; False when there is nothing to do until the clock moves."""
        if self._reset_tracker:
            self._reset_tracker = False
            self._tracker.reset()
            return True
        u = self._utterance
        if u is None:
            if not len(self._speech):
                return False
            u = self._utterance = _Utterance()
        if self._pending_text is not None and not u.cues_sent and not u.finished:
            text, self._pending_text = self._pending_text, None
            self._tracker.set_text(text)
        if len(self._speech) and self._may_feed(u):
            await self._feed(u, self._speech.take(FEED_CHUNK_SAMPLES))
            return True
        if not len(self._speech) and not u.finished and self._utterance_over(time.time()):
            self._send_cues(u, await self._call_tracker(self._tracker.finish))
            if self._utterance is u:
                u.finished = True
            return True
        return self._send_audio(u)

    def _may_feed(self, u: _Utterance) -> bool:
        """Before it starts, everything (text alignment needs the sentence); then only as far
        beyond what may go out as the tracker holds back, so buffered audio stays bounded."""
        if u.start_sample is None:
            return True
        if len(self._speech) < MIN_FEED_SAMPLES and not self._utterance_over(time.time()):
            return False
        return u.fed_samples < self._horizon_sample() - u.start_sample + FEED_AHEAD_S * SAMPLE_RATE_HZ

    async def _feed(self, u: _Utterance, chunk: np.ndarray) -> None:
        cues = await self._call_tracker(self._tracker.feed, chunk)
        if self._utterance is not u:
            return  # interrupted while the tracker ran
        u.fed.append(chunk)
        u.fed_samples += len(chunk)
        self._send_cues(u, cues)

    async def _call_tracker(self, method, *args):
        """In a thread (a chunk takes ~14 ms of CPU): other sessions on the host keep going."""
        return await asyncio.to_thread(method, *args)

    def _send_cues(self, u: _Utterance, cues: list) -> None:
        if not cues or self._utterance is not u:
            return
        if u.start_sample is None:
            self._begin(u)
        u.cues_sent = True
        self._event(VisemesEvent(sample=u.start_sample, visemes=[c.viseme for c in cues],
                                 vtimes=[c.start_ms for c in cues], vdurations=[c.duration_ms for c in cues]))

    def _begin(self, u: _Utterance) -> None:
        """Its first cues are final: it starts at the next frame, after the last utterance."""
        next_frame = self.clock.now_pts() + 1
        start_pts = max(next_frame, math.ceil(self._last_end_sample / SAMPLES_PER_FRAME))
        u.start_sample = start_pts * SAMPLES_PER_FRAME
        self._event(SpeechStarted(pts=start_pts, sample=u.start_sample))
        self._event(self._mood_event())  # now speaking: the page holds expressions until the end
        if self._pending_words is not None:
            w, self._pending_words = self._pending_words, None
            self._event(WordsCue(sample=u.start_sample, words=w.words, wtimes=w.wtimes, wdurations=w.wdurations))

    def _send_audio(self, u: _Utterance) -> bool:
        """Audio the final cues cover, up to the lead; the end of the utterance once all is out."""
        if u.start_sample is None:
            return False
        final = u.fed_samples if u.finished else min(self._tracker.final_samples, u.fed_samples)
        n = min(final, self._horizon_sample() - u.start_sample) - u.sent_samples
        if n > 0:
            first = u.start_sample + u.sent_samples
            self._publish(AudioItem(first, pcm16(u.take_audio(n))))
            self._last_end_sample = u.start_sample + u.sent_samples
            return True
        if u.finished and u.sent_samples == u.fed_samples:
            self._utterance = None
            self._event(SpeechEnded(pts=math.ceil(self._last_end_sample / SAMPLES_PER_FRAME)))
            self._event(self._mood_event())  # not speaking: the page may play an expression
            return True
        return False

    def _horizon_sample(self) -> int:
        """How far audio may go out now: LEAD_S ahead of the clock."""
        return int((time.time() - self.clock.t0 + LEAD_S) * SAMPLE_RATE_HZ)

    async def _sleep_until_next_deadline(self) -> None:
        timeout = SPEAKING_WAKE_S if self._utterance is not None else IDLE_WAKE_S
        if self._utterance is not None and not self._eos:  # the pause that ends an utterance
            timeout = min(timeout, max(0.0, self.last_input_at + self.config.speech_gap_s - time.time()) + 0.001)
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # ---------------- info ----------------
    @property
    def mode(self) -> str:
        return MODE

    @property
    def speaking(self) -> bool:
        return self._utterance is not None and self._utterance.start_sample is not None

    @property
    def produced_frames(self) -> int:
        return math.ceil(self._last_end_sample / SAMPLES_PER_FRAME)
