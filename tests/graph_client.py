"""A real client of the running app, for graph tests and benchmarks: HTTP, WebSocket, MJPEG."""
from __future__ import annotations

import asyncio
import io
import json
import time

import httpx
import numpy as np
import websockets
from PIL import Image

from deployments.api.protocol import AUDIO_MAGIC, FRAME_HEADER, FRAME_MAGIC


def portrait_png(size: int = 64, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def create_persona(base: str, save: bool = False, size: int = 64) -> str:
    r = httpx.post(f"{base}/v1/personas", files={"image": ("p.png", portrait_png(size), "image/png")},
                   data={"real_person": "false", "save": str(save).lower()})
    assert r.status_code == 201, r.text
    return r.json()["persona_id"]


def create_session(base: str, persona_id: str, mode: str, **extra) -> dict:
    r = httpx.post(f"{base}/v1/sessions", json={"persona_id": persona_id, "mode": mode, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def ws_url(base: str, session_id: str, pacing: str | None = None) -> str:
    query = f"?pacing={pacing}" if pacing else ""
    return base.replace("http://", "ws://") + f"/v1/sessions/{session_id}/ws{query}"


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
            if isinstance(message, bytes):
                magic, index = FRAME_HEADER.unpack_from(message)
                assert magic in (FRAME_MAGIC, AUDIO_MAGIC)
                media = self.frames if magic == FRAME_MAGIC else self.audio
                media.append((index, message[FRAME_HEADER.size:], time.time()))
                self.sequence.append("frame" if magic == FRAME_MAGIC else "audio")
            else:
                event = json.loads(message) | {"t_recv": time.time()}
                self.events.append(event)
                self.sequence.append(event["type"])
                if event["type"] == "clock":
                    self.t0 = event["t0"]
                elif event["type"] == "retract":
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
    return await websockets.connect(ws_url(base, session_id, pacing), max_size=None)


def deploy_still_app(ray_serve: str, data_dir, router_replicas: int = 2) -> dict:
    """The app as a user runs it without a GPU: still mode only, default timeouts, one
    SessionHost, `router_replicas` Routers; with a saved persona to start sessions of."""
    from tests.conftest import deploy_app

    args = {"data_dir": str(data_dir), "router_replicas": router_replicas,
            "router_max_replicas": router_replicas, "backends": {}}
    base = deploy_app(ray_serve, args)
    return {"base": base, "persona": create_persona(base, save=True)}
