"""benchmarks/batching.py runs and says what it measured (a smoke run: tiny networks, small
portraits, one repeat; the figures themselves are for docs/benchmarks.md)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # the tiny W+G on CPU: about a minute on 2 cores
def test_the_batching_benchmark_prints_off_and_on_for_each_session_count():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "batching.py"), "--device", "cpu",
                          "--sessions", "1", "3", "--repeats", "1", "--portrait", "128"],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    report = json.loads(out)
    assert [r["sessions"] for r in report["results"]] == [1, 3]
    for result in report["results"]:
        for setting in ("off", "on"):
            figures = result[setting]
            assert figures["wall_ms_per_frame"] > 0 and figures["cpu_ms_per_frame"] > 0
    three = report["results"][1]
    # 15 frames: one pass a session's 5-frame chunk off, 8 frames a pass on.
    assert three["off"]["network_passes_per_frame"] == 0.2
    assert three["on"]["network_passes_per_frame"] == round(2 / 15, 3)
