"""Pack what a bare GPU machine lacks to run benchmarks/gpu_acceptance.py in full.

The device tool's machines (docs/benchmarks.md, "The GPU acceptance run") have Python 3.12 with
CUDA torch and a fixed image of packages, no network, and take 64 MiB with each call: the
working tree plus what `carry` names. The server's dependencies that the image lacks (Ray,
PyAV, FastAPI, pydantic, diffusers, ...) are about 65 MiB even as xz, so they travel in two
parts, one a call:

- `base.tar.xz`: everything but Ray. Call 1 unpacks it and runs every section but `serving`
  (the mode networks, VRAM and NVML import no Ray).
- `ray.tar.xz`: Ray and its HAProxy. Call 2 unpacks it on the same, still warm, machine and
  runs `serving`, reusing call 1's sections (`gpu_acceptance.py --reuse`): one JSON document.

How the parts are made:

1. the dependency closure of `lockn-bod[client]` for the target Python and platform, pinned
   to requirements.lock (`uv pip compile`);
2. minus what the image already has (IMAGE_PACKAGES) and what the run never imports
   (LEFT_OUT);
3. installed into a staging folder for the target (`uv pip install --target`, wheels only);
4. less the parts of Ray that Serve never loads (STRIPPED);
5. packed into the two parts; each must fit one call beside the working tree.

    python benchmarks/gpu_bundle.py                      # .gpu_bundle/, for the device's Python 3.12
    python benchmarks/gpu_bundle.py --python-version 3.11 --out /tmp/rehearsal   # a local rehearsal

It prints a JSON document: the pins, each part's size and sha256, and the two calls.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
CARRY_LIMIT_MIB = 64  # the device tool: working tree + carried paths, per call
MARGIN_MIB = 1.0      # room for files the tree gains before the call (a log, a JSON)

# The device tool's image ('cuda'), as its KINDS.md listed it on 2026-11-17, less what the list
# leaves out (huggingface-hub is there, at 1.33, but the lock's 2.4 travels: diffusers needs it).
IMAGE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite
lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec
patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq
torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
typing-inspection urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())

# Dependencies the acceptance run never imports. pocketsphinx (avatar3d's viseme tracker, and
# sounddevice with it) has no cp312 wheel to carry; c2pa signs renders, which the run makes none of.
LEFT_OUT = frozenset({"pocketsphinx", "sounddevice", "c2pa-python"})

# Ray's parts that Serve on a local cluster never loads (paths under the staging folder): the Java
# worker, the libraries beside Serve, the dashboard's web build, and the py-spy profiler binary.
STRIPPED = ("ray/jars", "ray/rllib", "ray/data", "ray/tune", "ray/train", "ray/llm", "ray/workflow",
            "ray/dashboard/client", "bin/py-spy")

# Which part a top-level entry of the staging folder travels in; the rest go in "base".
RAY_ENTRY = re.compile(r"^ray(_haproxy)?([-_.].*)?$")
PARTS = ("base", "ray")
DEVICE_PYTHON = "3.12"
DEVICE_PLATFORM = "x86_64-manylinux_2_28"


def normalized(name: str) -> str:
    """A distribution name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins_to_carry(closure: list[str]) -> list[str]:
    """The `name==version` lines of the closure that the image lacks and the run imports."""
    carried = []
    for pin in closure:
        name = normalized(pin.split("==")[0])
        if name not in IMAGE_PACKAGES and name not in LEFT_OUT:
            carried.append(pin)
    return carried


def part_of(entry: str) -> str:
    """The part a top-level file or folder of the staging folder travels in."""
    return "ray" if RAY_ENTRY.match(entry) else "base"


def uv() -> str:
    """The uv that .ci/lock installs into the virtual environment (or one on PATH)."""
    beside = Path(sys.executable).parent / "uv"
    found = str(beside) if beside.exists() else shutil.which("uv")
    if not found:
        raise SystemExit("uv is missing: `bash .ci/lock` installs it into .venv")
    return found


