"""The GPU acceptance run's dry run (`--device cpu --config tiny`), so the script cannot rot
while no GPU is at hand: every section is present, every figure finite, and what needs CUDA
says so. The serving section (Ray) is tested dry in tests/graph/test_gpu_acceptance_graph.py."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_acceptance.py"
MODES = ("liveportrait", "musetalk", "ditto", "photoreal")
SECTIONS = ("env", *MODES, "vram", "nvml", "serving")


def numbers(value, path=""):
    """Every number in a JSON value, with where it is."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from numbers(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from numbers(v, f"{path}[{i}]")


def errors(value, path=""):
    if isinstance(value, dict):
        for k, v in value.items():
            if k in ("error", "killed"):
                yield f"{path}.{k}: {v}"
            yield from errors(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from errors(v, f"{path}[{i}]")


@pytest.mark.slow  # every mode at tiny size on CPU: 1–2 minutes on 2 cores
def test_dry_run(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--config", "tiny", "--skip", "serving",
         "--sizes", "1", "--warmup", "0", "--repeats", "1", "--ditto-seconds", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout)
    report = json.loads(out.read_text())
    assert printed == report
    assert set(SECTIONS) <= set(report)
    assert not list(errors(report)), list(errors(report))
    bad = [(p, v) for p, v in numbers(report) if isinstance(v, float) and not math.isfinite(v)]
    assert not bad, bad
    assert report["env"]["device"] == "cpu" and report["env"]["config"] == "tiny"
    for mode in MODES:
        section = report[mode]
        assert section["fp16_vs_fp32"] == {"skipped": "no CUDA"}, mode
        assert section["vram_peak"] == {"skipped": "no CUDA"}, mode
        assert "skipped" in section["compile"], mode  # off on the dry run
    lp = report["liveportrait"]["runs"][0]
    assert lp["batch"] == 1 and lp["precision"] == "fp32"
    assert lp["W+G+S+paste_back_ms_per_frame"] > 0 and lp["frames_per_s_pipeline"] > 0
    mt = report["musetalk"]["runs"][0]
    assert mt["ms_per_frame"]["unet"] > 0 and mt["fps_unet_vae_blend"] > 0
    ditto = report["ditto"]
    assert ditto["lmdm"]["ms_per_window"] > 0 and ditto["renderer"]["b1_ms_per_frame"] > 0
    stream = ditto["stream"]
    assert "skipped" in stream or (stream["real_time_factor"] > 0 and stream["first_frame"]["compute_ms_burst_input"] > 0)
    photoreal = report["photoreal"]
    assert all("skipped" in r or r["render_ms_per_frame"] > 0 for r in photoreal["runs"])
    assert set(report["vram"]["peak_by_mode"]) == set(MODES)
    assert report["nvml"] == {"skipped": "no CUDA", "wall_s": report["nvml"]["wall_s"]}
    assert report["serving"]["skipped"] == "--skip"


def test_batching_setting_follows_the_config():
    """`batch_sessions` is passed only where BackendArgs has it; otherwise 'not built'."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_acceptance
    from deployments.config import BackendArgs

    settings, label = gpu_acceptance.batching_settings()
    if "batch_sessions" in BackendArgs.model_fields:
        assert settings[0] == 1 and len(settings) > 1
    else:
        assert settings == [None] and label == "not built"


def test_reuse_keeps_measured_sections_and_runs_the_rest(tmp_path, capsys):
    """The device tool's second call (`--reuse`): measured sections come from the first call's
    JSON unchanged; skipped, failed or killed ones run again (here: env and nvml)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_acceptance

    earlier = {"env": {"error": "RuntimeError: boom"}, "nvml": {"skipped": "--skip"},
               "serving": {"killed": "budget"}, "vram": {"peak_by_mode": {}}}
    earlier.update({mode: {"runs": [{"batch": 8, "ms": 1.5}]} for mode in MODES})
    first = tmp_path / "first.json"
    first.write_text(json.dumps(earlier))
    out = tmp_path / "second.json"
    assert gpu_acceptance.main(["--device", "cpu", "--reuse", str(first), "--skip", "serving",
                                "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["reused"] == {"from": str(first), "sections": sorted([*MODES, "vram"])}
    for mode in MODES:
        assert report[mode] == earlier[mode]
    assert report["env"]["device"] == "cpu" and "error" not in report["env"]
    assert report["env"]["packages"]["torch"]  # the versions that explain a figure
    assert report["nvml"]["skipped"] == "no CUDA" and report["serving"] == {"skipped": "--skip"}


def test_reuse_of_a_missing_file_says_what_to_do(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_acceptance

    with pytest.raises(SystemExit, match="given back"):
        gpu_acceptance.reusable_sections(tmp_path / "absent.json")
