"""The photoreal mode through the whole graph on a real local Ray cluster, on CPU.

One backend deployment holds both pipelines: LivePortrait's narrow seeded networks and
ONNX face stand-ins from an HF cache folder written here (as tests/graph/
test_liveportrait_graph.py does, idle motion and blinks off) and MuseTalk's tiny preset.
A session switches to photoreal, streams every frame of an utterance (MuseTalk's
lookahead flushed at its end), and its lower face changes with speech only.
"""
import asyncio
import json

import httpx
import numpy as np
import pytest

from models.liveportrait.pipeline import network_config
from tests.local_cluster import deploy_app
from tests.graph.test_liveportrait_graph import (
    CHUNK_SAMPLES, GRAPH_NETWORKS, PORTRAIT_SIDE, STILL_LIFE, decode, event_pts, speech_pcm16,
)
from tests.graph_client import WsViewer, create_persona, create_session, open_ws
from tests.parity.test_liveportrait_weights import write_liveportrait_cache

pytestmark = pytest.mark.graph
SPEECH_S = 2.0
SPEECH_FRAMES = round(SPEECH_S * 25)


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory):
    cache = write_liveportrait_cache(tmp_path_factory.mktemp("hf-cache"), network_config(GRAPH_NETWORKS), mouth_gain=3.0)
    config = {"liveportrait": {"networks": GRAPH_NETWORKS, **STILL_LIFE}, "musetalk": "tiny"}
    options = {"config": config, "device": "cpu", "cache_dir": str(cache)}
    args = {
        "data_dir": str(tmp_path_factory.mktemp("data")),
        "timeouts": {"disconnect_grace_s": 5},
        "backends": {"photoreal": {"num_gpus": 0.4, "num_cpus": 0.25, "chunk_frames": 8, "options": options}},
    }
    base = deploy_app(ray_serve, args)
    return {"base": base, "persona": create_persona(base, save=True, size=PORTRAIT_SIDE)}


def test_photoreal_is_available_with_both_pipelines_files(app):
    modes = {m["name"]: m for m in httpx.get(f"{app['base']}/v1/modes").json()["modes"]}
    assert modes["photoreal"]["available"] and modes["photoreal"]["emotion"], modes["photoreal"]


def test_a_photoreal_session_streams_every_frame_of_an_utterance(app):
    base = app["base"]
    session_id = create_session(base, app["persona"], "photoreal", emotion="happy")["session_id"]
    pcm = speech_pcm16(SPEECH_S)

    async def main():
        async with await open_ws(base, session_id) as ws:
            viewer = WsViewer(ws)
            await viewer.recv_until(lambda v: v.in_mode("photoreal"), 180)  # cold start: both pipelines load
            switched = event_pts(viewer, "mode_changed", mode="photoreal")
            await viewer.recv_until(lambda v: sum(p >= switched for p, *_ in v.frames) >= 3, 60)
            for start in range(0, len(pcm), CHUNK_SAMPLES):
                await ws.send(pcm[start:start + CHUNK_SAMPLES].tobytes())
            await ws.send(json.dumps({"type": "end_of_speech"}))
            await viewer.recv_until(lambda v: v.has("speech_ended"), 180)
            ended = event_pts(viewer, "speech_ended")
            await viewer.recv_until(lambda v: sum(p >= ended for p, *_ in v.frames) >= 2, 60)
            return viewer

    viewer = asyncio.run(main())
    httpx.delete(f"{base}/v1/sessions/{session_id}")
    switched = event_pts(viewer, "mode_changed", mode="photoreal")
    started, ended = event_pts(viewer, "speech_started"), event_pts(viewer, "speech_ended")
    frames = {pts: jpeg for pts, jpeg, _ in viewer.frames}
    speech = [pts for pts in frames if started <= pts < ended]
    assert speech == list(range(started, started + SPEECH_FRAMES)) and ended == started + SPEECH_FRAMES

    rest = [decode(frames[p]).astype(np.int16) for p in frames if switched <= p < started]
    talking = [decode(frames[p]).astype(np.int16) for p in speech[5:-5]]
    assert len(rest) >= 3 and all(im.shape == (PORTRAIT_SIDE, PORTRAIT_SIDE, 3) for im in rest + talking)
    still = max(np.abs(im - rest[-1]).mean() for im in rest)
    moved = [np.abs(im - rest[-1]).mean() for im in talking]
    assert np.median(moved) > 5 * still + 0.1, f"rest frames differ by {still:.3f}, speech frames by {np.round(moved, 2)}"
