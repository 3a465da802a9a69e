"""The Python client (lockn_bod_client) against the real graph: the `pattern` backend, whose
frames encode the audio span they show (models/testing.py)."""
import asyncio

import pytest

from lockn_bod_client import Event, LockNBodClient, LockNBodError, VideoFrame
from tests.local_cluster import deploy_app
from tests.graph_client import portrait_png
from tests.streaming import assert_speech_frames_match_audio, coded_pcm16, frame_info

pytestmark = pytest.mark.graph


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory):
    args = {
        "data_dir": str(tmp_path_factory.mktemp("data")),
        "enable_test_modes": True,
        "router_replicas": 1, "router_max_replicas": 1,
        "timeouts": {"disconnect_grace_s": 5},
        "backends": {"pattern": {"num_gpus": 0.1, "num_cpus": 0.1, "chunk_frames": 5, "options": {"size": 64}}},
    }
    base = deploy_app(ray_serve, args)

    async def warm_up():  # the pattern backend scales up from zero once
        async with LockNBodClient(base) as client:
            persona = (await client.create_persona(portrait_png(), real_person=False, save=True))["persona_id"]
            session = await client.create_session(persona, "pattern")
            async with client.connect(session["session_id"]) as stream:
                while stream.mode != "pattern":
                    await stream.recv(timeout=90)
            await client.delete_session(session["session_id"])
            return persona

    return {"base": base, "persona": asyncio.run(warm_up())}


def speech(frames: list[VideoFrame]) -> list[tuple[int, int]]:
    """(pts, code) of the speech frames."""
    return [(f.pts, code) for f in frames for is_speech, code in [frame_info(f.jpeg)] if is_speech]


async def until(stream, done, timeout_s: float = 30.0) -> list:
    """Messages until `done(message)` is true of one; all of them."""
    got = []
    async def read():
        while True:
            got.append(await stream.recv())
            if done(got[-1]):
                return got
    return await asyncio.wait_for(read(), timeout_s)


def is_event(kind: str, **match):
    return lambda m: isinstance(m, Event) and m.type == kind and all(m.get(k) == v for k, v in match.items())


def test_personas_and_sessions(app):
    async def main():
        async with LockNBodClient(app["base"]) as client:
            with pytest.raises(LockNBodError) as refused:
                await client.create_persona(portrait_png(seed=1))  # a real person's face without consent
            assert (refused.value.status, refused.value.code) == (422, "consent_required")
            record = await client.create_persona(portrait_png(seed=1), consent="I, Ada Lovelace, consent to this avatar")
            persona = record["persona_id"]
            assert (await client.get_persona(persona))["persona_id"] == persona
            session = await client.create_session(persona, "pattern", emotion="happy", sample_rate_hz=24000)
            sid = session["session_id"]
            assert session["urls"]["websocket"] == f"/v1/sessions/{sid}/ws"
            state = await client.get_session(sid)
            assert (state["emotion"], state["sample_rate_hz"]) == ("happy", 24000)
            assert sid in {s["session_id"] for s in await client.list_sessions()}
            with pytest.raises(LockNBodError) as in_use:
                await client.delete_persona(persona)
            assert (in_use.value.status, in_use.value.code) == (409, "persona_in_use")
            await client.delete_session(sid)
            with pytest.raises(LockNBodError) as gone:
                await client.get_session(sid)
            assert (gone.value.status, gone.value.code) == (404, "unknown_session")
            with pytest.raises(LockNBodError) as no_stream:
                await client.connect(sid)
            assert (no_stream.value.status, no_stream.value.code) == (404, "unknown_session")
            with pytest.raises(LockNBodError) as unknown:  # the unsaved persona went with its last session
                await client.get_persona(persona)
            assert unknown.value.code == "unknown_persona"

    asyncio.run(main())


def test_pcm_over_the_websocket_and_http_gives_every_frame_in_order(app):
    async def main():
        async with LockNBodClient(app["base"]) as client:
            sid = (await client.create_session(app["persona"], "pattern"))["session_id"]
            async with client.connect(sid) as stream:
                await until(stream, lambda m: stream.mode == "pattern")
                pcm = coded_pcm16(50)
                for i in range(0, 50, 5):  # 200 ms messages
                    await stream.send_pcm(pcm[i * 640:(i + 5) * 640])
                await stream.end_of_speech()
                first = await until(stream, is_event("speech_ended"))
                accepted = await client.send_pcm(sid, coded_pcm16(25, first_code=501), rate_hz=16000)
                await client.end_of_speech(sid)
                second = await until(stream, is_event("speech_ended"))
            await client.delete_session(sid)
            return first, second, accepted

    first, second, accepted = asyncio.run(main())
    assert accepted == pytest.approx(1.0)
    frames = [m for m in first + second if isinstance(m, VideoFrame)]
    assert [f.pts for f in frames] == sorted({f.pts for f in frames})  # pts in order, none twice
    spoken = speech(frames)
    assert_speech_frames_match_audio([s for s in spoken if s[1] < 500], 50)
    assert_speech_frames_match_audio([s for s in spoken if s[1] > 500], 25, first_code=501)
    started = next(m for m in first if isinstance(m, Event) and m.type == "speech_started")
    assert started.pts == spoken[0][0]


