"""A portrait in which the face detector finds no face, through the whole graph (Ray, on CPU).

The liveportrait backend runs seeded tiny networks with stand-in face models whose detector
finds no face in any image (tests/face_onnx_models.py). The pipeline's `no_face` error must
keep its code through the backend replica, the SessionHost and the Router: a one-shot render
answers 422 `no_face`; a session says `error {code: "no_face"}` and keeps streaming still
frames; a still session beside it never notices.
"""
from __future__ import annotations

import asyncio

import httpx
import pytest

from models.liveportrait.pipeline import network_config
from tests.local_cluster import deploy_app
from tests.graph_client import WsViewer, create_persona, create_session, open_ws, portrait_png
from tests.streaming import coded_pcm16
from tests.graph.test_graph import wav_bytes
from tests.graph.test_liveportrait_graph import GRAPH_NETWORKS, STILL_LIFE
from tests.parity.test_liveportrait_weights import write_liveportrait_cache

pytestmark = pytest.mark.graph
FPS = 25


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory):
    cache = write_liveportrait_cache(tmp_path_factory.mktemp("hf-cache"), network_config(GRAPH_NETWORKS), faces=[])
    options = {"config": {"networks": GRAPH_NETWORKS, **STILL_LIFE}, "device": "cpu", "cache_dir": str(cache)}
    args = {
        "data_dir": str(tmp_path_factory.mktemp("data")),
        "timeouts": {"disconnect_grace_s": 5},
        "backends": {"liveportrait": {"num_gpus": 0, "num_cpus": 0.25, "chunk_frames": 5, "options": options}},
    }
    base = deploy_app(ray_serve, args)
    return {"base": base, "persona": create_persona(base, save=True, size=256)}


def test_a_one_shot_render_of_a_faceless_portrait_answers_422_no_face(app):
    r = httpx.post(f"{app['base']}/v1/render", timeout=120,
                   files={"audio": ("speech.wav", wav_bytes(coded_pcm16(10), 16000), "audio/wav")},
                   data={"persona_id": app["persona"], "mode": "liveportrait"})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "no_face" and "no face" in r.json()["error"]


def test_a_faceless_session_says_no_face_and_streams_still_frames_beside_an_undisturbed_session(app):
    base = app["base"]
    faceless = create_session(base, app["persona"], "liveportrait")["session_id"]
    neighbour = create_session(base, app["persona"], "still")["session_id"]

    async def main():
        ws_faceless, ws_neighbour = await open_ws(base, faceless), await open_ws(base, neighbour)
        try:
            a, b = WsViewer(ws_faceless), WsViewer(ws_neighbour)
            await a.recv_until(lambda v: v.has("error", code="no_face"), timeout_s=90)
            error = next(e for e in a.events if e["type"] == "error")
            assert "no face" in error["reason"] and error["error"] == error["reason"]
            seen = len(a.frames)
            await a.recv_until(lambda v: len(v.frames) >= seen + 2 * FPS, timeout_s=10)  # still frames go on
            assert a.in_mode("still") and not a.has("mode_changed", mode="liveportrait")
            start = len(b.frames)
            await b.recv_until(lambda v: len(v.frames) >= start + 2 * FPS, timeout_s=10)
            pts = [f[0] for f in b.frames]
            assert pts == list(range(pts[0], pts[0] + len(pts))), "the neighbour lost no frame"
            assert not any(e["type"] == "error" for e in b.events)
        finally:
            await ws_faceless.close()
            await ws_neighbour.close()

    asyncio.run(main())
    info = httpx.get(f"{base}/v1/sessions/{faceless}").json()
    assert info["mode"] == "still" and info["requested_mode"] == "liveportrait"
    for session_id in (faceless, neighbour):
        assert httpx.delete(f"{base}/v1/sessions/{session_id}").status_code == 204


def test_an_upload_checked_for_liveportrait_is_refused_up_front(app):
    r = httpx.post(f"{app['base']}/v1/personas", timeout=60,
                   files={"image": ("p.png", portrait_png(256), "image/png")},
                   data={"real_person": "false", "check_face_for": "liveportrait"})
    assert r.status_code == 422 and r.json()["code"] == "no_face", r.text
    r = httpx.post(f"{app['base']}/v1/personas", timeout=60,
                   files={"image": ("p.png", portrait_png(256), "image/png")},
                   data={"real_person": "false", "check_face_for": "still"})
    assert r.status_code == 201 and r.json()["face_check"]["checked"] is False
