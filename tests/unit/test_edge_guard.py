"""The edge guard (deployments/api/guard.py) and the error handlers (api/edge.py) on a small
app, without Ray: foreign Host and Origin refused, the token, body limits before the app
reads or works, and one `{error, code}` shape for Starlette's own errors and for faults."""
from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from fastapi import FastAPI, Request, WebSocket
from pydantic import ValidationError
from starlette.testclient import TestClient, WebSocketDenialResponse

from deployments.api.edge import HTTP_STATUS, install_error_handlers
from deployments.api.guard import EdgePolicy, install_guard, is_loopback_host, normalize_origin
from deployments.config import AppArgs

BASE = "http://127.0.0.1:8000"
WS = "ws://127.0.0.1:8000/v1/sessions/x/ws"  # the test client joins a WebSocket path to ws://testserver
SAME_ORIGIN = {"origin": BASE}
FOREIGN_ORIGIN = {"origin": "http://rebind.example"}
TOKEN = "t0ken-for-the-edge-tests"
UPLOAD_LIMIT_BYTES = 300_000


def policy(**edge) -> EdgePolicy:
    return EdgePolicy.from_args(AppArgs.model_validate(
        {"edge": {"max_json_bytes": 4096, **edge}, "limits": {"max_upload_bytes": UPLOAD_LIMIT_BYTES}}))


def make_app(edge_policy: EdgePolicy, worked: list | None = None) -> FastAPI:
    """Routes shaped like the Router's: a list, JSON and raw bodies, an upload, a WebSocket."""
    app = FastAPI()
    install_error_handlers(app)
    install_guard(app, lambda: edge_policy)
    worked = [] if worked is None else worked

    @app.get("/")
    async def page():
        return {"page": True}

    @app.get("/v1/sessions")
    async def sessions():
        return {"sessions": ["secret"]}

    @app.post("/v1/sessions")
    async def create(body: dict):
        worked.append("create")
        return body

    @app.post("/v1/sessions/{session_id}/events")
    async def event(session_id: str, request: Request):
        data = await request.body()
        worked.append("event")
        return {"bytes": len(data)}

    @app.post("/v1/personas")
    async def upload(request: Request):
        data = await request.body()
        return {"bytes": len(data)}

    @app.delete("/v1/sessions/{session_id}", status_code=204)
    async def delete(session_id: str):
        return None

    @app.get("/boom")
    async def boom():
        raise RuntimeError("a secret in a traceback")

    @app.websocket("/v1/sessions/{session_id}/ws")
    async def ws(socket: WebSocket, session_id: str):
        await socket.accept()
        await socket.send_text("frames")
        await socket.close()

    return app


def client(edge_policy: EdgePolicy | None = None, base: str = BASE, **kwargs) -> TestClient:
    return TestClient(make_app(edge_policy or policy()), base_url=base, **kwargs)


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "code"} and response.json()["code"] == code
    assert HTTP_STATUS[code] == status


# ---------------- Host ----------------
@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "[::1]",
                                  "LOCALHOST:1"])
