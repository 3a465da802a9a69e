"""What sessions and WebRTC feeds report to the serving metrics (deployments/serving_metrics.py),
without Ray: a recording sink in place of Prometheus. tests/graph/test_graph.py scrapes the
real ones from a cluster."""
from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import numpy as np

from deployments.api.protocol import FramesItem
from deployments.inputs.audio_in import pcm16_to_float
from deployments.serving_metrics import NoServingMetrics, ServingMetrics
from deployments.session.base import Viewer
from deployments.session.clock import SessionClock, SpeechBuffer
from deployments.transports.webrtc import SessionFeed
from models.base import SAMPLES_PER_FRAME
from tests.streaming import coded_pcm16
from tests.unit.test_session import has, open_session, wait_for_mode, watch


class RecordingMetrics:
    """Keeps every call, as the Prometheus sink would count or observe it."""

    def __init__(self):
        self.calls: dict[str, list[tuple]] = defaultdict(list)

    def __getattr__(self, name: str):
        if name not in ServingMetrics.__dict__:
            raise AttributeError(name)
        return lambda *args: self.calls[name].append(args)


def test_the_no_op_sink_has_every_method_of_the_protocol():
    methods = {name for name in ServingMetrics.__dict__ if not name.startswith("_")}
    assert methods <= set(dir(NoServingMetrics))


def test_a_session_reports_its_frames_first_frame_and_audio_latency(store):
    async def main():
        session = await open_session(store)
        session.metrics = metrics = RecordingMetrics()
        await wait_for_mode(session, "pattern")
        sent_at = time.time()
        session.push_audio(pcm16_to_float(coded_pcm16(50).tobytes()))
        session.end_of_speech()
        await watch(session, lambda e, f: has(e, "speech_ended"))
        await session.close()
        return metrics, sent_at

    metrics, sent_at = asyncio.run(main())
    published = metrics.calls["frames_published"]
    assert {mode for mode, *_ in published} <= {"still", "pattern"}
    assert sum(frames for mode, frames, _, _ in published if mode == "pattern") >= 50
    assert all(0 <= late <= frames for _, frames, late, _ in published)
    assert any(viewers == 1 for *_, viewers in published)  # the watcher
    (first,) = metrics.calls["first_frame"]  # once per session
    assert first[0] == "still" and 0 <= first[1] < 5
    latencies = [seconds for mode, seconds in metrics.calls["audio_to_frame"]]
    assert latencies and all(mode == "pattern" for mode, _ in metrics.calls["audio_to_frame"])
    # 2 s of audio sent at once: its last chunk is due about 2 s after it arrived, its first soon after.
    assert 0 < min(latencies) < 1.0 and 1.0 < max(latencies) < 3.0, latencies


def test_the_speech_buffer_knows_when_the_audio_taken_arrived():
    buffer = SpeechBuffer(16000 * 10)
    buffer.push(np.zeros(1000, np.float32), now=1.0)
    buffer.push(np.zeros(1000, np.float32), now=2.0)
    buffer.take_frames(1)  # samples 0..639: the first push
    assert buffer.last_taken_arrival == 1.0
    buffer.take_frames(1)  # ..1279: the second push brought the last of them
    assert buffer.last_taken_arrival == 2.0
    buffer.push(np.zeros(SAMPLES_PER_FRAME, np.float32), now=3.0)
    buffer.take_frames(1)  # ..1919: still the second push
    assert buffer.last_taken_arrival == 2.0
    buffer.take_all_padded()
    assert buffer.last_taken_arrival == 3.0
    buffer.push(np.zeros(10, np.float32), now=4.0)
    buffer.clear()
    buffer.push(np.zeros(SAMPLES_PER_FRAME, np.float32), now=5.0)
    buffer.take_frames(1)
    assert buffer.last_taken_arrival == 5.0  # a clear forgets what it dropped


def test_a_webrtc_feed_pairs_each_frames_audio_with_its_video():
    async def main():
        clock = SessionClock()
        metrics = RecordingMetrics()
        feed = SessionFeed(Viewer(want_audio=True, queue=asyncio.Queue(), want_raw=True), clock, metrics)
        frames = np.zeros((3, 16, 16, 3), np.uint8)
        feed._ingest(FramesItem(clock.t0, [0, 1, 2], [b""] * 3, audio=np.zeros((3, SAMPLES_PER_FRAME), np.float32),
                                frames=frames))
        pts, _ = await feed.next_frame(-1)
        await feed.audio_of(pts)  # audio after video
        await feed.audio_of(1)
        await asyncio.sleep(0.01)
        await feed.next_frame(0)  # video after audio
        return metrics

    metrics = asyncio.run(main())
    offsets = [seconds for (seconds,) in metrics.calls["webrtc_av_offset"]]
    assert len(offsets) == 2
    assert 0 <= offsets[0] < 0.05 and -0.5 < offsets[1] < -0.005  # audio first: negative
