"""Bad inputs against the running app while a session streams (issue 19).

A still session streams to a WebSocket viewer at 25 fps; meanwhile every bad input the
fault-and-fuzz probe sent goes through HAProxy and the Router: lying WAV headers, PNGs that
inflate or declare 60000², foreign Host and Origin headers, bodies over the limit (declared,
claimed, chunked), routes and methods that do not exist, consent with control characters,
JSON nested too deep. Each must answer its 4xx with `{error, code}` (never a 500, never a
hang), and the watched session must not notice: ≥ 24 frames a second over the whole period.
The inputs themselves are tests/unit/test_bad_inputs.py's.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import pytest
import websockets

from tests.graph_client import (
    WsViewer,
    create_session,
    deploy_still_app,
    open_ws,
    portrait_png,
    ws_url,
)
from tests.unit.test_bad_inputs import (
    inflating,
    png_chunk,
    png_header_only,
    png_with,
    wav,
)

pytestmark = pytest.mark.graph
ANSWER_TIMEOUT_S = 15.0  # an answer slower than this is a hang
MIN_FPS = 24.0
WATCH_S = 8.0  # the watched period: the bad inputs, then quiet to the end
FOREIGN = "http://evil.example"


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory):
    app = deploy_still_app(ray_serve, tmp_path_factory.mktemp("data"))
    base, persona = app["base"], app["persona"]
    return {"base": base, "persona": persona,
            "watched": create_session(base, persona, "still")["session_id"],
            "victim": create_session(base, persona, "still")["session_id"]}


# ---------------- the bad inputs ----------------
@dataclass
class Case:
    """One bad request and the answer it must get."""

    method: str
    path: str
    status: int
    code: str
    kwargs: dict = field(default_factory=dict)


def upload(image: bytes, **fields) -> dict:
    return {"files": {"image": ("p.png", image, "image/png")}, "data": {"real_person": "false", **fields}}


def render_form(audio: bytes, persona_id: str) -> dict:
    return {"files": {"audio": ("a.wav", audio, "audio/wav")}, "data": {"persona_id": persona_id, "mode": "still"}}


def deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


async def chunked(body: bytes, chunk_bytes: int = 16384):
    for at in range(0, len(body), chunk_bytes):
        yield body[at : at + chunk_bytes]


def http_cases(persona_id: str, victim: str) -> dict[str, Case]:
    """Built before the watch starts: making a 68 MB-inflating PNG takes the test's CPU too."""
    one_hz = wav(rate=1, data=b"\x00" * 8000)
    unknown_codec = wav(codec=0x1234, data=b"\x00" * 8000)
    audio = {"content-type": "audio/wav"}
    session_json = {"persona_id": persona_id, "mode": "still"}
    big_json = json.dumps(session_json | {"padding": "x" * 200_000}).encode()
    return {
        "WAV declaring 1 Hz, /audio": Case("POST", f"/v1/sessions/{victim}/audio", 415, "unsupported_audio",
                                           {"content": one_hz, "headers": audio}),
        "WAV declaring 1 Hz, /v1/render": Case("POST", "/v1/render", 415, "unsupported_audio",
                                               render_form(one_hz, persona_id)),
        "WAV of an unknown codec, /audio": Case("POST", f"/v1/sessions/{victim}/audio", 415, "unsupported_audio",
                                                {"content": unknown_codec, "headers": audio}),
        "WAV of an unknown codec, /v1/render": Case("POST", "/v1/render", 415, "unsupported_audio",
                                                    render_form(unknown_codec, persona_id)),
        "WAV with 0 bits per sample": Case("POST", f"/v1/sessions/{victim}/audio", 415, "unsupported_audio",
                                           {"content": wav(bits=0, block=2), "headers": audio}),
        "PNG whose zTXt inflates to 20 MB": Case("POST", "/v1/personas", 413, "too_large", upload(
            png_with(png_chunk(b"zTXt", b"c\x00\x00" + inflating(20_000_000)), True))),
        "PNG whose iCCP inflates to 68 MB": Case("POST", "/v1/personas", 413, "too_large", upload(
            png_with(png_chunk(b"iCCP", b"i\x00\x00" + inflating(68_000_000)), True))),
        "PNG declaring 60000x60000": Case("POST", "/v1/personas", 413, "too_large",
                                          upload(png_header_only(60000, 60000))),
        "foreign Host": Case("GET", "/v1/sessions", 403, "forbidden_host", {"headers": {"host": "rebind.example"}}),
        "foreign Host with our port": Case("GET", "/v1/modes", 403, "forbidden_host",
                                           {"headers": {"host": "rebind.example:8000"}}),
        "foreign Origin, JSON POST": Case("POST", "/v1/sessions", 403, "forbidden_origin",
                                          {"json": session_json, "headers": {"origin": FOREIGN}}),
        "foreign Origin, multipart POST": Case("POST", "/v1/personas", 403, "forbidden_origin",
                                               upload(portrait_png()) | {"headers": {"origin": FOREIGN}}),
        "foreign Origin, text/plain event": Case(
            "POST", f"/v1/sessions/{victim}/events", 403, "forbidden_origin",
            {"content": b'{"type": "interrupt"}', "headers": {"origin": FOREIGN, "content-type": "text/plain"}}),
        "Origin null, DELETE": Case("DELETE", f"/v1/sessions/{victim}", 403, "forbidden_origin",
                                    {"headers": {"origin": "null"}}),
        "cross-site subresource (MJPEG in an <img>)": Case(
            "GET", f"/v1/sessions/{victim}/mjpeg", 403, "forbidden_origin",
            {"headers": {"sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors"}}),
        "JSON over the limit": Case("POST", "/v1/sessions", 413, "too_large",
                                    {"content": big_json, "headers": {"content-type": "application/json"}}),
        "chunked JSON over the limit": Case("POST", "/v1/sessions", 413, "too_large",
                                            {"content": chunked(big_json),
                                             "headers": {"content-type": "application/json"}}),
        "unknown route": Case("GET", "/v1/nowhere", 404, "not_found"),
        "unknown route under a session": Case("GET", f"/v1/sessions/{victim}/nowhere", 404, "not_found"),
        "wrong method": Case("PUT", "/v1/sessions", 405, "method_not_allowed", {"json": session_json}),
        "wrong method on a persona": Case("PATCH", f"/v1/personas/{persona_id}", 405, "method_not_allowed"),
        "consent with an escape sequence": Case("POST", "/v1/personas", 422, "invalid_consent", {
            "files": {"image": ("p.png", portrait_png(), "image/png")},
            "data": {"real_person": "true", "consent": "I agree \x1b[31m to this use of my face"}}),
        "consent with a right-to-left override": Case("POST", "/v1/personas", 422, "invalid_consent", {
            "files": {"image": ("p.png", portrait_png(), "image/png")},
            "data": {"real_person": "true", "consent": "I agree to \u202eesu siht of my face"}}),
        "JSON nested 50000 deep": Case("POST", "/v1/sessions", 400, "bad_request",
                                       {"content": deep_json(50_000), "headers": {"content-type": "application/json"}}),
        "event nested 30000 deep": Case("POST", f"/v1/sessions/{victim}/events", 422, "invalid_event",
                                        {"content": deep_json(30_000),
                                         "headers": {"content-type": "application/json"}}),
    }


