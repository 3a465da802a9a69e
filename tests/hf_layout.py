"""Write files into a Hugging Face cache in the hub's own layout, for tests.

`hf_hub_download(..., local_files_only=True)` then finds them exactly as it
would find files fetched from the hub: refs/<revision> names a commit and the
file lies under snapshots/<commit>/<filename>.
"""
from __future__ import annotations

import hashlib
from pathlib import Path


def cache_file_path(cache: Path, repo_id: str, filename: str, revision: str = "main") -> Path:
    """Where `filename` of `repo_id` at `revision` lives in `cache`; creates the ref."""
    repo_dir = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    path = repo_dir / "snapshots" / commit / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_torch(cache: Path, repo_id: str, filename: str, obj, revision: str = "main") -> Path:
    """torch.save `obj` at the official path of `filename`."""
    import torch

    path = cache_file_path(cache, repo_id, filename, revision)
    torch.save(obj, path)
    return path


def write_bytes(cache: Path, repo_id: str, filename: str, data: bytes, revision: str = "main") -> Path:
    path = cache_file_path(cache, repo_id, filename, revision)
    path.write_bytes(data)
    return path
