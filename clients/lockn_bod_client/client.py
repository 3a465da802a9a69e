"""The async client: REST calls over httpx, a session's WebSocket over websockets.

    async with LockNBodClient("http://127.0.0.1:8000") as client:
        persona = await client.create_persona(Path("me.jpg"), consent="I, Ada Lovelace, consent ...")
        session = await client.create_session(persona["persona_id"], "liveportrait")
        async with client.connect(session["session_id"]) as stream:
            await stream.send_pcm(pcm16_bytes)
            await stream.end_of_speech()
            async for message in stream:           # VideoFrame, AudioChunk or Event
                ...

docs/clients.md has the whole guide; docs/api.md the protocol.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from pathlib import Path
from typing import Any, AsyncIterator, Literal

import httpx
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from . import events
from .errors import LockNBodError
from .playout import PlayoutBuffer
from .wire import AudioChunk, Clock, Event, Message, VideoFrame, parse_message

Pacing = Literal["server", "client"]
_IMAGE_TYPES = ((b"\xff\xd8\xff", "image/jpeg", "jpg"), (b"\x89PNG\r\n\x1a\n", "image/png", "png"))


class StreamClosed(LockNBodError):
    """The session's WebSocket closed. `close_code` is the WebSocket close code; a close the
    server chose for an error (4000 + the HTTP status: 4404, 4400, ...) carries that error's
    `code`, `reason` and `status`."""

    def __init__(self, close_code: int | None, code: str = "closed", reason: str = "", status: int | None = None):
        self.close_code = close_code
        super().__init__(code, reason or f"the WebSocket closed (code {close_code})", status)


def _bytes_of(pcm16: Any) -> bytes:
    """PCM16 from bytes, bytearray, memoryview or anything with the buffer protocol (a numpy int16 array)."""
    data = pcm16 if isinstance(pcm16, bytes) else memoryview(pcm16).cast("B").tobytes()
    if len(data) % 2:
        raise ValueError(f"PCM16 must be whole samples: {len(data)} bytes is odd")
    return data


def _image_type(data: bytes) -> tuple[str, str]:
    for magic, mime, ext in _IMAGE_TYPES:
        if data.startswith(magic):
            return mime, ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", "webp"
    return "application/octet-stream", "bin"  # the server answers 415 not_an_image


class SessionStream:
    """A session's WebSocket: PCM and control events in; frames, audio and events out.

    `recv()` returns the next message parsed: a `VideoFrame` (pts, JPEG), an `AudioChunk`
    (avatar3d speech), or an `Event` (JSON server event). Iterating the stream does the same
    until it closes. The stream keeps what the events say: `ready` (the `session_ready`
    event), `mode` (streaming now), `clock` (client pacing), `errors` (every `error` event),
    `closed_reason` (from `session_closed`), `events` (the last 1000 events, also those that
    `play()` and `frames()` read past).

    With `raise_errors=True`, an `error` event is raised from `recv()` as a `LockNBodError`
    (the socket stays open: call `recv()` again to go on); otherwise it is returned as an
    Event whose `raise_for_error()` raises it.

    Client pacing (`pacing="client"`): every frame also goes into `playout` (a
    `PlayoutBuffer`), and a `retract` event drops the frames it takes back from it before
    `recv()` returns the event. `play()` yields frames when they are due."""

    def __init__(self, ws, session_id: str, pacing: Pacing = "server", raise_errors: bool = False):
        self.ws = ws
        self.session_id = session_id
        self.pacing = pacing
        self.raise_errors = raise_errors
        self.ready: Event | None = None
        self.mode: str | None = None
        self.clock: Clock | None = None
        self.errors: list[Event] = []
        self.events: deque[Event] = deque(maxlen=1000)
        self.closed_reason: str | None = None
        self.playout: PlayoutBuffer | None = PlayoutBuffer() if pacing == "client" else None
        self._pending: deque[Message] = deque()

    # ---- opening ----
    async def _handshake(self, timeout_s: float) -> None:
        """Read up to `session_ready` (kept for `recv()`); a refused stream raises its error."""
        refusal: Event | None = None
        deadline = time.monotonic() + timeout_s
        while self.ready is None:
            try:
                message = await asyncio.wait_for(self.ws.recv(), max(0.0, deadline - time.monotonic()))
            except ConnectionClosed as closed:
                raise self._closed_error(closed, refusal) from None
            except asyncio.TimeoutError:
                await self.ws.close()
                raise LockNBodError("timeout", f"no session_ready within {timeout_s} s") from None
            parsed = self._note(parse_message(message))
            if isinstance(parsed, Event) and parsed.is_error:
                refusal = parsed
            self._pending.append(parsed)

    def _closed_error(self, closed: ConnectionClosed, refusal: Event | None) -> StreamClosed:
        rcvd = closed.rcvd
        code = rcvd.code if rcvd is not None else None
        status = code - 4000 if code is not None and 4000 <= code < 5000 else None
        if refusal is not None:
            return StreamClosed(code, refusal.get("code", "closed"), refusal.get("error", ""), status)
        return StreamClosed(code, reason=(rcvd.reason if rcvd is not None else "") or "", status=status)

    # ---- receiving ----
    def _note(self, message: Message) -> Message:
        """Keep what a message says about the stream."""
        if isinstance(message, VideoFrame):
            if self.playout is not None:
                self.playout.add(message)
            return message
        if isinstance(message, AudioChunk):
            if self.playout is not None:
                self.playout.add_audio(message)
            return message
        self.events.append(message)
        if message.type == "session_ready":
            self.ready, self.mode = message, message.get("mode")
        elif message.type == "mode_changed":
            self.mode = message.get("mode")
        elif message.type == "clock":
            self.clock = Clock(message["t0"], message.get("fps", 25))
            if self.playout is None:  # avatar3d: always paced by the client
                self.playout = PlayoutBuffer()
        elif message.type == "retract":
            if self.playout is not None:
                self.playout.retract(message["from_pts"], message.get("sample"))
        elif message.type == "error":
            self.errors.append(message)
        elif message.type == "session_closed":
            self.closed_reason = message.get("reason")
        return message

    async def recv(self, timeout: float | None = None) -> Message:
        """The next message. Raises `StreamClosed` when the socket closes, `TimeoutError`
        after `timeout` seconds (nothing is lost: call again), and with `raise_errors` a
        `LockNBodError` for an `error` event."""
        if self._pending:
            message = self._pending.popleft()
        else:
            try:
                raw = await asyncio.wait_for(self.ws.recv(), timeout) if timeout is not None else await self.ws.recv()
            except ConnectionClosed as closed:
                raise self._closed_error(closed, None) from None
            message = self._note(parse_message(raw))
        if self.raise_errors and isinstance(message, Event) and message.is_error:
            raise message.as_error()
        return message

    async def __aiter__(self) -> AsyncIterator[Message]:
        """Every message until the socket closes (an error close, 4000 + status, raises)."""
        while True:
            try:
                yield await self.recv()
            except StreamClosed as closed:
                if closed.status is not None:
                    raise
                return

    async def frames(self) -> AsyncIterator[VideoFrame]:
        """Only the video frames, as they arrive (events are still noted on the stream)."""
        async for message in self:
            if isinstance(message, VideoFrame):
                yield message

    async def play(self) -> AsyncIterator[VideoFrame]:
        """Frames when due. Server pacing: as they arrive (the server sends each when due).
        Client pacing: from the playout buffer at `clock.due(pts)`, retracted frames never
        shown; a frame that came late is yielded at once."""
        if self.pacing == "server":
            async for frame in self.frames():
                yield frame
            return
        while True:
            wait = None
            if self.playout and self.clock is not None:
                wait = max(0.0, self.clock.due(self.playout.frames[0].pts) - time.time())
            if wait != 0.0:
                try:
                    await self.recv(timeout=wait)
                except asyncio.TimeoutError:
                    pass
                except StreamClosed as closed:
                    if closed.status is not None:
                        raise
                    return
            if self.clock is not None and self.playout is not None:
                for frame in self.playout.pop_due(time.time(), self.clock):
                    yield frame

    # ---- sending ----
    async def send_pcm(self, pcm16: Any) -> None:
        """Speech: PCM16LE mono at the session's `sample_rate_hz` (bytes, or an int16 array), any length."""
        await self.ws.send(_bytes_of(pcm16))

    async def send_event(self, event: dict[str, Any]) -> None:
        """A control event (see `lockn_bod_client.events`); a refused one comes back as an `error` event."""
        import json

        await self.ws.send(json.dumps(event))

    async def emotion(self, value: str, intensity: float = 1.0) -> None:
        await self.send_event(events.emotion(value, intensity))

    async def interrupt(self) -> None:
        await self.send_event(events.interrupt())

    async def end_of_speech(self) -> None:
        await self.send_event(events.end_of_speech())

    async def listening(self, active: bool) -> None:
        await self.send_event(events.listening(active))

    async def gaze(self, target: events.GazeTarget, x: float | None = None, y: float | None = None) -> None:
        await self.send_event(events.gaze(target, x, y))

    async def pose(self, yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> None:
        await self.send_event(events.pose(yaw_deg, pitch_deg, roll_deg))

    # ---- closing ----
    async def close(self) -> None:
        await self.ws.close()

    async def __aenter__(self) -> "SessionStream":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class _Connecting:
    """What `LockNBodClient.connect` returns: await it, or use it in `async with`."""

    def __init__(self, opener):
        self._opener = opener
        self._stream: SessionStream | None = None

    def __await__(self):
        return self._opener().__await__()

    async def __aenter__(self) -> SessionStream:
        self._stream = await self._opener()
        return self._stream

    async def __aexit__(self, *exc) -> None:
        if self._stream is not None:
            await self._stream.close()


class LockNBodClient:
    """An async client of one LockN Bod server.

    `base_url` is the server (`http://127.0.0.1:8000`); `token` its `edge.api_token`, sent as
    `Authorization: Bearer` on every call and WebSocket handshake. Every call that the server
    refuses raises `LockNBodError` with the answer's `code`, `status` and reason. Answers are
    the server's JSON as dicts (docs/api.md lists their fields). Use it as `async with`, or
    call `aclose()`."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, token: str | None = None,
                 timeout: float = 30.0, http: httpx.AsyncClient | None = None):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._own_http = http is None
        self._timeout = timeout
        self._http = http  # made on first use: a client that only opens WebSockets never needs one

    @property
    def http(self) -> httpx.AsyncClient:
        """The httpx client the REST calls go through."""
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self._timeout, headers=self._headers)
        return self._http

    async def aclose(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> "LockNBodClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        r = await self.http.request(method, path, **kwargs)
        if r.status_code >= 400:
            raise LockNBodError.from_http(r.status_code, r.content, r.headers)
        return r

    # ---- the server ----
    async def health(self) -> bool:
        """True when `/healthz` answers 200."""
        try:
            return (await self.http.get("/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def modes(self) -> list[dict]:
        """Every mode, whether it is available here and why not; what controls it takes."""
        return (await self._request("GET", "/v1/modes")).json()["modes"]

    async def protocol_schema(self) -> dict:
        """The JSON Schema of the WebSocket's messages (`/v1/protocol.json`)."""
        return (await self._request("GET", "/v1/protocol.json")).json()

    # ---- personas ----
    async def create_persona(self, image: bytes | str | Path, *, real_person: bool = True, consent: str | None = None,
                             save: bool = False, check_face_for: str | None = None,
                             filename: str | None = None) -> dict:
        """Upload a portrait (JPEG, PNG or WebP bytes, or a file path) → the record with `persona_id`.

        A real person's face (`real_person=True`, the server's default) needs `consent`, a
        statement such as "I, Ada Lovelace, consent to this avatar of my face". `save=False`
        makes it ephemeral: deleted with its last session. `check_face_for` (`liveportrait`,
        `ditto`) runs that mode's face detector on it first (422 `no_face` at once)."""
        if isinstance(image, (str, Path)):
            filename = filename or Path(image).name
            image = Path(image).read_bytes()
        mime, ext = _image_type(image)
        data = {"real_person": str(bool(real_person)).lower(), "save": str(bool(save)).lower()}
        if consent is not None:
            data["consent"] = consent
        if check_face_for is not None:
            data["check_face_for"] = check_face_for
        files = {"image": (filename or f"portrait.{ext}", image, mime)}
        return (await self._request("POST", "/v1/personas", files=files, data=data)).json()

    async def get_persona(self, persona_id: str) -> dict:
        return (await self._request("GET", f"/v1/personas/{persona_id}")).json()

    async def delete_persona(self, persona_id: str) -> None:
        """Delete a persona (409 `persona_in_use` while sessions use it)."""
        await self._request("DELETE", f"/v1/personas/{persona_id}")

    # ---- sessions ----
    async def create_session(self, persona_id: str | None = None, mode: str = "still", *, emotion: str | None = None,
                             intensity: float | None = None, sample_rate_hz: int | None = None,
                             **options: Any) -> dict:
        """Open a session → `session_id`, `mode` (streaming now), `requested_mode`, `urls`.

        `sample_rate_hz` is the rate of the PCM you will send on the WebSocket (16000 by
        default). Other fields of docs/api.md#sessions go in `options` (`avatar_id`,
        `allow_still`, `max_wait_s`, `resolution_px`). Over the session cap, a 503
        `LockNBodError` carries `retry_after`."""
        body: dict[str, Any] = {"mode": mode, **options}
        for key, value in (("persona_id", persona_id), ("emotion", emotion), ("intensity", intensity),
                           ("sample_rate_hz", sample_rate_hz)):
            if value is not None:
                body[key] = value
        return (await self._request("POST", "/v1/sessions", json=body)).json()

    async def get_session(self, session_id: str) -> dict:
        """The session's state: mode, emotion, viewers, buffered audio, frames out, `speaking`,
        and the controls asked for last: `listening`, `gaze` [x, y], `pose_deg` {pitch, yaw, roll}."""
        return (await self._request("GET", f"/v1/sessions/{session_id}")).json()

    async def list_sessions(self) -> list[dict]:
        body = (await self._request("GET", "/v1/sessions")).json()
        return body["sessions"] if isinstance(body, dict) else body

    async def delete_session(self, session_id: str) -> None:
        await self._request("DELETE", f"/v1/sessions/{session_id}")

    # ---- audio and events over HTTP ----
    async def send_audio(self, session_id: str, body: bytes, content_type: str) -> float:
        """Speech in one body (`audio/wav`, `audio/pcm;rate=<Hz>`, ...) → the seconds accepted."""
        r = await self._request("POST", f"/v1/sessions/{session_id}/audio", content=body,
                                headers={"content-type": content_type})
        return r.json()["accepted_s"]

    async def send_pcm(self, session_id: str, pcm16: Any, rate_hz: int | None = None) -> float:
        """Raw PCM16LE mono at `rate_hz` (default: the session's `sample_rate_hz`) → seconds accepted."""
        content_type = f"audio/pcm;rate={rate_hz}" if rate_hz else "audio/pcm"
        return await self.send_audio(session_id, _bytes_of(pcm16), content_type)

    async def send_wav(self, session_id: str, wav: bytes | str | Path) -> float:
        """A WAV file (bytes or a path) → seconds accepted."""
        if isinstance(wav, (str, Path)):
            wav = Path(wav).read_bytes()
        return await self.send_audio(session_id, wav, "audio/wav")

    async def send_event(self, session_id: str, event: dict[str, Any]) -> None:
        """A control event (`lockn_bod_client.events`); a refused one raises (422 `invalid_event`, 409 ...)."""
        await self._request("POST", f"/v1/sessions/{session_id}/events", json=event)

    async def emotion(self, session_id: str, value: str, intensity: float = 1.0) -> None:
        await self.send_event(session_id, events.emotion(value, intensity))

    async def interrupt(self, session_id: str) -> None:
        await self.send_event(session_id, events.interrupt())

    async def end_of_speech(self, session_id: str) -> None:
        await self.send_event(session_id, events.end_of_speech())

    async def listening(self, session_id: str, active: bool) -> None:
        await self.send_event(session_id, events.listening(active))

    async def gaze(self, session_id: str, target: events.GazeTarget, x: float | None = None,
                   y: float | None = None) -> None:
        await self.send_event(session_id, events.gaze(target, x, y))

    async def pose(self, session_id: str, yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> None:
        await self.send_event(session_id, events.pose(yaw_deg, pitch_deg, roll_deg))

    # ---- the WebSocket ----
    def ws_url(self, session_id: str, pacing: Pacing | None = None) -> str:
        """The session's WebSocket address (`?pacing=` only when given)."""
        base = "ws" + self.base_url[len("http"):] if self.base_url.startswith("http") else self.base_url
        return f"{base}/v1/sessions/{session_id}/ws" + (f"?pacing={pacing}" if pacing else "")

    async def open_websocket(self, session_id: str, pacing: Pacing | None = None, open_timeout: float = 30.0):
        """The raw websockets connection (no handshake read): for tests of the wire itself."""
        try:
            return await websockets.connect(self.ws_url(session_id, pacing), max_size=None,
                                            additional_headers=self._headers or None, open_timeout=open_timeout)
        except InvalidStatus as refused:
            response = refused.response
            raise LockNBodError.from_http(response.status_code, response.body or b"", response.headers) from None

    def connect(self, session_id: str, *, pacing: Pacing = "server", raise_errors: bool = False,
                open_timeout: float = 30.0) -> _Connecting:
        """Open the session's WebSocket: `async with client.connect(id) as stream`, or
        `stream = await client.connect(id)`. Returns once `session_ready` has arrived (it and
        a client-paced `clock` are still delivered by `recv()`); a refusal (an unknown session:
        404 `unknown_session`; a bad pacing) raises `LockNBodError` with the server's code."""

        async def opener() -> SessionStream:
            ws = await self.open_websocket(session_id, pacing if pacing != "server" else None, open_timeout)
            stream = SessionStream(ws, session_id, pacing, raise_errors)
            await stream._handshake(open_timeout)
            return stream

        return _Connecting(opener)