@dataclass
class Got:
    status: int | None
    body: str
    elapsed_s: float


async def send(http: httpx.AsyncClient, case: Case) -> Got:
    t0 = time.monotonic()
    try:
        r = await http.request(case.method, case.path, **case.kwargs)
        return Got(r.status_code, r.text, time.monotonic() - t0)
    except httpx.HTTPError as err:
        return Got(None, repr(err), time.monotonic() - t0)


async def raw_request(base: str, head: str) -> Got:
    """Send a request head as written (no client library adds or fixes a header); its answer."""
    url = urlsplit(base)
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(head.replace("\n", "\r\n").encode() + b"\r\n")
        status, body = await asyncio.wait_for(read_response(reader), ANSWER_TIMEOUT_S)
        return Got(status, body, time.monotonic() - t0)
    except TimeoutError:
        return Got(None, "no answer", time.monotonic() - t0)
    finally:
        writer.close()


def claimed_gigabyte(base: str) -> str:
    """A JSON POST that declares 1 GB and sends none of it: refused from its header, at once."""
    return (f"POST /v1/sessions HTTP/1.1\nHost: {urlsplit(base).netloc}\nContent-Type: application/json\n"
            f"Content-Length: {10**9}\n")


def websocket_handshake(session_id: str, host: str) -> str:
    """A WebSocket opening handshake with exactly the Host given (websockets adds its own)."""
    return (f"GET /v1/sessions/{session_id}/ws HTTP/1.1\nHost: {host}\nUpgrade: websocket\n"
            "Connection: Upgrade\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13\n")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, str]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return int(lines[0].split()[1]), body.decode()


