"""One session's render loop without Ray: pattern backend, real clock, real paced relay."""
import asyncio

import numpy as np
import pytest

from deployments.api.errors import ServiceError
from deployments.backend import BackendDeployment, rendered
from deployments.inputs.audio_in import pcm16_to_float
from deployments.rendering.local import LocalBackend
from deployments.api.protocol import EndItem, FramesItem
from deployments.session.engine import Session, SessionConfig
from deployments.transports.encode import decode_jpeg
from deployments.transports.streams import paced
from models.base import SAMPLES_PER_FRAME, Controls
from models.modes import build_pipeline
from models.still import StillPipeline
from models.testing import FAIL_CODE, PatternPipeline
from tests.streaming import assert_speech_frames_match_audio, coded_pcm16, frame_info


async def items(viewer):
    while True:
        item = await viewer.queue.get()
        yield item
        if isinstance(item, EndItem):
            return


async def open_session(store, lookahead=0, chunk_frames=5, pipeline=None) -> Session:
    """A started session of the pattern pipeline (or `pipeline`), still mode as its fallback."""
    session = Session(
        "h.abcdefghijklmnopqrstuv", store.record.persona_id, "pattern", 16000, Controls(),
        LocalBackend(StillPipeline(), store),
        LocalBackend(pipeline or PatternPipeline(lookahead_frames=lookahead), store),
        SessionConfig(chunk_frames=chunk_frames))
    await session.start()
    return session


async def watch(session, until, want_audio=False, timeout_s=15.0):
    """Collect (kind, pts, payload) from a paced viewer until `until(events, frames)` holds."""
    viewer = session.subscribe(want_audio)
    events, frames = [], []

    async def run():
        async for out in paced(items(viewer)):
            if out.kind == "event":
                events.append(out.event.wire() | {"pts": out.pts})
            else:
                frames.append((out.pts, *frame_info(out.jpeg), out.audio))
            if until(events, frames):
                return

    try:
        await asyncio.wait_for(run(), timeout_s)
    finally:
        session.unsubscribe(viewer)
    return events, frames


def has(events, kind):
    return any(e["type"] == kind for e in events)


async def wait_for_mode(session, mode):
    for _ in range(200):
        if session.mode == mode:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"session never reached mode {mode}")


@pytest.mark.parametrize("lookahead", [0, 3])
def test_each_speech_frame_shows_its_own_audio_span(store, lookahead):
    async def main():
        session = await open_session(store, lookahead)
        await wait_for_mode(session, "pattern")
        session.push_audio(pcm16_to_float(coded_pcm16(50).tobytes()))
        session.end_of_speech()
        events, frames = await watch(session, lambda e, f: has(e, "speech_ended"))
        await session.close()
        return events, frames

    events, frames = asyncio.run(main())
    speech = [(p, c) for p, is_speech, c, _ in frames if is_speech]
    assert_speech_frames_match_audio(speech, 50)
    started = next(e for e in events if e["type"] == "speech_started")
    assert started["pts"] == speech[0][0]
    pts = [p for p, *_ in frames]
    assert pts == sorted(set(pts)), "pts strictly increase"


def test_output_audio_is_on_the_frame_clock(store):
    async def main():
        session = await open_session(store)
        await wait_for_mode(session, "pattern")
        session.push_audio(pcm16_to_float(coded_pcm16(20).tobytes()))
        session.end_of_speech()
        _, frames = await watch(session, lambda e, f: has(e, "speech_ended"), want_audio=True)
        await session.close()
        return frames

    for pts, is_speech, code, audio in asyncio.run(main()):
        expected = code / 32768 if is_speech else 0.0
        assert audio.shape == (SAMPLES_PER_FRAME,) and np.allclose(audio, expected)


def test_interrupt_returns_to_idle_within_a_frame(store):
    interrupted_at = []

    def interrupt_after_10_speech_frames(events, frames):
        speech = sum(1 for _, is_speech, *_ in frames if is_speech)
        if speech >= 10 and not interrupted_at:
            interrupted_at.append(session.clock.now_pts())
            session.interrupt()
        return bool(interrupted_at) and frames[-1][0] > interrupted_at[0] + 15

    async def main():
        global session
        session = await open_session(store)
        await wait_for_mode(session, "pattern")
        session.push_audio(pcm16_to_float(coded_pcm16(250).tobytes()))
        events, frames = await watch(session, interrupt_after_10_speech_frames)
        await session.close()
        return events, frames

    events, frames = asyncio.run(main())
    late_speech = [p for p, is_speech, *_ in frames if is_speech and p > interrupted_at[0] + 1]
    assert not late_speech, f"speech frames after the interrupt at {interrupted_at[0]}: {late_speech}"
    ended = [e for e in events if e["type"] == "speech_ended"]
    assert ended and ended[0]["reason"] == "interrupted"
    assert any(not is_speech and p > interrupted_at[0] for p, is_speech, *_ in frames), "idle again"


