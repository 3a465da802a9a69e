"""avatar3d through the whole graph (Ray, HAProxy-free local Serve): real speech in over the
WebSocket, audio and cues out; the routes that have no video answer 409; avatar uploads
are validated; a still session beside it loses no frame.
"""
from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from models.avatar3d.glb import read_glb, write_glb
from tests.graph_client import WsViewer, create_session, deploy_still_app, open_ws
from tests.speech import espeak_16k, needs_espeak

pytestmark = [pytest.mark.graph, needs_espeak]


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory):
    return deploy_still_app(ray_serve, tmp_path_factory.mktemp("data"), router_replicas=1)


@pytest.fixture(scope="module")
def speech_pcm16() -> bytes:
    pcm = espeak_16k("Hello there, this is a short test of the lips.")
    return (pcm * 32767).astype("<i2").tobytes()


def new_avatar_session(base: str, **body) -> str:
    r = httpx.post(f"{base}/v1/sessions", json={"mode": "avatar3d", **body})
    assert r.status_code == 201, r.text
    return r.json()["session_id"]


def in_arrival_order(viewer: WsViewer):
    """(kind, payload) of every message: an event's dict, or (first sample, n samples) of audio."""
    events, audio = iter(viewer.events), iter(viewer.audio)
    for kind in viewer.sequence:
        if kind == "audio":
            sample, pcm, _ = next(audio)
            yield kind, (sample, len(pcm) // 2)
        elif kind != "frame":
            yield kind, next(events)


async def send_speech(ws, pcm16: bytes, chunk_bytes: int = 6400) -> None:
    for start in range(0, len(pcm16), chunk_bytes):
        await ws.send(pcm16[start:start + chunk_bytes])
    await ws.send(json.dumps({"type": "end_of_speech"}))


def test_avatar3d_is_listed_as_a_mode_without_gpu_weights_or_video(app):
    modes = {m["name"]: m for m in httpx.get(f"{app['base']}/v1/modes").json()["modes"]}
    avatar3d = modes["avatar3d"]
    assert (avatar3d["available"], avatar3d["needs_gpu"], avatar3d["video"], avatar3d["emotion"]) == \
        (True, False, False, True)
    assert avatar3d["missing_files"] == []


def test_speech_goes_out_as_cues_then_contiguous_audio_and_an_interrupt_retracts(app, speech_pcm16):
    base = app["base"]
    talking = new_avatar_session(base)
    still = create_session(base, app["persona"], "still")["session_id"]

    async def main():
        ws, ws_still = await open_ws(base, talking), await open_ws(base, still)
        try:
            viewer, neighbour = WsViewer(ws), WsViewer(ws_still)
            watching = asyncio.create_task(neighbour.recv_until(lambda v: False, timeout_s=3600))
            await send_speech(ws, speech_pcm16)
            await viewer.recv_until(lambda v: v.has("speech_ended"), timeout_s=60)
            utterance = list(in_arrival_order(viewer))

            await ws.send(speech_pcm16 * 2)  # a long one, cut short
            await viewer.recv_until(lambda v: len(v.audio) > len([k for k, _ in utterance if k == "audio"]))
            await ws.send(json.dumps({"type": "interrupt"}))
            await viewer.recv_until(lambda v: v.has("speech_ended", reason="interrupted"), timeout_s=30)
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            return utterance, viewer, neighbour
        finally:
            await ws.close()
            await ws_still.close()

    utterance, viewer, neighbour = asyncio.run(main())
    assert [e["type"] for e in viewer.events[:3]] == ["clock", "session_ready", "mood"]  # always client-paced
    ready = viewer.events[1]
    assert (ready["mode"], ready["avatar_url"]) == ("avatar3d", "/v1/avatars/default/glb")
    assert_cues_precede_their_audio(utterance, n_samples=len(speech_pcm16) // 2)

    kinds = [e["type"] for e in viewer.events]
    assert kinds[-2:] == ["retract", "speech_ended"]
    retract = viewer.events[-2]
    second_start = [e for e in viewer.events if e["type"] == "speech_started"][-1]["sample"]
    assert retract["sample"] >= second_start and retract["from_pts"] * 640 <= retract["sample"]

    pts = [p for p, _, _ in neighbour.frames]
    assert len(pts) > 25 and pts == list(range(pts[0], pts[0] + len(pts)))  # the still session lost no frame
    httpx.delete(f"{base}/v1/sessions/{talking}")
    httpx.delete(f"{base}/v1/sessions/{still}")


def assert_cues_precede_their_audio(messages, n_samples: int) -> None:
    start = next(e for kind, e in messages if kind == "speech_started")["sample"]
    cues_end_ms, audio_end = 0, start
    for kind, payload in messages:
        if kind == "visemes":
            assert payload["sample"] == start and payload["vtimes"][0] == cues_end_ms
            cues_end_ms = payload["vtimes"][-1] + payload["vdurations"][-1]
        elif kind == "audio":
            first, n = payload
            assert first == audio_end, "audio sample indices are not contiguous"
            audio_end = first + n
            assert cues_end_ms >= (audio_end - start) / 16 - 1, "audio went out before its cues"
    assert audio_end - start == n_samples


def test_emotion_and_gesture_reach_the_page_as_mood_and_gesture(app):
    base = app["base"]
    session = new_avatar_session(base, emotion="thinking")

    async def main():
        ws = await open_ws(base, session)
        try:
            viewer = WsViewer(ws)
            await viewer.recv_until(lambda v: v.has("mood"))
            await ws.send(json.dumps({"type": "emotion", "value": "joy", "intensity": 0.4}))
            await ws.send(json.dumps({"type": "gesture", "name": "shrug"}))
            await ws.send(json.dumps({"type": "gesture", "name": "moonwalk"}))
            await viewer.recv_until(lambda v: v.has("gesture") and v.has("error") and v.has("mood", mood="happy"))
            return viewer
        finally:
            await ws.close()

    viewer = asyncio.run(main())
    first_mood = next(e for e in viewer.events if e["type"] == "mood")
    assert (first_mood["mood"], first_mood["expression"]) == ("neutral", "🤔")
    assert next(e for e in viewer.events if e["type"] == "gesture")["name"] == "shrug"
    assert next(e for e in viewer.events if e["type"] == "error")["code"] == "invalid_event"
    httpx.delete(f"{base}/v1/sessions/{session}")


def test_listening_gaze_and_pose_reach_the_page_and_a_later_viewer(app):
    """Over the WebSocket: each control comes back as a cue for the page (gaze resolved to a
    point); a pose beyond its limit is refused; a viewer that joins later is told the state."""
    base = app["base"]
    session = new_avatar_session(base)
    cues = [{"type": "listening", "active": True},
            {"type": "gaze", "target": "away", "x": 0.7, "y": 0.45},
            {"type": "pose", "yaw_deg": -20.0, "pitch_deg": 5.0, "roll_deg": 0.0}]

    def attention(viewer: WsViewer) -> list[dict]:
        return [{k: v for k, v in e.items() if k != "t_recv"} for e in viewer.events
                if e["type"] in ("listening", "gaze", "pose")]

    async def main():
        ws = await open_ws(base, session)
        try:
            viewer = WsViewer(ws)
            await viewer.recv_until(lambda v: v.has("mood"))
            await ws.send(json.dumps({"type": "listening", "active": True}))
            await ws.send(json.dumps({"type": "gaze", "target": "away"}))
            await ws.send(json.dumps({"type": "pose", "yaw_deg": -20, "pitch_deg": 5}))
            await ws.send(json.dumps({"type": "pose", "yaw_deg": 45}))
            await viewer.recv_until(lambda v: v.has("pose") and v.has("error"))
            late_ws = await open_ws(base, session)
            try:
                late = WsViewer(late_ws)
                await late.recv_until(lambda v: v.has("pose"))
            finally:
                await late_ws.close()
            return viewer, late
        finally:
            await ws.close()

    viewer, late = asyncio.run(main())
    assert attention(viewer) == cues
    assert next(e for e in viewer.events if e["type"] == "error")["code"] == "invalid_event"
    assert [e["type"] for e in late.events] == ["clock", "session_ready", "mood", "listening", "gaze", "pose"]
    assert attention(late) == cues
    info = httpx.get(f"{base}/v1/sessions/{session}").json()
    assert (info["listening"], info["gaze"], info["pose_deg"]) == (True, [0.7, 0.45],
                                                                    {"pitch": 5.0, "yaw": -20.0, "roll": 0.0})
    httpx.delete(f"{base}/v1/sessions/{session}")


def test_video_routes_answer_409_in_avatar3d(app):
    base = app["base"]
    session = new_avatar_session(base)
    mjpeg = httpx.get(f"{base}/v1/sessions/{session}/mjpeg")
    offer = httpx.post(f"{base}/v1/sessions/{session}/webrtc", json={"sdp": "v=0 " * 10, "type": "offer"})
    render = httpx.post(f"{base}/v1/render", files={"audio": ("a.wav", b"RIFF", "audio/wav")},
                        data={"mode": "avatar3d"})
    for r in (mjpeg, offer, render):
        assert (r.status_code, r.json()["code"]) == (409, "mode_has_no_video"), r.text
    gesture = httpx.post(f"{base}/v1/sessions/{create_session(base, app['persona'], 'still')['session_id']}/events",
                         json={"type": "gesture", "name": "ok"})
    assert (gesture.status_code, gesture.json()["code"]) == (409, "avatar3d_only")
    httpx.delete(f"{base}/v1/sessions/{session}")


def upload_avatar(base: str, glb: bytes, **fields):
    data = {"licence": "CC0-1.0", "real_person": "false"} | fields
    return httpx.post(f"{base}/v1/avatars", files={"glb": ("a.glb", glb, "model/gltf-binary")}, data=data)


def test_an_uploaded_avatar_is_validated_used_by_a_session_and_kept_while_in_use(app):
    base = app["base"]
    default = httpx.get(f"{base}/v1/avatars/default/glb", timeout=300)
    assert default.status_code == 200 and default.headers["content-type"] == "model/gltf-binary"

    gltf, binary = read_glb(default.content)
    for mesh in gltf["meshes"]:  # the same avatar, without its viseme shapes
        for primitive in mesh["primitives"]:
            primitive.pop("targets", None)
        mesh.get("extras", {}).pop("targetNames", None)
    stripped = upload_avatar(base, write_glb(gltf, binary))
    assert stripped.status_code == 422 and stripped.json()["code"] == "invalid_avatar"
    assert "viseme_aa" in stripped.json()["error"]
    assert upload_avatar(base, np.random.default_rng(0).bytes(4096)).json()["code"] == "invalid_avatar"
    assert upload_avatar(base, default.content, licence="").json()["code"] == "licence_required"
    assert upload_avatar(base, default.content, real_person="true").json()["code"] == "consent_required"

    created = upload_avatar(base, default.content)
    assert created.status_code == 201, created.text
    avatar_id = created.json()["avatar_id"]
    session = new_avatar_session(base, avatar_id=avatar_id)
    assert httpx.get(f"{base}/v1/avatars/{avatar_id}/glb").content == default.content
    assert httpx.delete(f"{base}/v1/avatars/{avatar_id}").status_code == 409

    async def ready():
        ws = await open_ws(base, session)
        try:
            viewer = WsViewer(ws)
            await viewer.recv_until(lambda v: v.has("session_ready"))
            return next(e for e in viewer.events if e["type"] == "session_ready")
        finally:
            await ws.close()

    assert asyncio.run(ready())["avatar_url"] == f"/v1/avatars/{avatar_id}/glb"
    httpx.delete(f"{base}/v1/sessions/{session}")
    # unsaved: it went with its last session
    assert httpx.get(f"{base}/v1/avatars/{avatar_id}").json()["code"] == "unknown_avatar"
