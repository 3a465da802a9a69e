"""The ditto mode through the whole graph on a real local Ray cluster, on CPU.

The backend deployment builds `DittoPipeline(config=tiny)`: seeded tiny LMDM,
a renderer narrower than the tiny one (2 shared cores render a frame in a few
tenths of a second), a HuBERT stand-in with HuBERT's framing and a face
stand-in that finds one upright face in the middle of the portrait; no file is
read, and the mode's files hook says the tiny preset needs none, so the Router
offers the mode. The portrait is a generated face-like 128×128 image.
"""
import asyncio
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from models.base import SAMPLE_RATE_HZ
from models.ditto.testing import face_like_portrait
from tests.local_cluster import deploy_app
from tests.graph_client import WsViewer, create_session, open_ws

pytestmark = pytest.mark.graph
PORTRAIT_SIDE = 128
NARROW_RENDERER = {"preset": "tiny", "warping": {"block_expansion": 2},
                   "spade": {"block_expansion": 2, "max_features": 8, "out_channels": 4, "spade_hidden": 4}}
OPTIONS = {"config": {"preset": "tiny", "networks": NARROW_RENDERER}, "device": "cpu", "seed": 0}
SPEECH_S = 3.0
SPEECH_FRAMES = round(SPEECH_S * 25)
CHUNK_SAMPLES = SAMPLE_RATE_HZ // 5  # 200 ms
EMOTION_AT_S = 1.4


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory):
    args = {
        "data_dir": str(tmp_path_factory.mktemp("data")),
        "timeouts": {"disconnect_grace_s": 5},
        "backends": {"ditto": {"num_gpus": 0.3, "num_cpus": 0.25, "chunk_frames": 5, "options": OPTIONS}},
    }
    base = deploy_app(ray_serve, args)
    buf = io.BytesIO()
    Image.fromarray(face_like_portrait(PORTRAIT_SIDE)).save(buf, "PNG")
    r = httpx.post(f"{base}/v1/personas", files={"image": ("face.png", buf.getvalue(), "image/png")},
                   data={"real_person": "false", "save": "true"})
    assert r.status_code == 201, r.text
    return {"base": base, "persona": r.json()["persona_id"]}


def speech_pcm16(seconds: float) -> np.ndarray:
    """A voiced sound with a syllable rhythm: 180 Hz harmonics, amplitude at 4 Hz, int16."""
    t = np.arange(int(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    wave = sum(np.sin(2 * np.pi * 180 * k * t) / k for k in range(1, 12)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    return (0.4 * 32767 * wave / np.abs(wave).max()).astype(np.int16)


def event_pts(viewer: WsViewer, kind: str) -> int:
    return next(e["pts"] for e in viewer.events if e["type"] == kind)


def test_modes_report_ditto_available_without_files(app):
    modes = {m["name"]: m for m in httpx.get(f"{app['base']}/v1/modes").json()["modes"]}
    assert modes["ditto"]["available"] and not modes["ditto"]["missing_files"], modes["ditto"]


def test_a_ditto_session_streams_three_seconds_of_speech_with_an_emotion_change(app):
    base = app["base"]
    session_id = create_session(base, app["persona"], "ditto")["session_id"]
    pcm = speech_pcm16(SPEECH_S)

    async def main():
        async with await open_ws(base, session_id) as ws:
            viewer = WsViewer(ws)
            await viewer.recv_until(lambda v: v.in_mode("ditto"), 120)  # cold start: scale from zero, build
            for start in range(0, len(pcm), CHUNK_SAMPLES):
                if start == int(EMOTION_AT_S * SAMPLE_RATE_HZ):
                    await ws.send(json.dumps({"type": "emotion", "value": "happy", "intensity": 0.8}))
                await ws.send(pcm[start:start + CHUNK_SAMPLES].tobytes())
            await ws.send(json.dumps({"type": "end_of_speech"}))
            await viewer.recv_until(lambda v: v.has("speech_ended"), 120)
            ended = event_pts(viewer, "speech_ended")
            await viewer.recv_until(lambda v: any(p >= ended for p, *_ in v.frames), 30)  # idle again
            return viewer

    viewer = asyncio.run(main())
    httpx.delete(f"{base}/v1/sessions/{session_id}")
    assert not [e for e in viewer.events if e["type"] == "error"], [e for e in viewer.events if e["type"] == "error"]
    started, ended = event_pts(viewer, "speech_started"), event_pts(viewer, "speech_ended")
    pts = [p for p, *_ in viewer.frames]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)
    speech = [p for p in pts if started <= p < ended]
    # flush emits what the lookahead held: every frame of audio, none of padding
    assert speech == list(range(started, started + SPEECH_FRAMES)) and ended == started + SPEECH_FRAMES
    frames = {p: jpeg for p, jpeg, _ in viewer.frames}
    images = [np.asarray(Image.open(io.BytesIO(frames[p])).convert("RGB")) for p in speech]
    assert all(im.shape == (PORTRAIT_SIDE, PORTRAIT_SIDE, 3) for im in images)
    # the face moves with speech: not every speech frame is the same picture
    assert max(np.abs(im.astype(np.int16) - images[0]).mean() for im in images) > 0.5


def test_a_one_shot_render_returns_the_clip_with_offline_motion(app):
    import wave

    import av

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(SAMPLE_RATE_HZ)
        w.writeframes(speech_pcm16(1.0).tobytes())
    r = httpx.post(f"{app['base']}/v1/render", timeout=120,
                   files={"audio": ("speech.wav", buf.getvalue(), "audio/wav")},
                   data={"persona_id": app["persona"], "mode": "ditto", "emotion": "happy"})
    assert r.status_code == 200, r.text
    with av.open(io.BytesIO(r.content)) as container:
        assert container.streams.audio
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 25 and frames[0].shape == (PORTRAIT_SIDE, PORTRAIT_SIDE, 3)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 0.1  # not a frozen portrait
