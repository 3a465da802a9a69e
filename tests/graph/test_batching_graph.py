"""Cross-session batching on the real graph: eight pattern sessions speak at once through one
backend replica with `batch_sessions: 8`; every session's frames still show exactly their own
audio, frame for frame, and the backend drew several sessions in one call."""
from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import pytest

from tests.local_cluster import deploy_app
from tests.graph.test_graph import metric_values, speech_of
from tests.graph_client import WsViewer, create_persona, create_session, open_ws
from tests.streaming import assert_speech_frames_match_audio, coded_pcm16

pytestmark = pytest.mark.graph
SESSIONS = 8
FRAMES = 100  # 4 s of speech each


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory):
    args = {
        "data_dir": str(tmp_path_factory.mktemp("data")),
        "enable_test_modes": True,
        "limits": {"max_sessions": SESSIONS + 2},
        "backends": {"pattern": {"num_gpus": 0.1, "num_cpus": 0.1, "chunk_frames": 5, "max_replicas": 1,
                                 "batch_sessions": SESSIONS,
                                 # 3 ms of CPU a frame: calls last long enough for others to queue
                                 "options": {"size": 64, "work_ms_per_frame": 3.0}}},
    }
    base = deploy_app(ray_serve, args)
    return {"base": base, "persona": create_persona(base, save=True)}


def test_eight_sessions_speaking_at_once_keep_exact_sync_with_batching_on(app):
    base = app["base"]
    sessions = [create_session(base, app["persona"], "pattern")["session_id"] for _ in range(SESSIONS)]

    async def speak(session_id: str) -> WsViewer:
        async with await open_ws(base, session_id) as ws:
            viewer = WsViewer(ws)
            await viewer.recv_until(lambda v: v.in_mode("pattern"), 90)
            pcm = coded_pcm16(FRAMES)
            for i in range(FRAMES // 5):  # 200 ms chunks, faster than real time
                await ws.send(pcm[i * 3200:(i + 1) * 3200].tobytes())
            await ws.send(json.dumps({"type": "end_of_speech"}))
            await viewer.recv_until(lambda v: v.has("speech_ended"), 60)
            return viewer

    async def all_at_once():
        return await asyncio.gather(*(speak(session_id) for session_id in sessions))

    viewers = asyncio.run(all_at_once())
    for viewer in viewers:
        assert_speech_frames_match_audio(speech_of(viewer.frames), FRAMES)
        all_pts = [pts for pts, *_ in viewer.frames]
        assert all_pts == sorted(set(all_pts))

    port = os.environ["LOCKN_TEST_METRICS_PORT"]
    deadline, batched = time.time() + 20, 0.0
    while time.time() < deadline and not batched:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        sessions_sum = metric_values(text, "ray_lockn_backend_batch_sessions_sum").get("pattern", 0.0)
        calls = metric_values(text, "ray_lockn_backend_batch_sessions_count").get("pattern", 0.0)
        batched = sessions_sum - calls  # sessions beyond one per call: > 0 when calls were shared
        time.sleep(1)
    lines = [line for line in text.splitlines() if line.startswith("ray_lockn_backend_batch_sessions")]
    assert batched > 0, f"no render call drew more than one session: {lines}"
    for session_id in sessions:
        httpx.delete(f"{base}/v1/sessions/{session_id}")
