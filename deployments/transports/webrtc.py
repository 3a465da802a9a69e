"""WebRTC out: a session's frames and speech as one video and one audio track (aiortc).

Peers live in the SessionHost next to their session (DESIGN section 1): each
peer is an in-process viewer of the session and gets raw frames and the
output audio on the frame clock, so nothing crosses Ray per frame.

Timing. Frame `pts` is due at `t0 + pts/25` (wall clock). Both tracks return
media from `recv()` only when it is due, so aiortc sends it then and its RTCP
sender reports map RTP time to wall time the same way for both tracks:
- video: pts × 3600 in a 1/90000 time base (RTP video clock);
- audio: 20 ms blocks of s16 mono at 48 kHz, block `b` covering frame `b // 2`,
  pts = 960·b in 1/48000 (= 640·pts at 16 kHz). The audio is never skipped:
  a frame whose audio is missing when due plays as silence, so the Opus
  timestamps (aiortc counts samples) stay on the session clock.
Both tracks start at the same frame (`SessionFeed.start_pts`) and share the
peer connection's stream id, so a browser plays them in sync.

We upsample to 48 kHz ourselves: given 16 kHz, aiortc's Opus encoder holds
every block back by one (its resampler's delay), which would send audio 20 ms
after its video.

Interrupt: the session retracts frames with pts >= k not yet shown; the feed
drops them, the video track never sends them, and the audio track takes
each frame's audio only when it is due, so speech stops within one frame.

Candidates: aioice has no option to choose host addresses (it offers every
non-loopback interface). With `webrtc.host_addresses` set (default
127.0.0.1), `restrict_host_candidates` gathers on exactly those addresses
before aiortc would gather on its own; null restores aioice's choice.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from fractions import Fraction

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from models.base import FPS, SAMPLE_RATE_HZ, SAMPLES_PER_FRAME

from ..api.errors import ServiceError
from ..api.protocol import EndItem, FramesItem, HostItem, RetractItem
from ..config import WebRtcArgs
from ..serving_metrics import NoServingMetrics, ServingMetrics
from ..session.clock import SessionClock
from ..session.engine import Session, Viewer

log = logging.getLogger("ray.serve")

VIDEO_CLOCK_HZ = 90_000
VIDEO_TICKS_PER_FRAME = VIDEO_CLOCK_HZ // FPS  # 3600
AUDIO_OUT_RATE_HZ = 48_000
AUDIO_BLOCKS_PER_FRAME = 2  # 20 ms blocks: Opus's packet size
AUDIO_OUT_SAMPLES_PER_BLOCK = AUDIO_OUT_RATE_HZ // FPS // AUDIO_BLOCKS_PER_FRAME  # 960
KEEP_PAST_FRAMES = FPS  # frames more than 1 s old are dropped, read or not
FEED_POLL_S = 1.0  # a waiting track re-checks that its feed is alive this often
LATE_AUDIO_GRACE_S = 0.1  # how long the audio waits for a frame the session publishes late
CLOSE_TIMEOUT_S = 5.0


# ---------------- one session subscription, two tracks ----------------
class SessionFeed:
    """Frames and output audio of one session, by pts, for one peer's tracks.

    Reads the session viewer's queue; honours retracts; ends when the session does.
    """

    def __init__(self, viewer: Viewer, clock: SessionClock, metrics: ServingMetrics | None = None):
        self.viewer, self.clock = viewer, clock
        self.metrics = metrics or NoServingMetrics()
        self.start_pts: int | None = None
        self.end_reason: str | None = None
        self._frames: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # pts -> (H×W×3 uint8, 640 float32)
        self._changed = asyncio.Event()
        # When each track took a frame's media: the A/V offset metric pairs them by pts.
        self._handed: dict[str, dict[int, float]] = {"video": {}, "audio": {}}

    async def run(self) -> None:
        """Ingest the viewer's items until the session ends (the peer cancels this on close)."""
        try:
            while self.end_reason is None:
                self._ingest(await self.viewer.queue.get())
                if self.viewer.overflowed:
                    self._end("viewer fell behind")
        finally:
            self._end("feed stopped")

    def _ingest(self, item: HostItem) -> None:
        match item:
            case FramesItem(pts=pts, frames=frames, audio=audio):
                for i, frame_pts in enumerate(pts):
                    self._frames[frame_pts] = (frames[i], audio[i])
                self._prune()
            case RetractItem(from_pts=from_pts):
                for pts in [p for p in self._frames if p >= from_pts]:
                    del self._frames[pts]
            case EndItem(reason=reason):
                self._end(reason)
        self._notify()

    def _prune(self) -> None:
        oldest = self.clock.now_pts() - KEEP_PAST_FRAMES
        for pts in [p for p in self._frames if p < oldest]:
            del self._frames[pts]

    def _end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
        self._notify()

    def _notify(self) -> None:
        # Waiters hold the old event: setting it wakes them all; later waits use the new one.
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_changed(self, timeout_s: float) -> None:
        if self.end_reason is not None:
            raise MediaStreamError(self.end_reason)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), max(0.0, timeout_s))

    async def start(self) -> int:
        """The frame both tracks begin with: the first one buffered that is not yet past."""
        while self.start_pts is None:
            now_pts = self.clock.now_pts()
            ready = [p for p in self._frames if p >= now_pts]
            if ready:
                self.start_pts = min(ready)
                break
            await self._wait_changed(FEED_POLL_S)
        return self.start_pts

    async def next_frame(self, after_pts: int) -> tuple[int, np.ndarray]:
        """The first frame after `after_pts`, returned when due (re-checked if a retract replaces it)."""
        while True:
            later = [p for p in self._frames if p > after_pts]
            pts = min(later) if later else None
            wait_s = FEED_POLL_S if pts is None else self.clock.due(pts) - time.time()
            if pts is not None and wait_s <= 0:
                self._note_handed("video", pts)
                return pts, self._frames[pts][0]
            await self._wait_changed(wait_s)

    async def audio_of(self, pts: int) -> np.ndarray:
        """Frame `pts`'s output audio (640 float32 at 16 kHz), at its due time.

        A frame the session publishes late is waited for (up to LATE_AUDIO_GRACE_S: sent late,
        still stamped right, as its video will be); one it skipped (a later frame is already
        here) or never sends plays as silence, so the audio timeline never slips.
        """
        while (wait_s := self.clock.due(pts) - time.time()) > 0:
            await self._wait_changed(wait_s)
        deadline = self.clock.due(pts) + LATE_AUDIO_GRACE_S
        while pts not in self._frames and not self._has_after(pts) and (left_s := deadline - time.time()) > 0:
            await self._wait_changed(left_s)
        if self.end_reason is not None:
            raise MediaStreamError(self.end_reason)
        entry = self._frames.get(pts)
        self._note_handed("audio", pts)
        return entry[1] if entry is not None else np.zeros(SAMPLES_PER_FRAME, np.float32)

    def _note_handed(self, track: str, pts: int) -> None:
        """A track took frame `pts`'s media now; once both have, the audio's lead or lag over
        the video is the peer's A/V offset (skipped video frames have no pair)."""
        now = time.time()
        other = self._handed["audio" if track == "video" else "video"].pop(pts, None)
        if other is None:
            self._handed[track][pts] = now
            for old in [p for p in self._handed[track] if p < pts - KEEP_PAST_FRAMES]:
                del self._handed[track][old]
            return
        self.metrics.webrtc_av_offset(now - other if track == "audio" else other - now)

    def _has_after(self, pts: int) -> bool:
        return any(p > pts for p in self._frames)


