"""When a session renders speech, and how much a call carries: pure functions, no clock reads.

The render loop (engine.py) reads the time and its buffers into a `SpeechState` and
asks these functions; they are tested as tables (tests/unit/test_scheduler.py), so no
test of the arithmetic depends on how busy the machine is.

- One chunk of `chunk_frames` a call while the lead is below `batch_lead_frames`
  (batching then would delay the first frames).
- Above it, up to `max_chunks_per_call` buffered chunks a call, as many as the backend,
  at the speed measured on this session's calls, renders within BATCH_RENDER_SHARE of
  the lead they start at; none extra before a speed is known.
- A call of `chunks` starts once the lead is down to `speech_lead_limit(chunks)`, so the
  lead stays within max_lead_frames + one chunk, as with one chunk a call.
- Fewer frames than a chunk only when the video is about to starve or no more audio comes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from models.base import FPS, SAMPLES_PER_FRAME

if TYPE_CHECKING:  # engine.py imports this module
    from .clock import SessionClock
    from .engine import SessionConfig

# A call of several chunks starts when the lead is down to speech_lead_limit(chunks); it
# may take at most this share of that lead to render, so that jitter never starves the video.
BATCH_RENDER_SHARE = 0.5
RENDER_SPEED_SMOOTHING = 0.3  # weight of the newest call in the smoothed render speed
# A wake just after the pause that ends an utterance: at it exactly, the pause may not count yet.
UTTERANCE_END_MARGIN_S = 0.001


@dataclass(frozen=True)
class SpeechState:
    """What the scheduler needs of a session at one instant."""

    lead_frames: int  # frames produced ahead of the one shown now
    buffered_samples: int  # 16 kHz speech waiting to be rendered
    utterance_over: bool = False  # end_of_speech, or a pause longer than speech_gap_s
    render_s_per_frame: float | None = None  # the active backend's smoothed speed; None before a call
    speaking: bool = False  # speech frames went out and the utterance has not ended

    @property
    def buffered_frames(self) -> int:
        return self.buffered_samples // SAMPLES_PER_FRAME


def speech_frames_to_render(config: SessionConfig, state: SpeechState) -> int:
    """How many buffered whole frames to render now (0: wait)."""
    chunks = chunks_per_call(config, state)
    if state.lead_frames > speech_lead_limit(config, chunks) or not state.buffered_frames:
        return 0
    if state.buffered_frames >= config.chunk_frames:
        return chunks * config.chunk_frames
    if state.lead_frames <= 1 or state.utterance_over:  # about to starve, or no more audio is coming
        return state.buffered_frames
    return 0


def chunks_per_call(config: SessionConfig, state: SpeechState) -> int:
    """Whole buffered chunks for the next call: one until the video is well ahead."""
    if state.lead_frames < config.batch_lead_frames:
        return 1
    chunks = min(config.max_chunks_per_call, state.buffered_frames // config.chunk_frames)
    while chunks > 1 and not batch_fits(config, chunks, state.render_s_per_frame):
        chunks -= 1
    return max(1, chunks)


def batch_fits(config: SessionConfig, chunks: int, render_s_per_frame: float | None) -> bool:
    """`chunks` in one call start at a lead of speech_lead_limit(chunks) frames: never
    below batch_lead_frames, and only if the backend, as fast as it has been on this
    session's calls, renders them within BATCH_RENDER_SHARE of that lead."""
    lead_frames = speech_lead_limit(config, chunks)
    if lead_frames < config.batch_lead_frames or render_s_per_frame is None:
        return False
    return chunks * config.chunk_frames * render_s_per_frame <= BATCH_RENDER_SHARE * lead_frames / FPS


def speech_lead_limit(config: SessionConfig, chunks: int) -> int:
    """Render `chunks` chunks once the lead is down to this: the lead stays within
    max_lead_frames + one chunk, as with one chunk a call."""
    return config.max_lead_frames - (chunks - 1) * config.chunk_frames


def smoothed_render_speed(last_s_per_frame: float | None, call_s: float, frames: int) -> float:
    """The render speed after a call of `frames` that took `call_s`: an exponential average,
    so one slow call (a GC pause, a neighbour's burst) does not stop batching for good."""
    per_frame_s = call_s / max(1, frames)
    if last_s_per_frame is None:
        return per_frame_s
    return last_s_per_frame + RENDER_SPEED_SMOOTHING * (per_frame_s - last_s_per_frame)


def wake_at_s(config: SessionConfig, state: SpeechState, clock: SessionClock, produced_pts: int,
              last_input_s: float) -> float:
    """When a loop with nothing to do must look again: the next idle frame is needed when
    produced_pts - idle_lead_frames is shown; buffered speech waits only for the lead to
    shrink; an utterance in progress, for the pause that ends it. Once that pause has
    passed its deadline is in the past, so it is not counted (it would spin the loop)."""
    due_s = clock.due(produced_pts - config.idle_lead_frames)
    if state.buffered_samples:
        due_s = min(due_s, clock.due(produced_pts - speech_lead_limit(config, chunks_per_call(config, state))))
    if (state.speaking or state.buffered_samples) and not state.utterance_over:
        due_s = min(due_s, last_input_s + config.speech_gap_s + UTTERANCE_END_MARGIN_S)
    return due_s
