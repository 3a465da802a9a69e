"""Official weight files: where they live on the Hugging Face Hub, fetching, loading.

One loading path for every model: files are resolved in the standard Hugging
Face cache (`HF_HUB_CACHE` / `HF_HOME` honoured, `HF_HUB_OFFLINE` honoured) by
`huggingface_hub`, never downloaded implicitly during a request. `fetch`
downloads exactly the listed files (`allow_patterns`) at a pinned revision,
with huggingface_hub's progress bars.

Revisions: the commit hashes of the official repos could not be read from
this build machine (no hub access), so each `WeightFile.revision` defaults to
"main"; operators pin a commit with `LOCKN_HF_REVISION_<REPO>` (the repo id
upper-cased with non-alphanumerics as `_`), e.g.
`LOCKN_HF_REVISION_KWAIVGI_LIVEPORTRAIT=<sha>`.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .base import WeightsMissingError


@dataclass(frozen=True)
class WeightFile:
    """One official file: repo, path inside it, and its licence.

    cache_dir: where this deployment keeps it, when not in the standard HF cache (a
    backend's `cache_dir` option): the Router's availability check then looks where
    the backend loads from.
    """

    repo_id: str
    filename: str
    licence: str = ""
    revision: str = "main"
    cache_dir: str | None = None

    @property
    def pinned_revision(self) -> str:
        env = "LOCKN_HF_REVISION_" + re.sub(r"[^A-Za-z0-9]", "_", self.repo_id).upper()
        return os.environ.get(env, self.revision)


def fetch_command(mode: str) -> str:
    """The command a user runs to fetch a mode's weights."""
    return f"lockn-bod weights fetch {mode}"


def resolve(file: WeightFile, mode: str = "", cache_dir: str | Path | None = None) -> Path:
    """Local path of an already-fetched file; WeightsMissingError names the fetch command.

    cache_dir: a Hugging Face cache folder other than the standard one (None: the file's own
    `cache_dir`, else the standard one).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache_dir = cache_dir if cache_dir is not None else file.cache_dir

    try:
        return Path(
            hf_hub_download(
                file.repo_id, file.filename, revision=file.pinned_revision, local_files_only=True,
                cache_dir=None if cache_dir is None else str(cache_dir),
            )
        )
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as err:
        hint = f"; run `{fetch_command(mode)}`" if mode else ""
        raise WeightsMissingError(
            f"missing weight file {file.repo_id}:{file.filename} (revision {file.pinned_revision}){hint}"
        ) from err


def missing(files: Iterable[WeightFile], cache_dir: str | Path | None = None) -> list[WeightFile]:
    """The files of `files` that are not in the local cache (or in `cache_dir`)."""
    out = []
    for f in files:
        try:
            resolve(f, cache_dir=cache_dir)
        except WeightsMissingError:
            out.append(f)
    return out


def fetch(files: Iterable[WeightFile], cache_dir: str | Path | None = None) -> list[Path]:
    """Download exactly `files`, grouped per repo and revision, into the standard cache (or `cache_dir`)."""
    from huggingface_hub import snapshot_download

    groups: dict[tuple[str, str, str | None], list[str]] = {}
    for f in files:
        where = str(cache_dir) if cache_dir is not None else f.cache_dir
        groups.setdefault((f.repo_id, f.pinned_revision, where), []).append(f.filename)
    roots = []
    for (repo_id, revision, where), names in groups.items():
        roots.append(Path(snapshot_download(repo_id, revision=revision, allow_patterns=names, cache_dir=where)))
    return roots


def load_torch_state_dict(path: Path) -> dict:
    """torch.load with weights_only=True on CPU: a checkpoint can hold no code."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
