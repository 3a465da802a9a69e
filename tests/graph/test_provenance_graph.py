"""Provenance through the whole graph (still mode, no GPU): every way frames leave carries the
session's invisible mark, a one-shot render is signed and traced, and `lockn-bod verify` says so."""
import asyncio
import contextlib
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from models.cli import main as cli
from models.provenance.keys import load_keys
from models.provenance.watermark import FrameMarker, session_tag
from tests.graph.test_graph import wav_bytes
from tests.graph.test_webrtc import WebRtcClient
from tests.graph_client import WsViewer, create_persona, create_session, deploy_still_app, mjpeg_frames, open_ws, \
    stop_task
from tests.speech import espeak_16k, needs_espeak

pytestmark = pytest.mark.graph
FRAMES = 25  # one second: the mark is read pooled over them


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    deployed = deploy_still_app(ray_serve, data_dir, router_replicas=1)
    return deployed | {"data_dir": data_dir, "portrait": create_persona(deployed["base"], save=True, size=256)}


def marker(app) -> FrameMarker:
    return FrameMarker(load_keys(app["data_dir"]).watermark_secret)


def decoded(jpegs: list[bytes]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs])


class RawWebRtcClient(WebRtcClient):
    """Keeps the decoded video frames themselves."""

    async def _record(self, track) -> None:
        if track.kind != "video":
            return
        self.frames = []
        while len(self.frames) < FRAMES:
            frame = await track.recv()
            self.frames.append(frame.to_ndarray(format="rgb24"))


def test_websocket_mjpeg_and_webrtc_frames_carry_the_session_s_tag(app):
    base, secret = app["base"], load_keys(app["data_dir"]).watermark_secret
    sessions = [create_session(base, app["portrait"], "still")["session_id"] for _ in range(2)]
    assert httpx.get(f"{base}/v1/modes").json()["provenance"] == {"enabled": True}

    async def main():
        got = {}
        for session_id in sessions:
            async with await open_ws(base, session_id) as ws:
                viewer = WsViewer(ws)
                await viewer.recv_until(lambda v: len(v.frames) >= FRAMES, 30)
                got[session_id] = ([j for _, j, _ in viewer.frames], viewer.events[0])
        parts: list = []
        task = asyncio.create_task(mjpeg_frames(base, sessions[0], parts))
        while len(parts) < FRAMES:
            await asyncio.sleep(0.1)
        await stop_task(task)
        client = RawWebRtcClient(base, sessions[0])
        try:
            await client.connect()
            await client.wait_for(lambda _: len(getattr(client, "frames", [])) >= FRAMES, 30, "WebRTC frames")
        finally:
            await client.close()
        return got, [j for _, j in parts], client.frames

    got, mjpeg, webrtc = asyncio.run(main())
    for session_id in sessions:
        tag = session_tag(secret, session_id)
        jpegs, ready = got[session_id]
        assert ready["type"] == "session_ready" and ready["provenance"] is True
        assert marker(app).read(decoded(jpegs)).matches(tag, max_bit_errors=0)
    first = session_tag(secret, sessions[0])
    assert session_tag(secret, sessions[1]) != first
    assert marker(app).read(decoded(mjpeg)).matches(first, max_bit_errors=0)
    assert marker(app).read(np.stack(webrtc)).matches(first)  # through VP8 at aiortc's bitrate
    poster = httpx.get(f"{base}/v1/sessions/{sessions[0]}/provenance")
    assert poster.status_code == 200 and poster.headers["content-type"] == "image/jpeg"
    from models.provenance import manifest

    signed = manifest.read(poster.content, "image/jpeg", load_keys(app["data_dir"]).ca_pem)
    assert signed.state == "Trusted" and signed.payload["watermark_tag"] == f"{first:014x}"
    for session_id in sessions:
        httpx.delete(f"{base}/v1/sessions/{session_id}")


@needs_espeak
def test_a_one_shot_render_is_signed_marked_and_traced(app, tmp_path):
    wav = wav_bytes((espeak_16k("Where did this clip come from?") * 32767).astype(np.int16), 16000)
    r = httpx.post(f"{app['base']}/v1/render", timeout=300, files={"audio": ("a.wav", wav, "audio/wav")},
                   data={"persona_id": app["portrait"], "mode": "still"})
    assert r.status_code == 200, r.text
    path = tmp_path / "render.mp4"
    path.write_bytes(r.content)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli(["verify", str(path), "--data-dir", str(app["data_dir"]), "--json"])
    report = json.loads(out.getvalue())
    assert code == 0 and report["c2pa_state"] == "Trusted", report
    assert report["watermark_tag"] == report["declared"]["watermark_tag"] and report["ledger"]
    assert Path(report["file"]) == path
