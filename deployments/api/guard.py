"""The guard in front of every route: who may call, and how large a body may be, decided
before the app does any work.

A pure ASGI middleware (HTTP and WebSocket), so a refusal costs no body read, no parse and
no Ray call:

- **Host.** A browser sends the name it resolved, so with DNS rebinding a page from
  `rebind.example` reaches 127.0.0.1 with `Host: rebind.example`. Only loopback names and
  the configured `edge.allowed_hosts` are served (any port).
- **Origin.** A browser sends it on WebSockets (which have no same-origin rule) and on
  cross-site POSTs (which need no preflight when multipart or text/plain). For those and
  every state-changing method, an Origin must be the server's own (same host and port as
  `Host`, http or https) or one of `edge.allowed_origins`. A cross-site subresource
  (`Sec-Fetch-Site`, e.g. an `<img>` of a session's MJPEG on another site) is refused alike.
- **Token.** With `edge.api_token` set, every route but the page, its files and /healthz
  needs it: `Authorization: Bearer <token>`, or `access_token=<token>` in the query where a
  browser cannot set a header (WebSocket, `<img>`).
- **Body size.** A declared Content-Length over the route's limit is refused at once; a
  chunked body is counted as it arrives and refused once over.

Refusals answer `{error, code}` with a 4xx status; a WebSocket is refused before its
handshake completes (an HTTP response where the server supports it, else a close).
"""
from __future__ import annotations

import hmac
import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable
from urllib.parse import parse_qs, urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .edge import error_response, ws_close_code
from .errors import ServiceError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..config import AppArgs

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
ANY_HOST = "*"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# Routes a browser loads by navigation, which cannot carry a token; none reveals a session.
PUBLIC_PATHS = frozenset({"/", "/healthz"})
PUBLIC_PREFIX = "/static/"
TOKEN_PARAM = "access_token"
# A multipart body carries its file and a few small fields: the file's limit plus this.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
CROSS_SITE = frozenset({"cross-site", "same-site"})


def is_loopback_host(host: str) -> bool:
    """A loopback name or address (`localhost`, 127.0.0.0/8, ::1), brackets allowed."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split_authority(authority: str, default_port: int | None = None) -> tuple[str, int | None]:
    """`Host`-style `name[:port]` (IPv6 in brackets) as (lower-case name, port); a bad
    port gives port -1, which matches nothing."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        name, _, rest = authority[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = authority.partition(":")
    if not port:
        return name.rstrip("."), default_port
    return name.rstrip("."), int(port) if port.isdigit() else -1


