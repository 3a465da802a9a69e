"""The GPU acceptance run's serving section, dry: pattern sessions of speech through the real
graph (graph.build_app) at 25 fps, with cross-session batching on and off, on the graph tests'
own cluster (run in-process: the script alone starts a cluster of its own)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.graph

ROOT = Path(__file__).resolve().parents[2]


def test_serving_section_dry(ray_serve):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_acceptance

    options = gpu_acceptance.parse(["--device", "cpu", "--config", "tiny", "--serving-counts", "1", "2",
                                    "--serving-speech-s", "2"])
    serving = gpu_acceptance.section_serving(options, 300, base=ray_serve)
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