def closure(python_version: str, platform: str) -> list[str]:
    """`lockn-bod[client]`'s dependencies for that Python and platform, at the lock's pins."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as out:
        subprocess.run([uv(), "pip", "compile", str(ROOT / "pyproject.toml"), "--extra", "client",
                        "--python-version", python_version, "--python-platform", platform,
                        "--no-emit-package", "torch", "--constraint", str(ROOT / "requirements.lock"),
                        "--no-header", "--no-annotate", "--quiet", "-o", out.name], check=True)
        return [line.strip() for line in Path(out.name).read_text().splitlines()
                if line.strip() and not line.startswith("#")]


def stage(pins: list[str], python_version: str, platform: str, folder: Path) -> None:
    """Install the pins' wheels for the target into `folder`, then strip what is never loaded."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as req:
        req.write("\n".join(pins) + "\n")
        req.flush()
        subprocess.run([uv(), "pip", "install", "--quiet", "--target", str(folder), "--no-deps",
                        "--only-binary", ":all:", "--python-version", python_version,
                        "--python-platform", platform, "-r", req.name], check=True)
    for rel in STRIPPED:
        path = folder / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for cache in folder.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)


def pack(folder: Path, out: Path) -> dict[str, Path]:
    """One tar.xz per part, of the staging folder's top-level entries."""
    entries = sorted(p.name for p in folder.iterdir())
    archives = {}
    for part in PARTS:
        names = [e for e in entries if part_of(e) == part]
        archive = out / f"{part}.tar.xz"
        subprocess.run(["tar", "-cJf", str(archive), "-C", str(folder), *names], check=True,
                       env={**os.environ, "XZ_OPT": "-9 -T0"})  # xz's best ratio, every core
        archives[part] = archive
    return archives


def working_tree_bytes() -> int:
    """What travels with every call: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, check=True).stdout
    paths = (ROOT / p for p in listed.decode().split("\0") if p)
    return sum(p.stat().st_size for p in paths if p.is_file())


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def calls(archives: dict[str, Path]) -> list[dict]:
    """The two device `run` calls (carry, timeout, command): call 2 must follow while the machine is warm."""
    rel = {part: str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
           for part, path in archives.items()}
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    env = f"export PYTHONPATH=/tmp/site:$PWD:$PWD/clients PYTHONUNBUFFERED=1 LOCKN_COMMIT={commit}"
    first = (f"mkdir -p /tmp/site && tar -xJf {rel['base']} -C /tmp/site && {env} && "
             "python3 benchmarks/gpu_acceptance.py --skip serving --out /tmp/gpu_acceptance_1.json; "
             "cp /tmp/gpu_acceptance_1.json $OUT/")
    second = (f"tar -xJf {rel['ray']} -C /tmp/site && {env} && "
              "python3 benchmarks/gpu_acceptance.py --reuse /tmp/gpu_acceptance_1.json "
              "--out $OUT/gpu_acceptance.json")
    return [{"carry": [rel["base"]], "timeout_s": 480, "command": first},
            {"carry": [rel["ray"]], "timeout_s": 240, "command": second}]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python-version", default=DEVICE_PYTHON, help="the target's Python (device: 3.12)")
    p.add_argument("--platform", default=DEVICE_PLATFORM, help="the target's platform, as uv names it")
    p.add_argument("--out", type=Path, default=ROOT / ".gpu_bundle", help="where the parts go (git-ignored)")
    p.add_argument("--keep-stage", action="store_true", help="keep the unpacked staging folder beside the parts")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    o = parse(argv)
    pins = pins_to_carry(closure(o.python_version, o.platform))
    o.out.mkdir(parents=True, exist_ok=True)
    folder = o.out / "stage"
    shutil.rmtree(folder, ignore_errors=True)
    stage(pins, o.python_version, o.platform, folder)
    archives = pack(folder, o.out)
    if not o.keep_stage:
        shutil.rmtree(folder)
    tree = working_tree_bytes()
    room = CARRY_LIMIT_MIB * MIB - tree - MARGIN_MIB * MIB
    parts = {part: {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256(path),
                    "fits_one_call": path.stat().st_size <= room} for part, path in archives.items()}
    report = {"python": o.python_version, "platform": o.platform, "pins": pins,
              "left_out": sorted(LEFT_OUT), "stripped": list(STRIPPED), "working_tree_bytes": tree,
              "room_per_call_bytes": int(room), "parts": parts, "calls": calls(archives)}
    (o.out / "manifest.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    too_big = [part for part, info in parts.items() if not info["fits_one_call"]]
    if too_big:
        print(f"parts over one call's room ({room / MIB:.1f} MiB): {too_big}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