async def foreign_websocket(base: str, session_id: str, **options) -> Got:
    """A WebSocket handshake the guard must refuse: an HTTP 403 (or a 4403 close) before any frame."""
    t0 = time.monotonic()
    try:
        async with websockets.connect(ws_url(base, session_id), open_timeout=ANSWER_TIMEOUT_S, **options) as ws:
            message = await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT_S)
            return Got(None, f"accepted, then sent {str(message)[:80]!r}", time.monotonic() - t0)
    except websockets.InvalidStatus as err:
        return Got(err.response.status_code, err.response.body.decode(errors="replace"), time.monotonic() - t0)
    except websockets.ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd else None
        return Got(code - 4000 if code and code >= 4000 else None, f"closed {code}", time.monotonic() - t0)


def error_body(got: Got) -> dict | None:
    try:
        body = json.loads(got.body)
    except ValueError:
        return None
    ok = isinstance(body, dict) and isinstance(body.get("error"), str) and isinstance(body.get("code"), str)
    return body if ok else None


# ---------------- the watched session ----------------
async def fire_all(app: dict, cases: dict[str, Case]) -> dict[str, Got]:
    base, got = app["base"], {}
    async with httpx.AsyncClient(base_url=base, timeout=ANSWER_TIMEOUT_S) as http:
        for name, case in cases.items():
            got[name] = await send(http, case)
    got["JSON claiming 1 GB"] = await raw_request(base, claimed_gigabyte(base))
    got["WebSocket from a foreign Origin"] = await foreign_websocket(base, app["watched"], origin=FOREIGN)
    got["WebSocket with a foreign Host"] = await raw_request(base, websocket_handshake(app["watched"],
                                                                                       "rebind.example"))
    return got


async def watch_while(app: dict, cases: dict[str, Case]) -> tuple[dict[str, Got], list[float], float]:
    """Fire every case while the watched session streams; the answers, the frames' arrival
    times within the watched period, and its length."""
    async with await open_ws(app["base"], app["watched"]) as ws:
        viewer = WsViewer(ws)
        await viewer.recv_until(lambda v: len(v.frames) >= 25, 30)  # streaming steadily
        reading = asyncio.create_task(viewer.recv_until(lambda v: False, WATCH_S + 30))
        t0 = time.time()
        got = await fire_all(app, cases)
        await asyncio.sleep(max(0.0, WATCH_S - (time.time() - t0)))
        t1 = time.time()
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
    return got, [t for _, _, t in viewer.frames if t0 <= t <= t1], t1 - t0


def test_bad_inputs_answer_4xx_json_while_a_session_streams_at_25_fps(app):
    cases = http_cases(app["persona"], app["victim"])
    got, arrivals, watched_s = asyncio.run(watch_while(app, cases))
    expected = {name: (c.status, c.code) for name, c in cases.items()} | {
        "JSON claiming 1 GB": (413, "too_large"),
        "WebSocket from a foreign Origin": (403, None),
        "WebSocket with a foreign Host": (403, "forbidden_host"),
    }
    wrong = {}
    for name, (status, code) in expected.items():
        g = got[name]
        body = error_body(g)
        json_needed = code is not None or g.body[:1] == "{"
        if g.status != status or (json_needed and (body is None or code not in (None, body["code"]))):
            wrong[name] = (g.status, g.body[:160])
        assert g.elapsed_s < ANSWER_TIMEOUT_S, f"{name}: no answer within {ANSWER_TIMEOUT_S} s"
    slowest = max(got, key=lambda n: got[n].elapsed_s)
    fps = len(arrivals) / watched_s
    print(f"{len(expected)} bad inputs; slowest answer {got[slowest].elapsed_s:.2f} s ({slowest}); "
          f"watched session {fps:.1f} fps over {watched_s:.1f} s")
    assert not wrong, f"wrong answers: {json.dumps(wrong, indent=1)}"
    assert fps >= MIN_FPS, f"the watched session fell to {fps:.1f} fps"
    # Nothing got through: the victim session (a DELETE with Origin null) is still there.
    assert httpx.get(f"{app['base']}/v1/sessions/{app['victim']}").status_code == 200
