"""The liveportrait mode through the whole graph on a real local Ray cluster, on CPU.

The backend deployment loads seeded networks and the ONNX face stand-ins from
an HF cache folder written by this module, named by the pipeline option
`cache_dir` (the cluster's workers inherit the environment of the moment the
cluster started, so an environment variable set here would not reach them);
the Router's mode check gets the same option, so it looks there too.
The networks are narrower than the tiny config so that 2 shared cores render
a few frames per second; idle head motion and blinks are off and the lip MLP
moves only the mouth keypoint, so frames in silence are all the same and the
ones with speech differ from them.
"""
import asyncio
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from models.base import SAMPLE_RATE_HZ
from models.liveportrait.pipeline import network_config
from tests.local_cluster import deploy_app
from tests.graph_client import WsViewer, create_persona, create_session, open_ws
from tests.parity.test_liveportrait_weights import write_liveportrait_cache

pytestmark = pytest.mark.graph
APP = "lockn-bod"
PORTRAIT_SIDE = 256
# W's output is 4·block_expansion channels, G's input min(max_features, 4·block_expansion): both 8.
GRAPH_NETWORKS = {"preset": "tiny", "warping": {"block_expansion": 2},
                  "spade": {"block_expansion": 2, "max_features": 8, "out_channels": 4, "spade_hidden": 4}}
STILL_LIFE = {"idle": {"pitch": [], "yaw": [], "roll": []}, "blink": {"min_interval_s": 3600, "mean_interval_s": 7200}}
SPEECH_S = 3.0
SPEECH_FRAMES = round(SPEECH_S * 25)
CHUNK_SAMPLES = SAMPLE_RATE_HZ // 5  # 200 ms
REST_AFTER = 10  # frames for the lips to close after speech (release 0.45 per frame)


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory):
    cache = write_liveportrait_cache(tmp_path_factory.mktemp("hf-cache"), network_config(GRAPH_NETWORKS), mouth_gain=3.0)
    options = {"config": {"networks": GRAPH_NETWORKS, **STILL_LIFE}, "device": "cpu", "cache_dir": str(cache),
               "cuda_memory_fraction": 0.25}  # the deployment takes it (no CUDA here: nothing to cap)
    args = {
        "data_dir": str(tmp_path_factory.mktemp("data")),
        "timeouts": {"disconnect_grace_s": 5},
        "backends": {"liveportrait": {"num_gpus": 0.25, "num_cpus": 0.25, "chunk_frames": 5, "options": options}},
    }
    base = deploy_app(ray_serve, args)
    persona = create_persona(base, save=True, size=PORTRAIT_SIDE)
    return {"base": base, "persona": persona}


def speech_pcm16(seconds: float) -> np.ndarray:
    """A loud voiced sound: 180 Hz and its harmonics up to 2 kHz, int16."""
    t = np.arange(int(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    wave = sum(np.sin(2 * np.pi * 180 * k * t) / k for k in range(1, 12))
    return (0.4 * 32767 * wave / np.abs(wave).max()).astype(np.int16)


def decode(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def event_pts(viewer: WsViewer, kind: str, **match) -> int:
    return next(e["pts"] for e in viewer.events if e["type"] == kind and all(e.get(k) == v for k, v in match.items()))


def test_modes_report_liveportrait_available(app):
    """The Router hands the backend's options to the mode's files hook: it looks in `cache_dir` too."""
    modes = {m["name"]: m for m in httpx.get(f"{app['base']}/v1/modes").json()["modes"]}
    assert modes["liveportrait"]["available"] and not modes["liveportrait"]["missing_files"], modes["liveportrait"]


def test_a_liveportrait_session_streams_three_seconds_of_speech(app):
    base = app["base"]
    session_id = create_session(base, app["persona"], "liveportrait")["session_id"]
    pcm = speech_pcm16(SPEECH_S)

    async def main():
        async with await open_ws(base, session_id) as ws:
            viewer = WsViewer(ws)
            await viewer.recv_until(lambda v: v.in_mode("liveportrait"), 120)  # cold start: scale from zero, load
            switched = event_pts(viewer, "mode_changed", mode="liveportrait")
            await viewer.recv_until(lambda v: sum(p >= switched for p, *_ in v.frames) >= 3, 30)  # at rest
            for start in range(0, len(pcm), CHUNK_SAMPLES):
                await ws.send(pcm[start:start + CHUNK_SAMPLES].tobytes())
            await ws.send(json.dumps({"type": "end_of_speech"}))
            await viewer.recv_until(lambda v: v.has("speech_ended"), 120)
            ended = event_pts(viewer, "speech_ended")
            # Idle frames are rendered one per call and skipped while late: count those that came.
            await viewer.recv_until(lambda v: sum(p >= ended for p, *_ in v.frames) >= REST_AFTER + 2, 60)
            return viewer

    viewer = asyncio.run(main())
    httpx.delete(f"{base}/v1/sessions/{session_id}")
    switched = event_pts(viewer, "mode_changed", mode="liveportrait")
    started, ended = event_pts(viewer, "speech_started"), event_pts(viewer, "speech_ended")
    frames = {pts: jpeg for pts, jpeg, _ in viewer.frames}
    assert list(frames) == sorted(frames)
    speech = [pts for pts in frames if started <= pts < ended]
    assert speech == list(range(started, started + SPEECH_FRAMES)) and ended == started + SPEECH_FRAMES

    silent = [p for p in frames if switched <= p < started] + [p for p in frames if p >= ended][REST_AFTER:]
    images = {pts: decode(frames[pts]) for pts in speech + silent}
    assert all(im.shape == (PORTRAIT_SIDE, PORTRAIT_SIDE, 3) for im in images.values())
    before = [images[p] for p in silent if p < started]
    after = [images[p] for p in silent if p >= ended]
    assert len(before) >= 3 and after
    rest = before[-1].astype(np.int16)
    # In silence the face is at rest, before and after the utterance; with speech the mouth
    # keypoint moves and the rendered face with it (a random renderer spreads it over the crop).
    still = max(np.abs(im - rest).mean() for im in before + after)
    moved = [np.abs(images[p] - rest).mean() for p in speech[5:-5]]
    assert np.median(moved) > 5 * still + 0.1, f"rest frames differ by {still:.3f}, speech frames by {np.round(moved, 2)}"


def test_face_warnings_of_a_persona_come_back_from_the_backend(app):
    from ray import serve

    backend = serve.get_deployment_handle("Backend-liveportrait", app_name=APP)
    warnings = backend.options(multiplexed_model_id=app["persona"]).warnings.remote().result(timeout_s=120)
    assert [w["code"] for w in warnings] == ["several_faces"] and "largest" in warnings[0]["message"]