def test_backend_failure_becomes_an_error_and_still_mode(store):
    async def main():
        session = await open_session(store)
        await wait_for_mode(session, "pattern")
        bad = np.full(5 * SAMPLES_PER_FRAME, FAIL_CODE, np.int16)
        session.push_audio(pcm16_to_float(bad.tobytes()))
        session.end_of_speech()
        events, frames = await watch(session, lambda e, f: has(e, "mode_changed") and len(f) >= 30)
        await session.close()
        return session, events, frames

    session, events, frames = asyncio.run(main())
    error = next(e for e in events if e["type"] == "error")
    assert error["code"] == "backend_error" and "injected failure" in error["reason"]
    assert any(e["type"] == "mode_changed" and e["mode"] == "still" for e in events)
    assert session.mode == "still" and len(frames) >= 30  # and it kept streaming


class EncodingBackend(LocalBackend):
    """A local pipeline that hands back frames the way a backend deployment does when the
    session gives a FrameFormat (BackendDeployment._rendered): JPEG-encoded, raw on request."""

    def __init__(self, pipeline, store):
        super().__init__(pipeline, store)
        self.formats = []

    async def render(self, persona_id, carry, audio16k, controls, fmt=None):
        return await self._encoded(fmt, self.pipeline.render, persona_id, carry, audio16k, controls)

    async def idle(self, persona_id, carry, n, controls, fmt=None):
        return await self._encoded(fmt, self.pipeline.idle, persona_id, carry, n, controls)

    async def flush(self, persona_id, carry, controls, fmt=None):
        return await self._encoded(fmt, self.pipeline.flush, persona_id, carry, controls)

    async def _encoded(self, fmt, step, persona_id, *args):
        self.formats.append(fmt)
        return rendered(fmt, step, await self.personas.get(persona_id), *args)


def test_frames_encoded_by_the_backend_are_published_as_they_come(store):
    backend = EncodingBackend(PatternPipeline(), store)

    async def main():
        session = Session("h.abcdefghijklmnopqrstuv", store.record.persona_id, "pattern", 16000, Controls(),
                          LocalBackend(StillPipeline(), store), backend, SessionConfig(jpeg_quality=90))
        await session.start()
        await wait_for_mode(session, "pattern")
        session.push_audio(pcm16_to_float(coded_pcm16(30).tobytes()))
        session.end_of_speech()
        events, frames = await watch(session, lambda e, f: has(e, "speech_ended"))
        formats_before_raw = len(backend.formats)
        raw_viewer = session.subscribe(want_raw=True)  # as a WebRTC peer does
        raw_items = []
        while sum(len(i.pts) for i in raw_items) < 10:
            item = await asyncio.wait_for(raw_viewer.queue.get(), 5)
            raw_items += [item] if isinstance(item, FramesItem) else []
        await session.close()
        return events, frames, formats_before_raw, raw_items

    events, frames, before_raw, raw_items = asyncio.run(main())
    assert_speech_frames_match_audio([(p, c) for p, is_speech, c, _ in frames if is_speech], 30)
    asked = [f for f in backend.formats if f is not None]
    assert asked and all(f.jpeg_quality == 90 for f in asked)
    assert not any(f.raw for f in asked[:before_raw - 1]), "JPEGs alone while no viewer wants raw frames"
    assert asked[-1].raw, "raw frames asked for once a viewer in the host wants them"
    for item in raw_items:  # raw from the backend, or (rendered before the viewer came) decoded from the JPEGs
        assert item.frames.shape == (len(item.pts), 64, 64, 3) and item.frames.dtype == np.uint8
        for frame, jpeg in zip(item.frames, item.jpegs):
            assert np.abs(frame.astype(int) - decode_jpeg(jpeg)).mean() < 2.0


