"""The GPU acceptance run's serving section, dry: pattern sessions of speech through the real
graph (graph.build_app on a local Ray cluster) at 25 fps, with cross-session batching on and
off where the backend has it. The script starts and stops its own cluster."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.graph

ROOT = Path(__file__).resolve().parents[2]


def own_cluster_env() -> dict[str, str]:
    """This process's environment without what ties it to the test session's cluster: the
    script starts a cluster of its own, and must not reach for that one's address or the
    ports its metrics agent and HAProxy hold."""
    tied = ("RAY_ADDRESS", "LOCKN_TEST_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")
    return {name: value for name, value in os.environ.items() if name not in tied}


def test_serving_section_dry(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_acceptance.py"), "--device", "cpu", "--config", "tiny",
         "--skip", "liveportrait", "musetalk", "ditto", "photoreal", "--serving-counts", "1", "2",
         "--serving-speech-s", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=own_cluster_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    serving = json.loads(out.read_text())["serving"]
    assert "error" not in serving and "killed" not in serving, serving
    from deployments.config import BackendArgs

    built = "batch_sessions" in BackendArgs.model_fields
    assert (serving["batching"] != "not built") == built
    assert serving["runs"], serving
    for row in serving["runs"]:
        assert "error" not in row, row
        if "skipped" not in row:
            assert row["frames"] > 0 and row["max_late_ms"] >= 0 and isinstance(row["held_at_25fps"], bool)
    assert {r["batch_sessions"] for r in serving["runs"]} == ({1, 4} if built else {None})