def normalize_origin(origin: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of an http(s) origin, its default port filled in; None otherwise."""
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        return None
    host, port = split_authority(parts.netloc, DEFAULT_PORTS[parts.scheme])
    return parts.scheme, host, port


@dataclass(frozen=True)
class EdgePolicy:
    """What the guard enforces, from AppArgs (`edge` and `limits`)."""

    allowed_hosts: frozenset[str] = frozenset()
    allowed_origins: frozenset[tuple] = frozenset()
    api_token: str | None = None
    max_json_bytes: int = 128 * 1024
    # (method, path pattern, bytes): the routes that take more than max_json_bytes
    body_limits: tuple[tuple[str, re.Pattern, int], ...] = ()

    @classmethod
    def from_args(cls, args: AppArgs) -> EdgePolicy:
        edge, limits = args.edge, args.limits
        return cls(
            allowed_hosts=frozenset(split_authority(h)[0] for h in edge.allowed_hosts),
            allowed_origins=frozenset(filter(None, map(normalize_origin, edge.allowed_origins))),
            api_token=edge.api_token, max_json_bytes=edge.max_json_bytes,
            body_limits=(
                ("POST", re.compile(r"/v1/personas"), limits.max_upload_bytes + MULTIPART_OVERHEAD_BYTES),
                ("POST", re.compile(r"/v1/avatars"), limits.max_avatar_bytes + MULTIPART_OVERHEAD_BYTES),
                ("POST", re.compile(r"/v1/render"), limits.max_audio_upload_bytes + MULTIPART_OVERHEAD_BYTES),
                ("POST", re.compile(r"/v1/sessions/[^/]+/audio"), limits.max_audio_upload_bytes),
            ))

    def host_allowed(self, name: str) -> bool:
        return is_loopback_host(name) or name in self.allowed_hosts or ANY_HOST in self.allowed_hosts

    def body_limit(self, method: str, path: str) -> int:
        """The largest body this route takes, in bytes."""
        for route_method, pattern, limit_bytes in self.body_limits:
            if method == route_method and pattern.fullmatch(path):
                return limit_bytes
        return self.max_json_bytes


@dataclass(frozen=True)
class Call:
    """The parts of a request (or WebSocket handshake) the guard reads."""

    kind: str  # "http" or "websocket"
    method: str
    path: str
    headers: Headers
    query: dict[str, list[str]]

    @classmethod
    def of(cls, scope: Scope) -> Call:
        root = scope.get("root_path", "")
        path = scope["path"][len(root):] if root and scope["path"].startswith(root) else scope["path"]
        return cls(kind=scope["type"], method=scope.get("method", "GET").upper(), path=path or "/",
                   headers=Headers(scope=scope), query=parse_qs(scope.get("query_string", b"").decode("latin-1")))


def host_refusal(policy: EdgePolicy, call: Call) -> ServiceError | None:
    hosts = call.headers.getlist("host")
    if len(set(hosts)) != 1:
        return ServiceError("forbidden_host", "send exactly one Host header")
    name, port = split_authority(hosts[0])
    if port == -1 or not policy.host_allowed(name):
        return ServiceError("forbidden_host", f"this server does not answer to Host {hosts[0]!r} "
                                              "(edge.allowed_hosts)")
    return None


def same_origin(origin: tuple[str, str, int | None], host_header: str) -> bool:
    """The Origin names the host and port the request was sent to (either scheme: TLS may
    end in front of the server)."""
    scheme, name, port = origin
    return split_authority(host_header, DEFAULT_PORTS[scheme]) == (name, port)


def origin_refusal(policy: EdgePolicy, call: Call) -> ServiceError | None:
    """Origin is checked on WebSockets and state-changing methods, and on any cross-site
    subresource a browser fetches (Sec-Fetch-Site); absent, a non-browser client is assumed."""
    raw = call.headers.get("origin")
    cross_site = (call.headers.get("sec-fetch-site") in CROSS_SITE
                  and call.headers.get("sec-fetch-mode") != "navigate")
    if not (call.kind == "websocket" or call.method in STATE_CHANGING or cross_site):
        return None
    if raw is None and not cross_site:
        return None
    origin = normalize_origin(raw or "")
    if origin is not None and (origin in policy.allowed_origins
                               or (not cross_site and same_origin(origin, call.headers["host"]))):
        return None
    return ServiceError("forbidden_origin", f"requests from origin {raw or '(cross-site)'} are not accepted "
                                            "(edge.allowed_origins)")


def presented_token(call: Call) -> str | None:
    scheme, _, value = call.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    values = call.query.get(TOKEN_PARAM)
    return values[0] if values else None


def token_refusal(policy: EdgePolicy, call: Call) -> ServiceError | None:
    if policy.api_token is None or call.path in PUBLIC_PATHS or call.path.startswith(PUBLIC_PREFIX):
        return None
    token = presented_token(call)
    if token is not None and hmac.compare_digest(token.encode(), policy.api_token.encode()):
        return None
    return ServiceError("unauthorized", "this server needs its API token: Authorization: Bearer <token>, "
                                        f"or ?{TOKEN_PARAM}=<token> for a WebSocket or <img>")


def length_refusal(policy: EdgePolicy, call: Call) -> ServiceError | None:
    """A declared body over the route's limit (or a length that is not a number)."""
    declared = call.headers.get("content-length")
    if call.kind != "http" or declared is None:
        return None
    if not declared.strip().isdigit():
        return ServiceError("bad_request", f"Content-Length {declared!r} is not a number of bytes")
    limit_bytes = policy.body_limit(call.method, call.path)
    if int(declared) > limit_bytes:
        return ServiceError("too_large", f"body is {int(declared)} bytes; the limit here is {limit_bytes}")
    return None


CHECKS = (host_refusal, origin_refusal, token_refusal, length_refusal)


def refusal(policy: EdgePolicy, call: Call) -> ServiceError | None:
    """The first reason to refuse this call, or None to let it through."""
    for check in CHECKS:
        err = check(policy, call)
        if err is not None:
            return err
    return None


def refusal_response(err: ServiceError) -> JSONResponse:
    response = error_response(err)
    if err.code == "unauthorized":
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


async def refuse(scope: Scope, receive: Receive, send: Send, err: ServiceError) -> None:
    """Answer with the error; a WebSocket handshake is denied with it as an HTTP response
    where the server supports that, else closed before it is accepted."""
    if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": ws_close_code(err.code), "reason": err.reason[:120]})
        return
    await refusal_response(err)(scope, receive, send)


class BodyCounter:
    """Counts a streamed body as the app reads it. Over the limit, the app is told the
    client left (so it stops reading and working) and its answer is dropped for a 413."""

    def __init__(self, receive: Receive, send: Send, limit_bytes: int):
        self._receive, self._send, self.limit_bytes = receive, send, limit_bytes
        self.received_bytes, self.over, self.started = 0, False, False

    async def receive(self) -> Message:
        if self.over:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.received_bytes += len(message.get("body", b""))
            if self.received_bytes > self.limit_bytes:
                self.over = True
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.over:
            return
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)

    def too_large(self) -> ServiceError:
        return ServiceError("too_large", f"body exceeds the limit here of {self.limit_bytes} bytes")


class EdgeGuard:
    """The ASGI middleware. `policy` is called once, at the first request: the Router's
    arguments exist only in its replica, after the app object was built."""

    def __init__(self, app: ASGIApp, policy: Callable[[], EdgePolicy]):
        self.app, self._load_policy, self._policy = app, policy, None

    def policy(self) -> EdgePolicy:
        if self._policy is None:
            self._policy = self._load_policy()
        return self._policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        policy, call = self.policy(), Call.of(scope)
        err = refusal(policy, call)
        if err is not None:
            await refuse(scope, receive, send, err)
        elif call.kind == "http" and "transfer-encoding" in call.headers:
            await self._counted(scope, receive, send, policy.body_limit(call.method, call.path))
        else:
            await self.app(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit_bytes: int) -> None:
        counter = BodyCounter(receive, send, limit_bytes)
        try:
            await self.app(scope, counter.receive, counter.send)
        except Exception:
            if not counter.over:
                raise  # a fault of its own; the over-limit body's consequences are not
        if counter.over and not counter.started:
            await refusal_response(counter.too_large())(scope, receive, send)


def install_guard(app: FastAPI, policy: Callable[[], EdgePolicy | AppArgs]) -> None:
    """Put the guard in front of `app`'s routes. `policy` gives an EdgePolicy or the AppArgs
    to build one from; it is called at the first request."""
    def load() -> EdgePolicy:
        found = policy()
        return found if isinstance(found, EdgePolicy) else EdgePolicy.from_args(found)

    app.add_middleware(EdgeGuard, policy=load)
