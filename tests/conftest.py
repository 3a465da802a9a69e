"""Shared test fixtures: the oracle folder and an isolated Hugging Face cache."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.local_cluster import start_local_serve

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def oracle_dir() -> Path:
    """LOCKN_ORACLE_DIR, defaulting to ../shared/oracle from the project root."""
    return Path(os.environ.get("LOCKN_ORACLE_DIR", PROJECT_ROOT.parent / "shared" / "oracle"))


@pytest.fixture(scope="session")
def oracle():
    """Path of the oracle folder; skips with a reason where it is absent."""
    root = oracle_dir()
    if not root.is_dir():
        pytest.skip(f"oracle folder {root} is absent (set LOCKN_ORACLE_DIR)")
    return root


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline: tests write official-layout files into it."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    return cache


# ---------------- a real local Ray cluster for graph tests ----------------
# The helpers are in tests/local_cluster.py (benchmarks start clusters with them too, without pytest).

@pytest.fixture(scope="session")
def ray_serve():
    """One cluster shared by all graph tests (LOCKN_TEST_RAY_LOGS=1 shows the workers' logs)."""
    import ray
    from ray import serve

    yield start_local_serve(log_to_driver=bool(os.environ.get("LOCKN_TEST_RAY_LOGS")))
    serve.shutdown()
    ray.shutdown()


@pytest.fixture
def store(tmp_path):
    """A persona store with one saved, unreal 64² grey portrait (`store.record`)."""
    import io

    from PIL import Image

    from deployments.inputs.personas import PersonaStore

    s = PersonaStore(tmp_path / "personas")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 90, 90)).save(buf, "PNG")
    s.record = s.create(buf.getvalue(), real_person=False, consent=None, save=True)
    return s