class LeadRecordingBackend(LocalBackend):
    """A local pattern backend that notes, for each render call, its frames and the video's lead then."""

    def __init__(self, pipeline, store, seconds_per_frame: float = 0.0):
        super().__init__(pipeline, store)
        self.session, self.calls = None, []  # (frames in the call, lead in frames when called)
        self.seconds_per_frame = seconds_per_frame  # a slower backend: this long a frame, at least

    async def render(self, persona_id, carry, audio16k, controls, fmt=None):
        lead = self.session._produced_pts - self.session.clock.now_pts()
        self.calls.append((len(audio16k) // SAMPLES_PER_FRAME, lead))
        await asyncio.sleep(self.seconds_per_frame * (len(audio16k) // SAMPLES_PER_FRAME))
        return await super().render(persona_id, carry, audio16k, controls, fmt)


def speak_through(store, backend, config, frames_of_speech: int):
    """A TTS-like burst of speech through a session on `backend`: the speech frames seen."""
    async def main():
        session = Session("h.abcdefghijklmnopqrstuv", store.record.persona_id, "pattern", 16000, Controls(),
                          LocalBackend(StillPipeline(), store), backend, config)
        backend.session = session
        await session.start()
        await wait_for_mode(session, "pattern")
        session.push_audio(pcm16_to_float(coded_pcm16(frames_of_speech).tobytes()))  # all at once
        session.end_of_speech()
        events, frames = await watch(session, lambda e, f: has(e, "speech_ended"))
        await session.close()
        return frames

    return asyncio.run(main())


def test_speech_well_ahead_goes_to_the_backend_two_chunks_a_call(store):
    backend = LeadRecordingBackend(PatternPipeline(), store)
    config = SessionConfig(chunk_frames=5, max_chunks_per_call=2)
    frames = speak_through(store, backend, config, 62)
    assert_speech_frames_match_audio([(p, c) for p, is_speech, c, _ in frames if is_speech], 62)
    sizes = [n for n, _ in backend.calls]
    assert sizes[0] == 5, "the first frames are not held back for a second chunk"
    assert 10 in sizes and set(sizes[:-1]) <= {5, 10} and sizes[-1] == 2, sizes
    for n, lead in backend.calls:
        if n == 10:
            assert lead >= config.batch_lead_frames, f"two chunks at a lead of only {lead} frames"
        assert lead + n <= config.max_lead_frames + config.chunk_frames + 1, "the lead stays as with one chunk a call"


@pytest.mark.parametrize("seconds_per_frame, most_chunks", [(0.0, 4), (0.025, 2)])
def test_a_call_carries_as_many_chunks_as_the_backend_renders_within_half_the_lead(
        store, seconds_per_frame, most_chunks):
    """Up to 4 chunks a call, only as many as this backend's measured speed renders in half
    the lead they start at: 2 at 25 ms a frame (10 frames, 0.25 s, from a lead of 0.8 s;
    3 would take 0.375 s from a lead of 0.6 s)."""
    backend = LeadRecordingBackend(PatternPipeline(), store, seconds_per_frame)
    config = SessionConfig(chunk_frames=5, max_chunks_per_call=4)
    frames = speak_through(store, backend, config, 92)
    assert_speech_frames_match_audio([(p, c) for p, is_speech, c, _ in frames if is_speech], 92)
    sizes = [n for n, _ in backend.calls]
    assert sizes[0] == 5 and max(sizes) == most_chunks * 5, sizes
    assert all(lead >= 1 for _, lead in backend.calls[1:]), f"the video starved: {backend.calls}"


def test_a_backend_call_of_several_chunks_renders_them_one_by_one(tmp_path):
    class ChunkRecording(PatternPipeline):
        def __init__(self):
            super().__init__(size=16, lookahead_frames=3)
            self.chunks = []

        def render(self, persona, carry, audio16k, controls):
            self.chunks.append(len(audio16k) // SAMPLES_PER_FRAME)
            return super().render(persona, carry, audio16k, controls)

    backend = BackendDeployment("pattern", str(tmp_path), {"size": 16}, chunk_frames=5, pipeline_factory=build_pipeline)
    backend.pipeline = pipeline = ChunkRecording()
    persona = pipeline.prepare(None)
    audio = pcm16_to_float(coded_pcm16(12).tobytes())
    frames, carry = backend._render_chunks(persona, pipeline.start(persona, Controls()), audio, Controls())
    assert pipeline.chunks == [5, 5, 2]
    one_call = PatternPipeline(size=16, lookahead_frames=3)
    expected, expected_carry = one_call.render(persona, one_call.start(persona, Controls()), audio, Controls())
    assert np.array_equal(frames, expected) and np.array_equal(carry.held, expected_carry.held)


def test_a_refused_push_leaves_no_seam_in_the_stream(store):
    """Audio that cannot fit is refused before the stream resampler sees it: nothing of it
    is buffered and the resampler holds nothing of it for the next push."""
    async def main():
        session = Session("h.abcdefghijklmnopqrstuv", store.record.persona_id, "still", 48000, Controls(),
                          LocalBackend(StillPipeline(), store), None, SessionConfig(max_buffered_audio_s=1.0))
        with pytest.raises(ServiceError) as refused:
            session.push_audio(np.zeros(2 * 48000, np.float32))
        assert refused.value.code == "audio_buffer_full"
        assert len(session._speech) == 0 and len(session._resampler.flush()) == 0
        session.push_audio(np.zeros(48000 // 2, np.float32))  # half a second fits
        assert 7900 <= len(session._speech) + len(session._resampler.flush()) <= 8100

    asyncio.run(main())
