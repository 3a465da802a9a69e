"""`lockn-bod`: the serve command line, readable fetch failures, the modes table."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from models import cli

LOCKN_BOD = str(Path(sys.executable).parent / "lockn-bod")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([LOCKN_BOD, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def closed_loopback_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_sets_the_readme_settings_and_passes_arguments_through():
    argv, env = cli.serve_command("serve_config.yaml", ["--address", "auto"], {"PATH": "/usr/bin"})
    assert Path(argv[0]).name == "serve" and argv[1:] == ["run", "serve_config.yaml", "--address", "auto"]
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    launcher = Path(env["RAY_SERVE_HAPROXY_BINARY_PATH"])
    assert launcher.name == "lockn-bod-haproxy" and launcher.exists()
    assert env["PATH"] == "/usr/bin"


def test_serve_lets_the_operator_override_each_setting():
    _, env = cli.serve_command("c.yaml", [], {"RAY_SERVE_ENABLE_HA_PROXY": "0",
                                             "RAY_SERVE_HAPROXY_BINARY_PATH": "/opt/haproxy"})
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == "/opt/haproxy"


def test_serve_without_a_config_says_so(tmp_path):
    done = subprocess.run([LOCKN_BOD, "serve"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 1
    assert "no config file serve_config.yaml" in done.stderr and "Traceback" not in done.stderr


def test_fetch_without_network_prints_one_paragraph(tmp_path):
    """huggingface_hub's own error, without its traceback, and what to do instead."""
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{closed_loopback_port()}", "HF_HUB_CACHE": str(tmp_path),
           "HF_HUB_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
    done = run_cli("weights", "fetch", "liveportrait", env=env)
    assert done.returncode == cli.FETCH_FAILED_EXIT, done.stderr
    assert "Traceback" not in done.stderr
    assert "could not fetch the weights of liveportrait" in done.stderr
    for hint in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_CACHE"):
        assert hint in done.stderr
    assert len(done.stderr.strip().splitlines()) == 2


def test_fetch_while_offline_is_refused_the_same_way(tmp_path):
    done = run_cli("weights", "fetch", "musetalk", env={"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == cli.FETCH_FAILED_EXIT
    assert "Traceback" not in done.stderr and "HF_ENDPOINT" in done.stderr


def test_modes_prints_a_table_and_json_on_request(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    table = run_cli("modes", env=env)
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["mode", "available", "gpu", "notes"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["still"].split()[1:3] == ["yes", "no"]
    assert rows["liveportrait"].split()[1:3] == ["no", "yes"]
    assert "lockn-bod weights fetch liveportrait" in rows["liveportrait"]
    status = json.loads(run_cli("modes", "--json", env=env).stdout)
    assert [s["name"] for s in status] == list(rows)
    assert {s["name"]: s["available"] for s in status}["still"] is True


def test_unknown_arguments_are_refused_outside_serve():
    done = run_cli("modes", "--bogus")
    assert done.returncode == 2 and "unrecognized arguments: --bogus" in done.stderr