def interrupted_at(stream) -> int | None:
    ended = [e for e in stream.events if e.type == "speech_ended" and e.get("reason") == "interrupted"]
    return ended[0].pts if ended else None


def test_client_pacing_and_an_interrupt_retract_what_is_not_yet_shown(app):
    async def main():
        async with LockNBodClient(app["base"]) as client:
            sid = (await client.create_session(app["persona"], "pattern"))["session_id"]
            async with client.connect(sid, pacing="client") as stream:
                assert stream.clock is not None  # the clock event comes first
                await client.send_pcm(sid, coded_pcm16(125))  # 5 s at once: rendered up to 1 s ahead
                shown, interrupted = [], []

                async def play():
                    async for frame in stream.play():
                        shown.append(frame)
                        if len(speech(shown)) == 30 and not interrupted:
                            interrupted.append(frame.pts)
                            await stream.interrupt()
                        ended = interrupted_at(stream)
                        if ended is not None and frame.pts > ended + 10:
                            return
                await asyncio.wait_for(play(), 30)
            await client.delete_session(sid)
            return shown, stream

    shown, stream = asyncio.run(main())
    ended = interrupted_at(stream)
    retracts = [e for e in stream.events if e.type == "retract"]
    assert retracts and retracts[-1]["from_pts"] == ended  # the interrupt took back the frames from there on
    assert stream.playout.retracted > 0  # frames the client held were dropped, never shown
    spoken = speech(shown)
    assert_speech_frames_match_audio(spoken, len(spoken))  # 1, 2, ... m: in order, none missing
    assert 30 <= len(spoken) < 60 and all(p < ended for p, _ in spoken)  # nothing of the dropped speech
    pts = [f.pts for f in shown]
    assert pts == sorted(set(pts))
    ahead = [stream.clock.due(f.pts) - f.t_recv for f in shown if frame_info(f.jpeg)[0]]
    assert max(ahead) > 0.2  # client pacing: speech came well ahead of its time


def test_listening_gaze_and_pose_reach_the_session_and_refusals_are_errors(app):
    async def main():
        async with LockNBodClient(app["base"]) as client:
            sid = (await client.create_session(app["persona"], "pattern"))["session_id"]
            async with client.connect(sid) as stream:
                await stream.listening(True)
                await stream.gaze("point", 0.5, -0.25)
                await stream.pose(yaw_deg=10, pitch_deg=-5, roll_deg=3)
                await stream.emotion("sad", 0.5)
                await stream.gaze("point", 2.0, 0.0)  # beyond its limit: an error event, the socket stays open
                error = (await until(stream, is_event("error")))[-1]
                await until(stream, lambda m: isinstance(m, VideoFrame))  # still streaming
                state = await client.get_session(sid)
                await client.listening(sid, False)
                await client.gaze(sid, "away")
                await client.pose(sid)
                after = await client.get_session(sid)
                with pytest.raises(LockNBodError) as refused:
                    await client.send_event(sid, {"type": "gaze", "target": "point", "x": 0.1})
                stream.raise_errors = True
                await stream.send_event({"type": "pose", "yaw_deg": 90})
                with pytest.raises(LockNBodError) as raised:
                    while True:
                        await stream.recv(timeout=10)
            await client.delete_session(sid)
            return error, state, after, refused.value, raised.value, stream

    error, state, after, refused, raised, stream = asyncio.run(main())
    assert error["code"] == "invalid_event" and stream.errors[0] is error
    assert state["listening"] is True and state["gaze"] == [0.5, -0.25]
    assert state["pose_deg"] == {"pitch": -5.0, "yaw": 10.0, "roll": 3.0}
    assert (state["emotion"], state["intensity"]) == ("sad", 0.5)
    assert after["listening"] is False and after["gaze"] == pytest.approx([0.7, 0.45])
    assert after["pose_deg"] == {"pitch": 0.0, "yaw": 0.0, "roll": 0.0}
    assert (refused.status, refused.code) == (422, "invalid_event")
    assert raised.code == "invalid_event" and raised.status is None
