"""An avatar3d session without Ray: real espeak-ng speech, the real viseme tracker, the real clock.

What the page relies on: audio contiguous on the 16 kHz clock from the utterance's first
sample, every cue sent before the audio it covers, audio at most ~1 s ahead, `retract`
and `speech_ended` at an interrupt, moods, gestures and word timings passed on, and the
`listening`, `gaze` and `pose` controls passed on as cues (and told to a viewer that joins later).
"""
import asyncio
import functools
import time

import numpy as np
import pytest

from deployments.api.errors import ServiceError
from deployments.api.protocol import (
    AUDIO_MAGIC,
    FRAME_HEADER,
    AudioItem,
    EndItem,
    EventItem,
    GazeEvent,
    GestureEvent,
    ListeningEvent,
    PoseEvent,
    WordsEvent,
)
from deployments.session.avatar3d import LEAD_S, Avatar3dSession
from deployments.session.base import SessionConfig
from deployments.session.manager import SessionManager
from models.base import Controls
from models.visemes.tracker import VisemeTracker
from tests.speech import espeak_16k, needs_espeak

pytestmark = [needs_espeak, pytest.mark.timeout(120)]
SENTENCE = "Hello there, this is a short test of the lips."


def in_loop(test):
    """The test's body in a fresh event loop (no pytest-asyncio here)."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))
    return run


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return espeak_16k(SENTENCE)


async def open_session(**controls) -> Avatar3dSession:
    session = Avatar3dSession("h.abcdefghijklmnopqrstuv", "default", 16000, Controls(**controls),
                              SessionConfig(), VisemeTracker(), "/v1/avatars/default/glb")
    await session.start()
    return session


async def collect(viewer, until, timeout_s=30.0) -> list[tuple[float, object]]:
    """(arrival time, item) until `until(item)` holds."""
    got = []
    deadline = time.monotonic() + timeout_s
    while True:
        item = await asyncio.wait_for(viewer.queue.get(), deadline - time.monotonic())
        got.append((time.time(), item))
        if until(item):
            return got


def event_type(item) -> str | None:
    return item.event.type if isinstance(item, EventItem) else None


def speech_over(item) -> bool:
    return event_type(item) == "speech_ended" or isinstance(item, EndItem)


def events(got, kind: str) -> list:
    return [item.event for _, item in got if event_type(item) == kind]


async def speak(session, pcm: np.ndarray, chunk_s: float = 0.2) -> None:
    """Push like a TTS that streams faster than real time, then end the utterance."""
    step = int(chunk_s * 16000)
    for start in range(0, len(pcm), step):
        session.push_audio_16k(pcm[start:start + step])
        await asyncio.sleep(0.01)
    session.end_of_speech()


@in_loop
async def test_an_utterance_goes_out_as_cues_then_the_audio_they_cover(speech):
    session = await open_session()
    viewer = session.subscribe()
    try:
        await speak(session, speech)
        got = await collect(viewer, speech_over)
    finally:
        await session.close()
    kinds = [event_type(item) or type(item).__name__ for _, item in got]
    assert kinds[:2] == ["session_ready", "mood"]
    ready = got[0][1].event
    assert (ready.mode, ready.avatar_url, ready.output_sample_rate_hz) == ("avatar3d", "/v1/avatars/default/glb",
                                                                          16000)
    started = events(got, "speech_started")[0]
    assert started.sample == started.pts * 640

    cues_end_ms, audio_end = 0, started.sample
    for _, item in got:
        if event_type(item) == "visemes":
            assert item.event.sample == started.sample
            assert item.event.vtimes[0] == cues_end_ms  # contiguous with the cues before
            cues_end_ms = item.event.vtimes[-1] + item.event.vdurations[-1]
        elif isinstance(item, AudioItem):
            assert item.sample == audio_end  # contiguous on the clock
            audio_end = item.sample + len(item.pcm16) // 2
            covered_ms = (audio_end - started.sample) / 16
            assert cues_end_ms >= covered_ms - 1, "audio went out before the cues that cover it"
    assert audio_end - started.sample == len(speech)
    assert cues_end_ms >= len(speech) / 16
    visemes = [v for e in events(got, "visemes") for v in e.visemes]
    assert visemes[0] == "sil" and visemes[-1] == "sil"  # the padding
    assert len(set(visemes)) >= 5  # a sentence moves the lips through many shapes
    ended = events(got, "speech_ended")[0]
    assert ended.reason is None and ended.pts * 640 >= audio_end


@in_loop
async def test_audio_runs_at_most_the_lead_ahead_of_the_clock(speech):
    session = await open_session()
    viewer = session.subscribe()
    try:
        session.push_audio_16k(np.concatenate([speech, speech]))  # 5+ s at once
        session.end_of_speech()
        got = await collect(viewer, speech_over)
    finally:
        await session.close()
    for arrived, item in got:
        if isinstance(item, AudioItem):
            end_s = (item.sample + len(item.pcm16) // 2) / 16000
            assert end_s <= arrived - session.clock.t0 + LEAD_S + 0.05
    first_audio = next(item for _, item in got if isinstance(item, AudioItem))
    assert FRAME_HEADER.unpack(first_audio.wire()[:12]) == (AUDIO_MAGIC, first_audio.sample)


@in_loop
async def test_interrupt_retracts_and_a_new_utterance_starts_from_zero(speech):
    session = await open_session()
    viewer = session.subscribe()
    try:
        session.push_audio_16k(np.concatenate([speech, speech]))
        await collect(viewer, lambda item: isinstance(item, AudioItem))
        session.interrupt()
        got = await collect(viewer, speech_over)
        retract, ended = events(got, "retract")[0], events(got, "speech_ended")[0]
        assert ended.reason == "interrupted" and retract.from_pts == ended.pts
        assert [event_type(i) for _, i in got][-2:] == ["retract", "speech_ended"]

        await speak(session, speech)
        again = await collect(viewer, speech_over)
    finally:
        await session.close()
    started = events(again, "speech_started")[0]
    assert started.sample >= retract.sample  # never before the audio it took back
    first_cues = events(again, "visemes")[0]
    assert first_cues.vtimes[0] == 0
    audio = [i for _, i in again if isinstance(i, AudioItem)]
    assert audio[0].sample == started.sample
    assert sum(len(a.pcm16) // 2 for a in audio) == len(speech)


ALIGNED_SENTENCE = "We will show you the ship at the shore."  # one pocketsphinx aligns whole


@in_loop
async def test_known_text_gives_aligned_cues_in_one_message():
    speech = espeak_16k(ALIGNED_SENTENCE)
    session = await open_session()
    viewer = session.subscribe()
    try:
        session.set_text(ALIGNED_SENTENCE)
        await speak(session, speech)
        got = await collect(viewer, speech_over)
    finally:
        await session.close()
    cue_messages = events(got, "visemes")
    assert len(cue_messages) == 1  # held for the sentence, then aligned as a whole
    cues = cue_messages[0]
    assert cues.vtimes[-1] + cues.vdurations[-1] >= len(speech) / 16
    aligned, recognised = whole_utterance_cues(speech, ALIGNED_SENTENCE), whole_utterance_cues(speech, None)
    assert aligned != recognised  # so the session's cues say which it used
    assert list(zip(cues.visemes, cues.vtimes, cues.vdurations)) == aligned


def whole_utterance_cues(speech: np.ndarray, text: str | None) -> list[tuple[str, int, int]]:
    tracker = VisemeTracker()
    if text:
        tracker.set_text(text)
    tracker.feed(speech)
    tracker.finish()
    return [(c.viseme, c.start_ms, c.duration_ms) for c in tracker.cues]


@in_loop
async def test_word_timings_mood_and_gestures_pass_through(speech):
    session = await open_session(emotion="surprised", intensity=0.9)
    viewer = session.subscribe()
    try:
        first_mood = (await collect(viewer, lambda i: event_type(i) == "mood"))[-1][1].event
        session.set_words(WordsEvent(words=["hello", "there"], wtimes=[300, 700], wdurations=[350, 300]))
        session.gesture(GestureEvent(name="thumbup", duration_s=2.0))
        session.set_emotion("happy", 0.5)
        await speak(session, speech)
        got = await collect(viewer, speech_over)
    finally:
        await session.close()
    assert (first_mood.mood, first_mood.expression) == ("neutral", "😱")
    assert events(got, "gesture")[0].name == "thumbup"
    assert (events(got, "mood")[0].mood, events(got, "mood")[0].intensity) == ("happy", 0.5)
    words = events(got, "words")[0]
    started = events(got, "speech_started")[0]
    assert words.sample == started.sample and words.words == ["hello", "there"]
    kinds = [event_type(i) for _, i in got]
    assert kinds.index("words") < kinds.index("visemes")  # before any audio of the utterance


@in_loop
async def test_avatar3d_only_events_are_refused_in_other_modes(store):
    from deployments.config import AppArgs
    from deployments.rendering.local import LocalBackend
    from models.still import StillPipeline

    manager = SessionManager(AppArgs(), store, host_id="h", still=LocalBackend(StillPipeline(), store, inline=True))
    info = await manager.create_session(store.record.persona_id, "still", 16000, Controls())
    try:
        with pytest.raises(ServiceError) as err:
            await manager.control(info["session_id"], GestureEvent(name="ok"))
        assert err.value.code == "avatar3d_only"
    finally:
        await manager.shutdown()


def drain(viewer) -> list:
    """The events waiting in a viewer's queue now."""
    got = []
    while not viewer.queue.empty():
        item = viewer.queue.get_nowait()
        if isinstance(item, EventItem):
            got.append(item.event.wire())
    return got


