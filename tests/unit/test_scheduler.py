"""The speech chunk scheduler as tables: pure arithmetic, no clock, no sleeps.

The config throughout: chunks of 5 frames, a lead of at most 25 frames, batching from a
lead of 10, up to 4 chunks a call. At 25 fps and BATCH_RENDER_SHARE 0.5, a call of
2 chunks starts at a lead of 20 (0.8 s) and fits at <= 40 ms a frame; 3 chunks at 15
(0.6 s), <= 20 ms a frame; 4 chunks at 10 (0.4 s), <= 10 ms a frame.
"""
import pytest

from deployments.session.clock import SessionClock
from deployments.session.engine import SessionConfig
from deployments.session.scheduler import (
    BATCH_RENDER_SHARE,
    RENDER_SPEED_SMOOTHING,
    SpeechState,
    batch_fits,
    smoothed_render_speed,
    speech_frames_to_render,
    speech_lead_limit,
    wake_at_s,
)
from models.base import SAMPLES_PER_FRAME

CONFIG = SessionConfig(chunk_frames=5, max_lead_frames=25, batch_lead_frames=10, max_chunks_per_call=4,
                       idle_lead_frames=2, speech_gap_s=0.4)
FAST_S = 0.001  # s a frame: any batch fits
T0_S = 100.0
PRODUCED_PTS = 50


def state(lead_frames, buffered_frames, over=False, s_per_frame=None, extra_samples=0, speaking=False):
    return SpeechState(lead_frames=lead_frames, buffered_samples=buffered_frames * SAMPLES_PER_FRAME + extra_samples,
                       utterance_over=over, render_s_per_frame=s_per_frame, speaking=speaking)


def test_the_table_uses_the_documented_constants():
    assert (BATCH_RENDER_SHARE, RENDER_SPEED_SMOOTHING) == (0.5, 0.3)


@pytest.mark.parametrize("why, speech, frames", [
    # waiting for the lead to shrink
    ("lead above the one-chunk limit", state(26, 20), 0),
    ("lead above the 4-chunk limit of a fast backend", state(12, 20, s_per_frame=FAST_S), 0),
    ("nothing buffered", state(0, 0), 0),
    ("less than a frame buffered, even at the end", state(0, 0, over=True, extra_samples=600), 0),
    # one chunk
    ("lead at the one-chunk limit", state(25, 20), 5),
    ("below batch_lead_frames a fast backend still gets one chunk", state(9, 20, s_per_frame=FAST_S), 5),
    ("no batching before a speed is known", state(10, 20), 5),
    ("a backend too slow for 2 chunks", state(20, 20, s_per_frame=0.05), 5),
    ("one chunk, not the whole buffer, when the utterance is over", state(3, 12, over=True), 5),
    # batching
    ("4 chunks at their limit, fast backend", state(10, 20, s_per_frame=FAST_S), 20),
    ("never more than max_chunks_per_call", state(10, 40, s_per_frame=0.0), 20),
    ("only as many chunks as are buffered", state(10, 12, s_per_frame=FAST_S), 10),
    ("25 ms a frame fits 2 chunks, not 3", state(20, 20, s_per_frame=0.025), 10),
    ("30 ms a frame at a lead of 15: 2 chunks", state(15, 20, s_per_frame=0.03), 10),
    ("exactly 40 ms a frame still fits 2 chunks", state(20, 20, s_per_frame=0.04), 10),
    # the partial chunk
    ("about to starve (lead 1)", state(1, 3), 3),
    ("about to starve (lead 0)", state(0, 3), 3),
    ("more audio may come: wait for a whole chunk", state(2, 3), 0),
    ("the utterance is over", state(5, 3, over=True), 3),
    ("the utterance is over but the lead is too long", state(26, 3, over=True), 0),
])
def test_speech_frames_to_render(why, speech, frames):
    assert speech_frames_to_render(CONFIG, speech) == frames, why


@pytest.mark.parametrize("chunks, s_per_frame, fits", [
    (2, None, False),  # no speed measured yet
    (2, 0.04, True),
    (2, 0.041, False),
    (3, 0.02, True),
    (3, 0.021, False),
    (4, 0.01, True),
    (4, 0.011, False),
    (5, 0.0, False),  # would start at a lead of 5, below batch_lead_frames
])
def test_batch_fits_within_the_share_of_its_lead(chunks, s_per_frame, fits):
    assert batch_fits(CONFIG, chunks, s_per_frame) is fits


@pytest.mark.parametrize("chunks, lead_frames", [(1, 25), (2, 20), (3, 15), (4, 10)])
def test_the_lead_limit_keeps_the_lead_as_with_one_chunk_a_call(chunks, lead_frames):
    assert speech_lead_limit(CONFIG, chunks) == lead_frames
    assert speech_lead_limit(CONFIG, chunks) + chunks * CONFIG.chunk_frames == CONFIG.max_lead_frames + 5


@pytest.mark.parametrize("last_s, call_s, frames, smoothed_s", [
    (None, 0.2, 10, 0.02),  # the first call sets it
    (0.02, 0.2, 10, 0.02),  # steady
    (0.02, 0.5, 10, 0.02 + 0.3 * (0.05 - 0.02)),  # one slow call moves it 30% of the way
    (0.05, 0.1, 10, 0.05 + 0.3 * (0.01 - 0.05)),  # and one fast call back
    (None, 0.03, 0, 0.03),  # a call of no whole frame counts as one
])
def test_smoothed_render_speed(last_s, call_s, frames, smoothed_s):
    assert smoothed_render_speed(last_s, call_s, frames) == pytest.approx(smoothed_s)


IDLE_DUE_S = T0_S + (PRODUCED_PTS - 2) / 25  # when produced_pts - idle_lead_frames is shown


@pytest.mark.parametrize("why, speech, last_input_s, wake_s", [
    ("idle: the next idle frame", state(30, 0), 0.0, IDLE_DUE_S),
    ("speech waits for the lead to reach the one-chunk limit", state(30, 20, over=True), 0.0,
     T0_S + (PRODUCED_PTS - 25) / 25),
    ("a fast backend waits for the 4-chunk limit", state(30, 20, over=True, s_per_frame=FAST_S), 0.0,
     T0_S + (PRODUCED_PTS - 10) / 25),
    ("speaking: wake when the pause ends the utterance", state(30, 0, speaking=True), 100.5, 100.5 + 0.4 + 0.001),
    ("an utterance already over: its pause is not counted", state(30, 0, over=True, speaking=True), 100.5,
     IDLE_DUE_S),
    ("buffered speech: the earlier of lead and pause", state(30, 20), 102.0, T0_S + (PRODUCED_PTS - 25) / 25),
    ("a partial frame still counts as speech", state(30, 0, extra_samples=100), 100.5, 100.5 + 0.4 + 0.001),
])
def test_wake_at(why, speech, last_input_s, wake_s):
    clock = SessionClock(t0=T0_S)
    assert wake_at_s(CONFIG, speech, clock, PRODUCED_PTS, last_input_s) == pytest.approx(wake_s), why