def test_loopback_hosts_are_served_on_any_port(host):
    assert client().get("/v1/sessions", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("host", ["rebind.example", "rebind.example:8000", "127.0.0.1.rebind.example",
                                  "localhost:notaport", "evil@localhost", "192.168.1.5:8000"])
def test_a_foreign_host_is_refused_before_any_route(host):
    assert_error(client().get("/v1/sessions", headers={"host": host}), 403, "forbidden_host")


def test_configured_hosts_are_served_and_star_serves_any():
    lan = client(policy(allowed_hosts=["avatar.lan", "192.168.1.5"], api_token=TOKEN),
                 headers={"authorization": f"Bearer {TOKEN}"})
    assert lan.get("/v1/sessions", headers={"host": "avatar.lan:8000"}).status_code == 200
    assert lan.get("/v1/sessions", headers={"host": "192.168.1.5"}).status_code == 200
    assert_error(lan.get("/v1/sessions", headers={"host": "other.lan"}), 403, "forbidden_host")
    anything = client(policy(allowed_hosts=["*"], api_token=TOKEN), headers={"authorization": f"Bearer {TOKEN}"})
    assert anything.get("/v1/sessions", headers={"host": "whatever.example"}).status_code == 200


def test_a_foreign_host_cannot_open_a_websocket():
    with pytest.raises(WebSocketDenialResponse) as denied:
        with client().websocket_connect(WS, headers={"host": "rebind.example"}):
            pass
    assert denied.value.status_code == 403 and denied.value.json()["code"] == "forbidden_host"


# ---------------- Origin ----------------
def test_a_foreign_origin_is_refused_on_state_changing_methods():
    c = client()
    assert_error(c.post("/v1/sessions", json={}, headers=FOREIGN_ORIGIN), 403, "forbidden_origin")
    assert_error(c.delete("/v1/sessions/x", headers=FOREIGN_ORIGIN), 403, "forbidden_origin")
    assert_error(c.post("/v1/sessions/x/events", content=b'{"type": "interrupt"}',
                        headers={**FOREIGN_ORIGIN, "content-type": "text/plain"}), 403, "forbidden_origin")
    assert_error(c.post("/v1/sessions", json={}, headers={"origin": "null"}), 403, "forbidden_origin")
    other_port = {"origin": "http://127.0.0.1:3000"}  # another local web app is another origin
    assert_error(c.post("/v1/sessions", json={}, headers=other_port), 403, "forbidden_origin")


def test_same_origin_and_no_origin_are_accepted():
    c = client()
    assert c.post("/v1/sessions", json={"a": 1}, headers=SAME_ORIGIN).json() == {"a": 1}
    assert c.post("/v1/sessions", json={"a": 1}, headers={"origin": "https://127.0.0.1:8000"}).status_code == 200
    assert c.delete("/v1/sessions/x", headers={"host": "localhost", "origin": "http://localhost"}).status_code == 204
    assert c.post("/v1/sessions", json={"a": 1}).status_code == 200  # curl, scripts: no Origin
    assert c.get("/v1/sessions", headers=FOREIGN_ORIGIN).status_code == 200  # a read with CORS: unreadable there


def test_configured_origins_are_accepted():
    c = client(policy(allowed_origins=["https://app.example", "http://localhost:3000"]))
    assert c.post("/v1/sessions", json={}, headers={"origin": "https://app.example"}).status_code == 200
    assert c.post("/v1/sessions", json={}, headers={"origin": "https://app.example:443"}).status_code == 200
    assert c.post("/v1/sessions", json={}, headers={"origin": "http://localhost:3000"}).status_code == 200
    assert_error(c.post("/v1/sessions", json={}, headers={"origin": "http://app.example"}), 403, "forbidden_origin")


def test_websocket_origin_is_checked():
    c = client()
    with pytest.raises(WebSocketDenialResponse) as denied:
        with c.websocket_connect(WS, headers=FOREIGN_ORIGIN):
            pass
    assert denied.value.status_code == 403 and denied.value.json()["code"] == "forbidden_origin"
    for headers in (SAME_ORIGIN, {}):
        with c.websocket_connect(WS, headers=headers) as ws:
            assert ws.receive_text() == "frames"


def test_a_cross_site_subresource_is_refused_but_a_navigation_is_not():
    c = client()
    img = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors", "sec-fetch-dest": "image"}
    assert_error(c.get("/v1/sessions", headers=img), 403, "forbidden_origin")
    assert_error(c.get("/v1/sessions", headers={**img, "sec-fetch-site": "same-site"}), 403, "forbidden_origin")
    assert c.get("/", headers={"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}).status_code == 200
    assert c.get("/v1/sessions", headers={**img, "sec-fetch-site": "same-origin"}).status_code == 200


# ---------------- token ----------------
def test_the_token_is_required_where_configured():
    c = client(policy(api_token=TOKEN))
    refused = c.get("/v1/sessions")
    assert_error(refused, 401, "unauthorized")
    assert refused.headers["www-authenticate"] == "Bearer"
    assert_error(c.get("/v1/sessions", headers={"authorization": "Bearer wrong-token-wrong-token"}), 401,
                 "unauthorized")
    assert_error(c.get("/v1/sessions", params={"access_token": "nope"}), 401, "unauthorized")
    assert c.get("/v1/sessions", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert c.get("/v1/sessions", params={"access_token": TOKEN}).status_code == 200
    assert c.get("/").status_code == 200  # the page loads by navigation, without it


def test_the_websocket_takes_the_token_as_a_query_parameter():
    c = client(policy(api_token=TOKEN))
    with pytest.raises(WebSocketDenialResponse) as denied:
        with c.websocket_connect(WS):
            pass
    assert denied.value.status_code == 401
    with c.websocket_connect(f"{WS}?access_token={TOKEN}") as ws:
        assert ws.receive_text() == "frames"


def test_serving_beyond_loopback_without_a_token_refuses_to_start():
    for edge in ({"listen_host": "0.0.0.0"}, {"allowed_hosts": ["avatar.lan"]}, {"allowed_hosts": ["*"]}):
        with pytest.raises(ValidationError, match="api_token is required"):
            AppArgs.model_validate({"edge": edge})
        AppArgs.model_validate({"edge": {**edge, "api_token": TOKEN}})
    AppArgs.model_validate({"edge": {"listen_host": "::1", "allowed_hosts": ["127.0.0.2"]}})
    with pytest.raises(ValidationError, match="origins are"):
        AppArgs.model_validate({"edge": {"allowed_origins": ["app.example"]}})
    with pytest.raises(ValidationError):
        AppArgs.model_validate({"edge": {"api_token": "short"}})


def test_host_and_origin_helpers():
    assert is_loopback_host("127.0.0.9") and is_loopback_host("[::1]") and is_loopback_host("localhost.")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("localhost.example")
    assert normalize_origin("HTTPS://App.Example") == ("https", "app.example", 443)
    assert normalize_origin("http://[::1]:8000") == ("http", "::1", 8000)
    assert normalize_origin("null") is None and normalize_origin("file:///x") is None


# ---------------- body size ----------------
def asgi_call(app, scope: dict, chunks: list[bytes]) -> tuple[list[dict], int]:
    """Drive `app` directly: the messages it sent, and how many body chunks it read."""
    sent, read = [], [0]

    async def receive():
        if read[0] < len(chunks):
            read[0] += 1
            return {"type": "http.request", "body": chunks[read[0] - 1], "more_body": read[0] < len(chunks)}
        raise AssertionError("the body was read past its end")

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent, read[0]


def http_scope(path: str, headers: dict) -> dict:
    return {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": b"", "scheme": "http", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5),
            "headers": [(k.encode(), v.encode()) for k, v in {"host": "127.0.0.1:8000", **headers}.items()],
            "http_version": "1.1", "asgi": {"version": "3.0"}}


def test_an_oversized_content_length_is_refused_without_reading_the_body():
    worked = []
    app = make_app(policy(), worked)
    sent, read = asgi_call(app, http_scope("/v1/sessions", {"content-length": str(2**30),
                                                              "content-type": "application/json"}), [])
    assert read == 0 and worked == []
    assert sent[0]["status"] == 413 and json.loads(sent[1]["body"])["code"] == "too_large"


def test_limits_are_per_route_class():
    c = client()
    assert_error(c.post("/v1/sessions", content=b"x" * 5000, headers={"content-type": "application/json"}), 413,
                 "too_large")
    assert c.post("/v1/personas", content=b"x" * 5000).json() == {"bytes": 5000}  # an upload's limit is larger
    assert_error(c.post("/v1/personas", content=b"x" * (UPLOAD_LIMIT_BYTES + 70_000)), 413, "too_large")
    assert_error(c.post("/v1/sessions", content=b"{}", headers={"content-length": "12abc"}), 400, "bad_request")


def test_a_chunked_body_is_refused_once_over_its_limit():
    worked = []
    app = make_app(policy(), worked)
    chunks = [b"x" * 1024] * 64  # 64 KiB against 4 KiB
    sent, read = asgi_call(app, http_scope("/v1/sessions/x/events", {"transfer-encoding": "chunked"}), chunks)
    assert read == 5 and worked == []  # stopped at the first chunk over; the route never ran
    assert sent[0]["status"] == 413 and json.loads(sent[-1]["body"])["code"] == "too_large"
    small, _ = asgi_call(app, http_scope("/v1/sessions/x/events", {"transfer-encoding": "chunked"}), [b"ab"] * 3)
    assert small[0]["status"] == 200 and json.loads(small[1]["body"]) == {"bytes": 6}


def test_a_chunked_body_through_the_client():
    def body():
        yield b"x" * 3000
        yield b"x" * 3000

    assert_error(client().post("/v1/sessions/x/events", content=body()), 413, "too_large")


# ---------------- one error shape ----------------
def test_unknown_routes_and_methods_answer_error_and_code():
    c = client()
    missing = c.get("/v1/nothing-here")
    assert_error(missing, 404, "not_found")
    assert "/v1/nothing-here" in missing.json()["error"]
    wrong = c.put("/v1/sessions", json={})
    assert_error(wrong, 405, "method_not_allowed")
    assert "GET" in wrong.headers["allow"]


def test_deep_and_broken_json_answer_error_and_code():
    c = client(policy(max_json_bytes=64 * 1024))
    deep = b"[" * 20_000 + b"]" * 20_000
    assert_error(c.post("/v1/sessions", content=deep, headers={"content-type": "application/json"}), 400,
                 "bad_request")
    assert_error(c.post("/v1/sessions", content=b"{", headers={"content-type": "application/json"}), 422,
                 "invalid_request")


def test_a_fault_answers_500_without_its_traceback():
    response = client(raise_server_exceptions=False).get("/boom")
    assert response.status_code == 500 and response.json() == {"error": "internal error", "code": "internal"}
    assert "secret" not in response.text


def test_a_websocket_refusal_without_the_http_response_extension_is_a_close():
    app = make_app(policy())
    scope = {"type": "websocket", "path": "/v1/sessions/x/ws", "root_path": "", "query_string": b"",
             "headers": [(b"host", b"rebind.example")], "asgi": {"version": "3.0"}}
    sent = []

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "websocket.close" and sent[0]["code"] == 4403


# ---------------- the Router's pieces ----------------
def test_the_page_may_not_be_framed_and_connects_only_to_its_own_origin():
    router = pytest.importorskip("deployments.router")
    csp = dict(d.strip().split(" ", 1) for d in router.PAGE_CSP.split(";"))
    assert csp["frame-ancestors"] == "'none'" and csp["connect-src"] == "'self'"
    headers = router.static_file("index.html").headers
    assert headers["x-frame-options"] == "DENY" and headers["content-security-policy"] == router.PAGE_CSP


def test_every_multipart_parse_failure_answers_bad_multipart():
    router = pytest.importorskip("deployments.router")
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/upload")
    async def upload(request: Request):
        form = await router.RouterImpl._form(None, request, 10_000)
        return {"fields": len(form)}

    c = TestClient(app, base_url=BASE)
    b = "b0undary"
    fields = "".join(f'--{b}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nv\r\n' for i in range(20))
    files = "".join(f'--{b}\r\nContent-Disposition: form-data; name="f{i}"; filename="x{i}"\r\n\r\nv\r\n'
                    for i in range(3))
    nameless = f"--{b}\r\nContent-Type: text/plain\r\n\r\nv\r\n"
    for body, content_type in ((fields + f"--{b}--\r\n", f"multipart/form-data; boundary={b}"),
                               (files + f"--{b}--\r\n", f"multipart/form-data; boundary={b}"),
                               (nameless + f"--{b}--\r\n", f"multipart/form-data; boundary={b}"),
                               ("no boundary at all", f"multipart/form-data; boundary={b}"),
                               ("x", "multipart/form-data")):
        response = c.post("/upload", content=body.encode(), headers={"content-type": content_type})
        assert_error(response, 400, "bad_multipart")
    assert_error(c.post("/upload", content=b"x" * 200_000, headers={"content-type": "multipart/form-data"}), 413,
                 "too_large")


def test_the_routers_app_has_the_guard_and_the_handlers(monkeypatch):
    """deployments.router's `api` as Serve runs it: the guard takes the replica's AppArgs."""
    router = pytest.importorskip("deployments.router")
    from ray import cloudpickle

    replica = SimpleNamespace(servable_object=SimpleNamespace(args=AppArgs()))
    monkeypatch.setattr(router.serve, "get_replica_context", lambda: replica)
    c = TestClient(cloudpickle.loads(cloudpickle.dumps(router.api)), base_url=BASE)  # as serve.ingress freezes it
    assert_error(c.get("/v1/sessions", headers={"host": "rebind.example"}), 403, "forbidden_host")
    assert_error(c.post("/v1/sessions", json={}, headers=FOREIGN_ORIGIN), 403, "forbidden_origin")
    assert_error(c.post("/v1/sessions", content=b"x", headers={"content-length": str(2**30)}), 413, "too_large")
    assert_error(c.get("/v1/no-such-route"), 404, "not_found")
