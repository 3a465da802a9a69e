"""The fingerprint that ties each lock file to the pyproject.toml it was compiled from.

`bash .ci/lock` stamps it into every lock; tests/unit/test_lock.py recomputes it, so editing a
dependency, an extra or the lock settings in pyproject.toml without re-locking fails the tests.

    python .ci/lock_fingerprint.py --stamp requirements.lock   # write it (bash .ci/lock does)
    python .ci/lock_fingerprint.py --check requirements*.lock  # exit 1 if any is stale
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "# pyproject.toml dependencies sha256: "


def fingerprint(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """sha256 of what a resolution depends on: Python range, dependencies, extras, [tool.uv]."""
    data = tomllib.loads(pyproject.read_text())
    project = data["project"]
    inputs = {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "tool.uv": data.get("tool", {}).get("uv", {}),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def stamped(lock: Path) -> str | None:
    for line in lock.read_text().splitlines():
        if line.startswith(PREFIX):
            return line[len(PREFIX):].strip()
    return None


def stamp(lock: Path) -> None:
    lines = [line for line in lock.read_text().splitlines() if not line.startswith(PREFIX)]
    lock.write_text("\n".join([PREFIX + fingerprint(), *lines]) + "\n")


def main(argv: list[str]) -> int:
    mode, files = argv[0], [Path(f) for f in argv[1:]]
    if mode == "--stamp":
        for lock in files:
            stamp(lock)
        return 0
    stale = [str(lock) for lock in files if stamped(lock) != fingerprint()]
    for name in stale:
        print(f"{name} was not compiled from this pyproject.toml: run `bash .ci/lock`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
