"""WebRTC out on a real Ray cluster, watched by a real aiortc client.

The `pattern` backend's frames encode the audio span they show (DC value of
the span); the test audio adds a loud 1 kHz tone (whole periods per frame, so
the codes are unchanged) where it wants something the client can find in the
Opus-coded audio. Both tracks start at the same session frame (the server's
`start_pts`) and the client's receivers count time from their first packet,
so "video time" and "audio time" below share one origin.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from deployments.config import WebRtcArgs
from deployments.transports.webrtc import restrict_host_candidates, rtc_configuration
from models.base import FPS, SAMPLES_PER_FRAME
from models.testing import decode_pattern
from tests.local_cluster import deploy_app
from tests.graph_client import WsViewer, create_persona, create_session, open_ws
from tests.streaming import coded_pcm16

pytestmark = pytest.mark.graph
FRAME_S = 1 / FPS
TONE_HZ = 1000  # 40 whole periods per 640-sample frame: adds nothing to a frame's mean
TONE_AMPLITUDE = 0.3
RMS_WINDOW_S = 0.0025
MAX_PEERS = 2
CONNECT_TIMEOUT_S = 4.0


# ---------------- a real client ----------------
@dataclass
class Received:
    """What the client got, on its receivers' clocks (0 = the track's first packet)."""

    video: list[tuple[float, bool, int]] = field(default_factory=list)  # (time_s, is_speech, code)
    audio: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (time_s, mono int16 at 48 kHz)
    video_wall_s: list[float] = field(default_factory=list)
    ended: set[str] = field(default_factory=set)

    def audio_signal(self, rate_hz: int = 48_000) -> tuple[np.ndarray, int]:
        """(mono int16, rate): every block placed at its own timestamp (a lost one stays silent)."""
        if not self.audio:
            return np.zeros(0, np.int16), rate_hz
        out = np.zeros(round(self.audio[-1][0] * rate_hz) + len(self.audio[-1][1]), np.int16)
        for t_s, block in self.audio:
            start = round(t_s * rate_hz)
            out[start : start + len(block)] = block
        return out, rate_hz


class WebRtcClient:
    """Offers recvonly video and audio to a session, records what arrives."""

    def __init__(self, base: str, session_id: str, video_codec: str | None = None):
        self.base, self.session_id, self.video_codec = base, session_id, video_codec
        self.pc = RTCPeerConnection(rtc_configuration(WebRtcArgs()))
        self.got = Received()
        self.answer: dict = {}
        self._tasks: list[asyncio.Task] = []

    async def connect(self, timeout_s: float = 20.0, whep: bool = False) -> float:
        """Offer, answer, connect; returns seconds from sending the offer to the answer.
        whep: as a WHEP player does (the SDP itself, 201 with a Location to DELETE)."""
        video = self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        if self.video_codec:
            codecs = RTCRtpSender.getCapabilities("video").codecs
            video.setCodecPreferences([c for c in codecs if c.mimeType == f"video/{self.video_codec}"])
        self.pc.on("track", lambda track: self._tasks.append(asyncio.create_task(self._record(track))))
        await restrict_host_candidates(self.pc, ["127.0.0.1"])  # hermetic: the loopback, like the server
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with httpx.AsyncClient(base_url=self.base, timeout=timeout_s) as http:
            t_offer = time.perf_counter()  # after the client's own set-up (its TLS context takes ~100 ms)
            if whep:
                r = await http.post(f"/v1/sessions/{self.session_id}/whep", content=self.pc.localDescription.sdp,
                                    headers={"content-type": "application/sdp"})
            else:
                r = await http.post(f"/v1/sessions/{self.session_id}/webrtc",
                                    json={"sdp": self.pc.localDescription.sdp, "type": "offer"})
        assert r.status_code == (201 if whep else 200), r.text
        answered_s = time.perf_counter() - t_offer
        if whep:
            assert r.headers["content-type"].startswith("application/sdp")
            self.location = r.headers["location"]
            self.answer = {"sdp": r.text, "type": "answer", "peer_id": self.location.rsplit("/", 1)[1]}
        else:
            self.answer = r.json()
        await self.pc.setRemoteDescription(RTCSessionDescription(self.answer["sdp"], self.answer["type"]))
        return answered_s

    async def _record(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                t_s = float(frame.pts * frame.time_base)
                if track.kind == "video":
                    self.got.video.append((t_s, *decode_pattern(frame.to_ndarray(format="rgb24"))))
                    self.got.video_wall_s.append(time.time())
                else:
                    channels = len(frame.layout.channels)
                    self.got.audio.append((t_s, frame.to_ndarray().reshape(-1, channels)[:, 0].copy()))
        except MediaStreamError:
            self.got.ended.add(track.kind)

    async def wait_for(self, done, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done(self.got):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not seen within {timeout_s} s: {len(self.got.video)} video frames, "
                                   f"{len(self.got.audio)} audio blocks, state {self.pc.connectionState}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await asyncio.wait_for(self.pc.close(), 10)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# ---------------- what the media says ----------------
def speech_pcm16(n_frames: int, tone_frames: range, first_code: int = 1) -> np.ndarray:
    """coded_pcm16 (span k holds first_code + k) plus a loud tone on the frames in `tone_frames`."""
    pcm = coded_pcm16(n_frames, first_code).astype(np.int32)
    t = np.arange(SAMPLES_PER_FRAME) / 16_000
    tone = np.rint(TONE_AMPLITUDE * 32767 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int32)
    for k in tone_frames:
        pcm[k * SAMPLES_PER_FRAME : (k + 1) * SAMPLES_PER_FRAME] += tone
    return pcm.astype(np.int16)


def tone_runs(signal: np.ndarray, rate_hz: int) -> list[tuple[float, float]]:
    """[(start_s, end_s)] of the stretches where the tone plays (RMS above half the tone's)."""
    window = int(RMS_WINDOW_S * rate_hz)
    n = len(signal) // window
    rms = np.sqrt((signal[: n * window].astype(np.float64).reshape(n, window) ** 2).mean(axis=1))
    on = rms > TONE_AMPLITUDE * 32767 / np.sqrt(2) / 2
    edges = np.flatnonzero(np.diff(np.concatenate([[0], on.astype(np.int8), [0]])))
    return [(s * RMS_WINDOW_S, e * RMS_WINDOW_S) for s, e in zip(edges[::2], edges[1::2])]


def speech_runs(video: list[tuple[float, bool, int]]) -> list[tuple[float, float]]:
    """[(start_s, end_s)] of consecutive speech frames (end: the start of the first frame after)."""
    runs, start = [], None
    for t_s, is_speech, _ in video:
        if is_speech and start is None:
            start = t_s
        elif not is_speech and start is not None:
            runs.append((start, t_s))
            start = None
    return runs


def session_pts(t_s: float, start_pts: int) -> int:
    return start_pts + round(t_s * FPS)


# ---------------- the app ----------------
@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory):
    args = {
        "data_dir": str(tmp_path_factory.mktemp("data")),
        "enable_test_modes": True,  # `pattern` runs in the session host: no backend replica to start
        "backends": {},
        "limits": {"max_sessions": 4},
        "timeouts": {"disconnect_grace_s": 5},
        "webrtc": {"max_peers_per_session": MAX_PEERS, "connect_timeout_s": CONNECT_TIMEOUT_S},
    }
    base = deploy_app(ray_serve, args)
    return {"base": base, "persona": create_persona(base, save=True)}


