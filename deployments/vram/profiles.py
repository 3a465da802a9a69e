"""Measured memory profiles of our backends, kept between runs in a JSON file.

A profile is the peak a backend reached: CUDA context + torch max_memory_reserved
+ non-torch memory NVML saw for its PID. It is keyed by (mode, resolution, batch)
because activations grow with both. Guesses from config are used only until a
measurement exists; measurements only ever raise a profile, because the cost of
under-reserving is a neighbour's out-of-memory error.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ProfileKey:
    mode: str
    resolution_px: int
    batch: int

    def as_str(self) -> str:
        return f"{self.mode}@{self.resolution_px}px/b{self.batch}"


@dataclass(frozen=True)
class Profile:
    peak_bytes: int
    samples: int
    updated_at_s: float


class ProfileStore:
    """Peak bytes per key; `peak_bytes(key, default)` answers with the best known."""

    def __init__(self, profiles: dict[ProfileKey, Profile] | None = None):
        self._profiles: dict[ProfileKey, Profile] = dict(profiles or {})

    def get(self, key: ProfileKey) -> Profile | None:
        return self._profiles.get(key)

    def peak_bytes(self, key: ProfileKey, default_bytes: int) -> int:
        profile = self._profiles.get(key)
        return default_bytes if profile is None else profile.peak_bytes

    def observe(self, key: ProfileKey, peak_bytes: int, now_s: float) -> bool:
        """Record a measured peak. Returns True when the stored peak went up.

        The first measurement replaces the config guess even when it is lower:
        that is the point of measuring after load.
        """
        old = self._profiles.get(key)
        if old is None:
            self._profiles[key] = Profile(peak_bytes, 1, now_s)
            return True
        raised = peak_bytes > old.peak_bytes
        self._profiles[key] = Profile(max(old.peak_bytes, peak_bytes), old.samples + 1, now_s)
        return raised

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {
            key.as_str(): {"peak_bytes": p.peak_bytes, "samples": p.samples}
            for key, p in sorted(self._profiles.items(), key=lambda kv: kv[0].as_str())
        }

    # ------------------------------------------------------------ persistence

    def save(self, path: Path) -> None:
        """Write atomically, so a crash mid-write never leaves a truncated file."""
        rows = [
            {"mode": k.mode, "resolution_px": k.resolution_px, "batch": k.batch,
             "peak_bytes": p.peak_bytes, "samples": p.samples, "updated_at_s": p.updated_at_s}
            for k, p in self._profiles.items()
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"version": FORMAT_VERSION, "profiles": rows}, f, indent=1)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "ProfileStore":
        """An empty store where the file is absent; a clear error where it is malformed."""
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: unknown profile format {data.get('version')!r}")
        profiles = {
            ProfileKey(r["mode"], int(r["resolution_px"]), int(r["batch"])):
                Profile(int(r["peak_bytes"]), int(r["samples"]), float(r["updated_at_s"]))
            for r in data["profiles"]
        }
        return cls(profiles)