@in_loop
async def test_listening_gaze_and_pose_reach_the_page_as_cues(store):
    """Through the manager's dispatch, as a WebSocket's control events arrive; a viewer that
    joins later learns what is in force (and nothing while all is at its default)."""
    from deployments.config import AppArgs
    from deployments.rendering.local import LocalBackend
    from models.still import StillPipeline

    manager = SessionManager(AppArgs(), store, host_id="h", still=LocalBackend(StillPipeline(), store, inline=True))
    info = await manager.create_session("default", "avatar3d", 16000, Controls())
    sid = info["session_id"]
    try:
        session = manager.sessions[sid]
        first = session.subscribe()
        assert [e["type"] for e in drain(first)] == ["session_ready", "mood"]  # all at its default: nothing more

        await manager.control(sid, ListeningEvent(active=True))
        await manager.control(sid, GazeEvent(target="away"))
        await manager.control(sid, PoseEvent(yaw_deg=12.5, pitch_deg=-4.0, roll_deg=3.0))
        assert drain(first) == [
            {"type": "listening", "active": True},
            {"type": "gaze", "target": "away", "x": 0.7, "y": 0.45},
            {"type": "pose", "yaw_deg": 12.5, "pitch_deg": -4.0, "roll_deg": 3.0},
        ]
        late = session.subscribe()
        assert drain(late)[2:] == [
            {"type": "listening", "active": True},
            {"type": "gaze", "target": "away", "x": 0.7, "y": 0.45},
            {"type": "pose", "yaw_deg": 12.5, "pitch_deg": -4.0, "roll_deg": 3.0},
        ]

        await manager.control(sid, GazeEvent(target="point", x=-0.25, y=0.5))
        assert drain(first) == drain(late) == [{"type": "gaze", "target": "point", "x": -0.25, "y": 0.5}]
        await manager.control(sid, ListeningEvent(active=False))
        await manager.control(sid, GazeEvent(target="camera"))
        await manager.control(sid, PoseEvent())
        assert drain(first) == [
            {"type": "listening", "active": False},
            {"type": "gaze", "target": "camera", "x": 0.0, "y": 0.0},
            {"type": "pose", "yaw_deg": 0.0, "pitch_deg": 0.0, "roll_deg": 0.0},
        ]
        # Back at rest and not listening: a new viewer is told only the gaze (an explicit
        # `camera` holds eye contact on the page, which TalkingHead's idle gaze does not).
        assert drain(session.subscribe())[2:] == [{"type": "gaze", "target": "camera", "x": 0.0, "y": 0.0}]
        assert manager.sessions[sid].info().listening is False
    finally:
        await manager.shutdown()