async def _sleep_until(wall_s: float) -> None:
    delay_s = wall_s - time.time()
    if delay_s > 0:
        await asyncio.sleep(delay_s)


class SessionVideoTrack(MediaStreamTrack):
    """The session's frames, each returned when due, stamped pts × 3600 / 90 kHz."""

    kind = "video"

    def __init__(self, feed: SessionFeed):
        super().__init__()
        self.feed = feed
        self._last_pts: int | None = None
        self.frames_sent = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError("track ended")
        if self._last_pts is None:
            self._last_pts = await self.feed.start() - 1
        pts, rgb = await self.feed.next_frame(self._last_pts)
        self._last_pts = pts
        frame = av.VideoFrame.from_ndarray(_even_crop(rgb), format="rgb24")
        frame.pts, frame.time_base = pts * VIDEO_TICKS_PER_FRAME, Fraction(1, VIDEO_CLOCK_HZ)
        self.frames_sent += 1
        return frame


def _even_crop(rgb: np.ndarray) -> np.ndarray:
    """H×W×3 -> even H and W (4:2:0 encoders need them)."""
    h, w = rgb.shape[:2]
    return np.ascontiguousarray(rgb[: h - h % 2, : w - w % 2])


class Upsampler48k:
    """Streams 16 kHz float32 mono into 48 kHz s16 mono blocks (libswresample)."""

    def __init__(self):
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_OUT_RATE_HZ)
        self._fifo = np.zeros(0, np.int16)
        self._pts_in = 0
        self._primed = False

    def push(self, audio16k: np.ndarray) -> None:
        frame = av.AudioFrame.from_ndarray(np.clip(audio16k, -1.0, 1.0).astype(np.float32).reshape(1, -1),
                                           format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE_HZ, self._pts_in, Fraction(1, SAMPLE_RATE_HZ)
        self._pts_in += len(audio16k)
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        produced = np.concatenate(out) if out else np.zeros(0, np.int16)
        if not self._primed:
            # The filter's delay (about 1 ms) comes out as silence up front, so that every
            # later block is whole when its frame is due.
            self._primed = True
            produced = np.concatenate([np.zeros(3 * len(audio16k) - len(produced), np.int16), produced])
        self._fifo = np.concatenate([self._fifo, produced])

    def pop(self, n: int) -> np.ndarray:
        """n samples; zero-padded in the (unexpected) case that fewer are buffered."""
        head, self._fifo = self._fifo[:n], self._fifo[n:]
        return np.pad(head, (0, n - len(head)))


class SessionAudioTrack(MediaStreamTrack):
    """The session's output audio, 20 ms s16 blocks at 48 kHz, each returned when due."""

    kind = "audio"

    def __init__(self, feed: SessionFeed):
        super().__init__()
        self.feed = feed
        self._block: int | None = None
        self._upsampler = Upsampler48k()
        self.blocks_sent = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError("track ended")
        if self._block is None:
            self._block = await self.feed.start() * AUDIO_BLOCKS_PER_FRAME
        block, self._block = self._block, self._block + 1
        pts, half = divmod(block, AUDIO_BLOCKS_PER_FRAME)
        if half == 0:
            self._upsampler.push(await self.feed.audio_of(pts))  # taken when due: retracts win until then
        else:
            await _sleep_until(self.feed.clock.due(pts) + half / (FPS * AUDIO_BLOCKS_PER_FRAME))
        samples = self._upsampler.pop(AUDIO_OUT_SAMPLES_PER_BLOCK)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_OUT_RATE_HZ
        frame.pts, frame.time_base = block * AUDIO_OUT_SAMPLES_PER_BLOCK, Fraction(1, AUDIO_OUT_RATE_HZ)
        self.blocks_sent += 1
        return frame


# ---------------- ICE configuration ----------------
def rtc_configuration(args: WebRtcArgs) -> RTCConfiguration:
    # An explicit empty list: aiortc falls back to a public Google STUN server on None.
    servers = [RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in args.ice_servers]
    return RTCConfiguration(iceServers=servers)


async def restrict_host_candidates(pc: RTCPeerConnection, addresses: list[str]) -> None:
    """Gather host candidates on exactly `addresses` (plus STUN/TURN ones), before aiortc gathers.

    Call after the transceivers exist and before setLocalDescription. aioice
    offers no option for this, so we run its per-component gathering on our
    list and mark gathering as started; checked against aioice 0.13.
    """
    for transceiver in pc.getTransceivers():
        connection = transceiver.receiver.transport.transport.iceGatherer._connection
        if not all(hasattr(connection, a) for a in ("_local_candidates_start", "_local_candidates_end",
                                                    "_local_candidates", "_components")):
            raise RuntimeError("this aioice version cannot restrict host candidates; set webrtc.host_addresses: null")
        if connection._local_candidates_start:
            continue  # bundled transceivers share one connection
        connection._local_candidates_start = True
        for component in sorted(connection._components):
            connection._local_candidates += await connection.get_component_candidates(
                component=component, addresses=addresses)
        connection._local_candidates_end = True
        if not connection._local_candidates:
            raise ServiceError("no_ice_candidates",
                               f"cannot listen on any of webrtc.host_addresses {addresses} (not on this machine?)")


# ---------------- peers ----------------
class Peer:
    """One browser (or client) watching one session: a peer connection, its feed and tracks."""

    def __init__(self, peer_id: str, session: Session, pc: RTCPeerConnection, viewer: Viewer):
        self.peer_id, self.session, self.pc, self.viewer = peer_id, session, pc, viewer
        self.feed = SessionFeed(viewer, session.clock, session.metrics)
        self.video = SessionVideoTrack(self.feed)
        self.audio = SessionAudioTrack(self.feed)
        self.created_at = time.time()
        self.closed: asyncio.Future | None = None
        self.close_reason: str | None = None
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"peer {self.peer_id} {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, reason: str) -> None:
        """Stop the tracks and the connection and leave the session; safe to call more than once."""
        if self.closed is not None:
            await asyncio.shield(self.closed)
            return
        self.closed = asyncio.get_running_loop().create_future()
        self.close_reason = reason
        try:
            me = asyncio.current_task()
            others = [t for t in self._tasks if t is not me]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            self.video.stop()
            self.audio.stop()
            with contextlib.suppress(Exception):  # a connection that failed may fail to close too
                await asyncio.wait_for(self.pc.close(), CLOSE_TIMEOUT_S)
        finally:
            self.session.unsubscribe(self.viewer)
            self.closed.set_result(None)

    def info(self) -> dict:
        return {"peer_id": self.peer_id, "connection_state": self.pc.connectionState,
                "ice_connection_state": self.pc.iceConnectionState, "created_at": self.created_at,
                "video_frames_sent": self.video.frames_sent, "audio_blocks_sent": self.audio.blocks_sent,
                "start_pts": self.feed.start_pts}


class WebRtcHub:
    """The WebRTC peers of one SessionHost replica, by session."""

    def __init__(self, args: WebRtcArgs):
        self.args = args
        self._peers: dict[str, dict[str, Peer]] = {}
        self._tasks: set[asyncio.Task] = set()

    async def answer(self, session: Session, sdp: str, type: str) -> dict:
        """Offer in, answer out (candidates included: no trickle ICE)."""
        peers = self._peers.setdefault(session.session_id, {})
        if len(peers) >= self.args.max_peers_per_session:
            raise ServiceError("too_many_peers",
                               f"session already has {len(peers)} WebRTC peers (limit {self.args.max_peers_per_session})")
        viewer = session.subscribe(want_audio=True, want_raw=True)
        peer = Peer(f"w_{secrets.token_hex(8)}", session, RTCPeerConnection(rtc_configuration(self.args)), viewer)
        peers[peer.peer_id] = peer  # counted while negotiating, so concurrent offers respect the limit
        try:
            answer = await asyncio.wait_for(self._negotiate(peer, sdp, type), self.args.gather_timeout_s)
        except asyncio.TimeoutError:
            await self._close(peer, "negotiation timed out")
            raise ServiceError("ice_gathering_timeout",
                               f"ICE gathering took longer than {self.args.gather_timeout_s:.0f} s") from None
        except BaseException:
            await self._close(peer, "negotiation failed")
            raise
        self._watch(peer)
        return {"sdp": answer.sdp, "type": answer.type, "peer_id": peer.peer_id}

    async def _negotiate(self, peer: Peer, sdp: str, type: str) -> RTCSessionDescription:
        pc = peer.pc
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=type))
        except (ValueError, TypeError, KeyError, IndexError) as err:
            raise ServiceError("bad_sdp", f"cannot parse the offer: {err}") from None
        kinds = {t.kind for t in pc.getTransceivers()}
        if not kinds & {"audio", "video"}:
            raise ServiceError("no_media", "the offer asks for neither audio nor video")
        # Tracks go to the offered transceivers; the answer keeps the client's codec order.
        for track in (peer.video, peer.audio):
            if track.kind in kinds:
                pc.addTrack(track)
        if self.args.host_addresses is not None:
            await restrict_host_candidates(pc, self.args.host_addresses)
        await pc.setLocalDescription(await pc.createAnswer())  # gathers every candidate first
        return pc.localDescription

    def _watch(self, peer: Peer) -> None:
        """Close the peer when its session ends, its connection fails or closes, or it never connects."""
        peer.spawn(self._until_feed_ends(peer), "feed")
        peer.spawn(self._connect_deadline(peer), "connect deadline")

        @peer.pc.on("connectionstatechange")
        def _on_state() -> None:
            if peer.pc.connectionState in ("failed", "closed"):
                self._close_later(peer, f"connection {peer.pc.connectionState}")

    async def _until_feed_ends(self, peer: Peer) -> None:
        await peer.feed.run()
        self._close_later(peer, peer.feed.end_reason or "session ended")

    async def _connect_deadline(self, peer: Peer) -> None:
        await asyncio.sleep(self.args.connect_timeout_s)
        if peer.pc.connectionState != "connected":
            self._close_later(peer, f"not connected within {self.args.connect_timeout_s:.0f} s")

    def _close_later(self, peer: Peer, reason: str) -> None:
        """Close in a task of the hub's own: the caller may be one of the peer's tasks."""
        if peer.closed is not None:
            return
        task = asyncio.get_running_loop().create_task(self._close(peer, reason), name=f"close {peer.peer_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, peer: Peer, reason: str) -> None:
        log.info("webrtc peer %s of %s closing: %s", peer.peer_id, peer.session.session_id, reason)
        try:
            await peer.close(reason)
        finally:
            peers = self._peers.get(peer.session.session_id, {})
            peers.pop(peer.peer_id, None)
            if not peers:
                self._peers.pop(peer.session.session_id, None)

    def peers(self, session_id: str) -> list[dict]:
        return [p.info() for p in self._peers.get(session_id, {}).values()]

    async def close_peer(self, session_id: str, peer_id: str) -> None:
        """A client ends its peer (WHEP's DELETE of the resource)."""
        peer = self._peers.get(session_id, {}).get(peer_id)
        if peer is None:
            raise ServiceError("unknown_peer", f"no WebRTC peer {peer_id!r} in this session")
        await self._close(peer, "closed by the client")

