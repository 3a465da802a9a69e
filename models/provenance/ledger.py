"""The provenance ledger: which session a watermark tag belongs to, so an operator can trace a
clip back to it. One JSON object a line in `<data_dir>/provenance/ledger.jsonl` (0600):
the tag (hex), session id, persona id, mode, and when the session (or render) started and
ended. Faces are never stored in it: a persona id names an upload that is deleted with its
last session unless saved.
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path


def ledger_path(data_dir: Path) -> Path:
    return Path(data_dir) / "provenance" / "ledger.jsonl"


class Ledger:
    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, entry: dict) -> None:
        """One line, appended under an exclusive lock (every replica on the machine writes here)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(json.dumps(entry, sort_keys=True) + "\n")

    def entries(self) -> list[dict]:
        if not self.path.is_file():
            return []
        lines = self.path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def find(self, tag: str) -> list[dict]:
        """Every line of this tag (a session's start and its end), oldest first."""
        return [e for e in self.entries() if e.get("tag") == tag]
