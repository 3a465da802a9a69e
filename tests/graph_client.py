"""The graph tests' and benchmarks' helpers, on the project's client (lockn_bod_client).

REST calls go through `LockNBodClient`; `open_ws` gives the raw websockets connection (the
tests check the wire itself: close codes, headers, refused messages), and `WsViewer` parses
what it receives with the client's parser and keeps a client-paced playout buffer with the
client's `PlayoutBuffer`. MJPEG has no client API: `mjpeg_frames` reads it over httpx.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import io
import time

import httpx
import numpy as np
from PIL import Image

from lockn_bod_client import AudioChunk, LockNBodClient, PlayoutBuffer, VideoFrame, parse_message


def run_sync(coro):
    """Run a client coroutine to its end from sync code, inside a running event loop or not
    (in a thread of its own, as the sync httpx calls these helpers replaced blocked)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _call(base: str, method: str, *args, **kwargs):
    async with LockNBodClient(base) as client:
        return await getattr(client, method)(*args, **kwargs)


def portrait_png(size: int = 64, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def create_persona(base: str, save: bool = False, size: int = 64) -> str:
    """A random (not a real person's) portrait uploaded; its persona_id. Raises LockNBodError if refused."""
    record = run_sync(_call(base, "create_persona", portrait_png(size), real_person=False, save=save))
    return record["persona_id"]


def create_session(base: str, persona_id: str, mode: str, **extra) -> dict:
    """POST /v1/sessions: the 201 body. Raises LockNBodError if refused."""
    return run_sync(_call(base, "create_session", persona_id, mode, **extra))


def delete_session(base: str, session_id: str) -> None:
    run_sync(_call(base, "delete_session", session_id))


def ws_url(base: str, session_id: str, pacing: str | None = None) -> str:
    return LockNBodClient(base).ws_url(session_id, pacing)


class WsViewer:
    """Collects frames (pts, jpeg, t_recv), avatar3d's audio (first sample, PCM16 bytes,
    t_recv) and events from a session's WebSocket; `sequence` keeps every message's kind in
    arrival order ("frame", "audio", or the event's type).

    With client pacing it is the client's playout buffer too: a `retract` event drops
    the frames it takes back, `clock` gives each frame its due time (`due`)."""

    def __init__(self, ws):
        self.ws = ws
        self.frames: list[tuple[int, bytes, float]] = []
        self.audio: list[tuple[int, bytes, float]] = []
        self.events: list[dict] = []
        self.sequence: list[str] = []
        self.t0: float | None = None  # from a `clock` event (client pacing only)
        self.playout = PlayoutBuffer()  # the client's playout buffer: what a client-paced player holds

    def due(self, pts: int) -> float:
        return self.t0 + pts / 25

    async def recv_until(self, done, timeout_s: float = 30.0) -> None:
        deadline = time.time() + timeout_s
        while not done(self):
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError(f"condition not met; events so far: {self.events[-5:]}")
            try:
                message = await asyncio.wait_for(self.ws.recv(), left)
            except asyncio.TimeoutError:
                raise TimeoutError(f"condition not met in {timeout_s} s; {len(self.frames)} frames, "
                                   f"last events: {self.events[-5:]}") from None
            parsed = parse_message(message)
            if isinstance(parsed, VideoFrame):
                self.frames.append((parsed.pts, parsed.jpeg, parsed.t_recv))
                self.playout.add(parsed)
                self.sequence.append("frame")
            elif isinstance(parsed, AudioChunk):
                self.audio.append((parsed.sample, parsed.pcm16, parsed.t_recv))
                self.sequence.append("audio")
            else:
                event = parsed.data | {"t_recv": parsed.t_recv}
                self.events.append(event)
                self.sequence.append(parsed.type)
                if parsed.type == "clock":
                    self.t0 = event["t0"]
                elif parsed.type == "retract":
                    self.playout.retract(event["from_pts"])
                    self.frames = [f for f in self.frames if f[0] < event["from_pts"]]

    def in_mode(self, mode: str) -> bool:
        """The session streams `mode`: said by session_ready (on connect) or a later mode_changed."""
        current = None
        for e in self.events:
            if e["type"] in ("session_ready", "mode_changed"):
                current = e["mode"]
        return current == mode

    def has(self, kind: str, **match) -> bool:
        return any(e["type"] == kind and all(e.get(k) == v for k, v in match.items()) for e in self.events)


async def mjpeg_frames(base: str, session_id: str, out: list) -> None:
    """Append (pts, jpeg) of every MJPEG part until cancelled (see `stop_task`)."""
    async with httpx.AsyncClient(timeout=None) as client:
        async with client.stream("GET", f"{base}/v1/sessions/{session_id}/mjpeg") as r:
            assert r.status_code == 200
            buf = b""
            async for chunk in r.aiter_bytes():
                buf += chunk
                while True:
                    head_end = buf.find(b"\r\n\r\n")
                    if head_end < 0:
                        break
                    headers = dict(line.split(": ", 1) for line in buf[:head_end].decode().split("\r\n")[1:])
                    length = int(headers["Content-Length"])
                    if len(buf) < head_end + 4 + length + 2:
                        break
                    jpeg = buf[head_end + 4 : head_end + 4 + length]
                    out.append((int(headers["X-Frame-Index"]), jpeg))
                    buf = buf[head_end + 4 + length + 2 :]


async def stop_task(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def open_ws(base: str, session_id: str, pacing: str | None = None):
    """The session's raw WebSocket, opened as LockNBodClient opens it."""
    return await LockNBodClient(base).open_websocket(session_id, pacing)


def deploy_still_app(ray_serve: str, data_dir, router_replicas: int = 2) -> dict:
    """The app as a user runs it without a GPU: still mode only, default timeouts, one
    SessionHost, `router_replicas` Routers; with a saved persona to start sessions of."""
    from tests.local_cluster import deploy_app

    args = {"data_dir": str(data_dir), "router_replicas": router_replicas,
            "router_max_replicas": router_replicas, "backends": {}}
    base = deploy_app(ray_serve, args)
    return {"base": base, "persona": create_persona(base, save=True)}
