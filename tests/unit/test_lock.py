"""The lock files agree with pyproject.toml, carry hashes, and are what this environment runs.

`bash .ci/lock` refreshes them (README, Development); this fails until it has been run after a
change to pyproject.toml's dependencies, extras or [tool.uv] settings.
"""
from __future__ import annotations

import importlib.util
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
# Each lock and the extras it covers, besides the base install (.ci/lock).
LOCKS = {
    "requirements.lock": ("webrtc", "test"),
    "requirements-ditto-eyes.lock": ("webrtc", "test", "ditto-eyes"),
    "requirements-trt.lock": ("webrtc", "test", "trt"),
}
NOT_LOCKED = {"torch"}  # CPU or CUDA build, chosen at install (README)
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^ ;\\]+)(?:\s*;\s*(?P<marker>[^\\]+?))?\s*\\?$")


def fingerprints():
    spec = importlib.util.spec_from_file_location("lock_fingerprint", ROOT / ".ci" / "lock_fingerprint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pins(lock: str) -> list[tuple[str, Version, Marker | None, int]]:
    """(name, version, marker, number of hashes) for each entry of a lock."""
    entries, lines = [], (ROOT / lock).read_text().splitlines()
    for i, line in enumerate(lines):
        m = _PIN.match(line)
        if not m:
            continue
        hashes = 0
        for follow in lines[i + 1:]:
            if not follow.strip().startswith("--hash=sha256:"):
                break
            hashes += 1
        marker = Marker(m["marker"]) if m["marker"] else None
        entries.append((canonicalize_name(m["name"]), Version(m["version"]), marker, hashes))
    return entries


def applicable(lock: str) -> dict[str, Version]:
    """The pins whose markers hold on this machine (a universal lock has one per platform split)."""
    return {name: v for name, v, marker, _ in pins(lock) if marker is None or marker.evaluate()}


def requirements(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


@pytest.mark.parametrize("lock", LOCKS)
def test_lock_was_compiled_from_this_pyproject(lock):
    fp = fingerprints()
    assert fp.stamped(ROOT / lock) == fp.fingerprint(), f"{lock} is stale: run `bash .ci/lock`"


@pytest.mark.parametrize("lock", LOCKS)
def test_every_requirement_is_pinned_within_its_range(lock):
    locked = applicable(lock)
    for req in requirements(LOCKS[lock]):
        name = canonicalize_name(req.name)
        if name in NOT_LOCKED or (req.marker and not req.marker.evaluate()):
            continue
        assert name in locked, f"{req} is not in {lock}"
        assert req.specifier.contains(locked[name], prereleases=True), f"{lock} pins {name}=={locked[name]}, not {req}"


@pytest.mark.parametrize("lock", LOCKS)
def test_every_pin_is_exact_and_hashed(lock):
    entries = pins(lock)
    assert len(entries) > 100
    assert all(hashes > 0 for *_, hashes in entries)
    assert not {name for name, *_ in entries} & NOT_LOCKED


def test_extras_locks_keep_the_main_pins():
    main = applicable("requirements.lock")
    for lock in LOCKS:
        other = applicable(lock)
        assert {n: v for n, v in other.items() if n in main} == main, f"{lock} moves a pin of requirements.lock"


def test_this_environment_runs_the_lock():
    """.ci/setup installed exactly the locked versions (opencv among them: the oracle's 5.0.0)."""
    wrong = {}
    for name, version in applicable("requirements.lock").items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (str(version), installed and str(installed))
    assert not wrong, f"installed versions differ from requirements.lock (locked, installed): {wrong}"


def test_a_changed_dependency_makes_the_lock_stale(tmp_path):
    fp = fingerprints()
    text = (ROOT / "pyproject.toml").read_text()
    changed = tmp_path / "pyproject.toml"
    changed.write_text(text.replace('"scipy>=1.11"', '"scipy>=1.12"'))
    assert text != changed.read_text()
    assert fp.fingerprint(changed) != fp.fingerprint()
    (tmp_path / "pyproject.toml").write_text(text.replace("[tool.pytest.ini_options]", "[tool.pytest.ini_options]\n# x"))
    assert fp.fingerprint(tmp_path / "pyproject.toml") == fp.fingerprint()  # other tables do not count