@contextlib.asynccontextmanager
async def pattern_session(app):
    """A pattern-mode session with a WebSocket open (events, audio in); deleted afterwards.

    A reader task keeps draining the socket into the viewer (use `seen` to wait on it):
    unread frames would stall the websockets client, and its close with them.
    """
    session_id = create_session(app["base"], app["persona"], "pattern")["session_id"]
    async with await open_ws(app["base"], session_id) as ws:
        viewer = WsViewer(ws)
        reader = asyncio.create_task(viewer.recv_until(lambda v: False, 3600))
        try:
            await seen(viewer, lambda v: v.in_mode("pattern"), 60)
            yield session_id, ws, viewer
        finally:
            await asyncio.to_thread(httpx.delete, f"{app['base']}/v1/sessions/{session_id}")
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def seen(viewer: WsViewer, cond, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond(viewer):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not seen within {timeout_s} s; last events: {viewer.events[-5:]}")
        await asyncio.sleep(0.02)


def peers(app, session_id: str) -> list[dict]:
    r = httpx.get(f"{app['base']}/v1/sessions/{session_id}/webrtc")
    assert r.status_code == 200, r.text
    return r.json()["peers"]


def answer_codec(sdp: str, kind: str) -> str:
    """The codec the answer lists first for `kind`."""
    section = sdp.split(f"m={kind} ")[1]
    first_pt = section.split("\r\n", 1)[0].split()[2]
    return re.search(rf"a=rtpmap:{first_pt} ([\w-]+)/", section).group(1)


# ---------------- tests ----------------
@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_offer_answer_then_video_and_audio_arrive(app, codec):
    async def main():
        async with pattern_session(app) as (session_id, _, _):
            client = WebRtcClient(app["base"], session_id, video_codec=codec)
            try:
                await client.connect()
                await client.wait_for(lambda g: len(g.video) >= 60 and len(g.audio) >= 100, 30, "60 video frames")
                return client, peers(app, session_id)
            finally:
                await client.close()

    client, live = asyncio.run(main())
    assert answer_codec(client.answer["sdp"], "video") == codec  # the client's preference wins
    assert answer_codec(client.answer["sdp"], "audio") == "opus"
    hosts = re.findall(r"a=candidate:\S+ \d+ udp \d+ (\S+) \d+ typ host", client.answer["sdp"])
    assert hosts and set(hosts) == {"127.0.0.1"}, hosts  # loopback only by default
    times = [t for t, *_ in client.got.video]
    assert len(times) >= 50 and times == sorted(set(times)), "video timestamps must increase"
    assert all(round(t * FPS * 3600) % 3600 == 0 for t in times), "video pts are whole frames (3600 ticks)"
    assert len(client.got.audio) >= 100
    assert [p["peer_id"] for p in live] == [client.answer["peer_id"]]
    assert live[0]["connection_state"] == "connected"


def test_a_whep_player_gets_video_and_audio_and_deletes_its_resource(app):
    async def main():
        async with pattern_session(app) as (session_id, _, _):
            client = WebRtcClient(app["base"], session_id)
            try:
                await client.connect(whep=True)
                await client.wait_for(lambda g: len(g.video) >= 25 and len(g.audio) >= 25, 30, "25 video frames")
                live = peers(app, session_id)
                async with httpx.AsyncClient(base_url=app["base"]) as http:
                    deleted = await http.delete(client.location)
                    again = await http.delete(client.location)
                    wrong_type = await http.post(f"/v1/sessions/{session_id}/whep", content="v=0",
                                                 headers={"content-type": "text/plain"})
                await wait_until(lambda: not peers(app, session_id), 10, "the peer to go")
                return client, live, deleted, again, wrong_type
            finally:
                await client.close()

    client, live, deleted, again, wrong_type = asyncio.run(main())
    assert client.location == f"/v1/sessions/{client.session_id}/whep/{client.answer['peer_id']}"
    assert [p["peer_id"] for p in live] == [client.answer["peer_id"]]
    assert deleted.status_code == 204
    assert (again.status_code, again.json()["code"]) == (404, "unknown_peer")
    assert (wrong_type.status_code, wrong_type.json()["code"]) == (415, "unsupported_media_type")


def test_audio_and_video_stay_within_one_frame(app):
    tone = range(30, 60)

    async def main():
        async with pattern_session(app) as (session_id, ws, viewer):
            client = WebRtcClient(app["base"], session_id)
            try:
                await client.connect()
                await client.wait_for(lambda g: len(g.video) >= 10, 20, "first frames")
                pcm = speech_pcm16(100, tone)
                for i in range(0, len(pcm), 3200):  # 200 ms chunks, faster than real time
                    await ws.send(pcm[i : i + 3200].tobytes())
                await ws.send(json.dumps({"type": "end_of_speech"}))
                await seen(viewer, lambda v: v.has("speech_ended"), 30)
                await client.wait_for(lambda g: len(speech_runs(g.video)) >= 1 and len(g.audio) > 0, 10, "speech")
                await asyncio.sleep(0.3)  # the audio of the last frames
                start_pts = peers(app, session_id)[0]["start_pts"]
                return client, viewer, start_pts
            finally:
                await client.close()

    client, viewer, start_pts = asyncio.run(main())
    speech_started = next(e["pts"] for e in viewer.events if e["type"] == "speech_started")
    speech = [(t, code) for t, is_speech, code in client.got.video if is_speech]
    assert [c for _, c in speech] == list(range(1, 101)), "every speech frame, in order, once"
    # Video stamps: the frame showing span k has session pts speech_started + k.
    assert [session_pts(t, start_pts) for t, _ in speech] == list(range(speech_started, speech_started + 100))
    video_tone = (speech[tone.start][0], speech[tone.stop][0])
    audio_tone = tone_runs(*client.got.audio_signal())
    assert len(audio_tone) == 1, audio_tone
    onset_s, offset_s = audio_tone[0][0] - video_tone[0], audio_tone[0][1] - video_tone[1]
    # Opus itself delays the decoded audio by 6.5 ms (its lookahead); one frame is the bound.
    assert abs(onset_s) <= FRAME_S and abs(offset_s) <= FRAME_S, (onset_s, offset_s)


def test_interrupt_stops_speech_in_video_and_audio_within_one_frame(app):
    async def main():
        async with pattern_session(app) as (session_id, ws, viewer):
            client = WebRtcClient(app["base"], session_id)
            try:
                await client.connect()
                await client.wait_for(lambda g: len(g.video) >= 10, 20, "first frames")
                pcm = speech_pcm16(250, range(250))  # 10 s of tone, sent at once
                for i in range(0, len(pcm), 16000):
                    await ws.send(pcm[i : i + 16000].tobytes())
                await client.wait_for(lambda g: sum(s for _, s, _ in g.video) >= 25, 20, "1 s of speech")
                await ws.send(json.dumps({"type": "interrupt"}))
                await seen(viewer, lambda v: v.has("speech_ended", reason="interrupted"), 10)
                await asyncio.sleep(1.0)
                start_pts = peers(app, session_id)[0]["start_pts"]
                return client, viewer, start_pts
            finally:
                await client.close()

    client, viewer, start_pts = asyncio.run(main())
    stopped_pts = next(e["pts"] for e in viewer.events if e["type"] == "speech_ended")
    video = [(session_pts(t, start_pts), s) for t, s, _ in client.got.video]
    assert any(s for p, s in video if p < stopped_pts), "speech was playing before the interrupt"
    assert not any(s for p, s in video if p >= stopped_pts), "no speech frame from the retracted pts on"
    assert any(p >= stopped_pts + 10 for p, _ in video), "idle frames go on after the interrupt"
    assert sum(s for _, s in video) < 200, "the interrupt cut the 250-frame utterance short"
    runs = tone_runs(*client.got.audio_signal())
    stopped_s = (stopped_pts - start_pts) / FPS
    assert runs and runs[-1][0] < stopped_s, runs
    assert runs[-1][1] <= stopped_s + FRAME_S, f"audio went on {runs[-1][1] - stopped_s:.3f} s past the interrupt"


def test_peer_is_freed_when_the_client_closes_and_when_the_session_ends(app):
    async def main():
        async with pattern_session(app) as (session_id, _, _):
            first = WebRtcClient(app["base"], session_id)
            await first.connect()
            await first.wait_for(lambda g: len(g.video) >= 5, 20, "frames")
            viewers_with_peer = httpx.get(f"{app['base']}/v1/sessions/{session_id}").json()["viewers"]
            await first.close()
            await wait_until(lambda: peers(app, session_id) == [], 10, "peer freed after client close")
            viewers_after = httpx.get(f"{app['base']}/v1/sessions/{session_id}").json()["viewers"]

            second = WebRtcClient(app["base"], session_id)
            try:
                await second.connect()
                await second.wait_for(lambda g: len(g.video) >= 5, 20, "frames")
                assert httpx.delete(f"{app['base']}/v1/sessions/{session_id}").status_code == 204
                await second.wait_for(lambda g: g.ended == {"video", "audio"}, 10, "tracks ended")
            finally:
                await second.close()
            return viewers_with_peer, viewers_after

    viewers_with_peer, viewers_after = asyncio.run(main())
    assert viewers_after == viewers_with_peer - 1  # the peer's session viewer went with it


def test_a_peer_that_never_connects_is_closed(app):
    async def main():
        async with pattern_session(app) as (session_id, _, _):
            ghost = RTCPeerConnection(rtc_configuration(WebRtcArgs()))
            ghost.addTransceiver("video", direction="recvonly")
            await restrict_host_candidates(ghost, ["127.0.0.1"])
            await ghost.setLocalDescription(await ghost.createOffer())
            r = httpx.post(f"{app['base']}/v1/sessions/{session_id}/webrtc",
                           json={"sdp": ghost.localDescription.sdp, "type": "offer"})
            await ghost.close()  # the answer is never applied: no connectivity check ever reaches the server
            assert r.status_code == 200 and len(peers(app, session_id)) == 1
            await wait_until(lambda: peers(app, session_id) == [], CONNECT_TIMEOUT_S + 10, "ghost peer closed")
            return httpx.get(f"{app['base']}/v1/sessions/{session_id}").json()["viewers"]

    assert asyncio.run(main()) == 1  # only the test's WebSocket is left


async def wait_until(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(cond):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.2)


def test_bad_offers_and_the_peer_limit(app):
    base = app["base"]

    async def main():
        async with pattern_session(app) as (session_id, _, _):
            url = f"{base}/v1/sessions/{session_id}/webrtc"
            assert httpx.post(url, json={"sdp": "v=0 nonsense", "type": "offer"}).status_code == 400
            assert httpx.post(url, json={"sdp": "x" * 20, "type": "answer"}).status_code == 422
            r = httpx.post(f"{base}/v1/sessions/h.unknownsessionidxx/webrtc", json={"sdp": "x" * 20, "type": "offer"})
            assert r.status_code == 404
            clients = [WebRtcClient(base, session_id) for _ in range(MAX_PEERS)]
            try:
                for c in clients:
                    await c.connect()
                extra = WebRtcClient(base, session_id)
                extra.pc.addTransceiver("video", direction="recvonly")
                await extra.pc.setLocalDescription(await extra.pc.createOffer())
                r = httpx.post(url, json={"sdp": extra.pc.localDescription.sdp, "type": "offer"})
                await extra.pc.close()
                return r
            finally:
                for c in clients:
                    await c.close()

    r = asyncio.run(main())
    assert r.status_code == 429 and r.json()["code"] == "too_many_peers"


# ---------------- in-process pieces (no cluster) ----------------
def test_upsampler_keeps_every_frame_on_its_own_48k_samples():
    from deployments.transports.webrtc import Upsampler48k

    up, out = Upsampler48k(), []
    for k in range(10):  # a step up at frame 5
        up.push(np.full(SAMPLES_PER_FRAME, 0.5 if k >= 5 else 0.0, np.float32))
        out.append(up.pop(960))
        out.append(up.pop(960))
    signal = np.concatenate(out)
    assert len(signal) == 10 * 1920
    step_at = int(np.flatnonzero(signal > 0.25 * 32767)[0])
    assert abs(step_at - 5 * 1920) <= 48, f"the step is {step_at - 5 * 1920} samples off (48 = 1 ms)"


def test_host_addresses_that_are_not_here_are_refused():
    from deployments.api.errors import ServiceError

    async def main():
        pc = RTCPeerConnection(rtc_configuration(WebRtcArgs()))
        pc.addTransceiver("video", direction="recvonly")
        try:
            with pytest.raises(ServiceError, match="host_addresses"):
                await restrict_host_candidates(pc, ["198.51.100.7"])  # TEST-NET-2: on no machine
        finally:
            await pc.close()

    asyncio.run(main())
