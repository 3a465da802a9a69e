"""`lockn-bod`: fetch and check the official weights of each mode.

    lockn-bod weights check [MODE ...]   list what is missing
    lockn-bod weights fetch MODE ...     download exactly the files a mode needs
    lockn-bod modes                      which modes can run here, and why not
"""
from __future__ import annotations

import argparse
import json
import sys

from .modes import MODES, mode_files, mode_status
from .weights import fetch, missing


def _neural_modes(names: list[str]) -> list[str]:
    chosen = names or [m for m, s in MODES.items() if s.weight_files]
    unknown = [m for m in chosen if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s): {', '.join(unknown)}; known: {', '.join(MODES)}")
    return chosen


def cmd_check(modes: list[str], cache_dir: str | None = None) -> int:
    """Every file of each mode with ok/missing and its licence; rc 1 if any is missing."""
    absent_any = False
    for mode in _neural_modes(modes):
        files = mode_files(MODES[mode])
        absent = set(missing(files, cache_dir))
        absent_any |= bool(absent)
        state = "ok" if not absent else f"{len(absent)} of {len(files)} missing"
        sys.stdout.write(f"{mode}: {state}\n")
        for f in files:
            mark = "missing" if f in absent else "ok"
            sys.stdout.write(f"  {mark:7} {f.repo_id}:{f.filename} ({f.licence or 'see README'})\n")
    return 1 if absent_any else 0


def cmd_fetch(modes: list[str], cache_dir: str | None = None) -> int:
    for mode in _neural_modes(modes):
        files = mode_files(MODES[mode])
        sys.stdout.write(f"{mode}: fetching {len(files)} file(s)\n")
        fetch(files, cache_dir)
    return cmd_check(modes, cache_dir)


def cmd_modes() -> int:
    status = [mode_status(s).__dict__ for s in MODES.values() if not s.test_only]
    sys.stdout.write(json.dumps(status, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lockn-bod", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("weights", help="check or fetch official weight files")
    w.add_argument("action", choices=["check", "fetch"])
    w.add_argument("modes", nargs="*", help="modes (default: all neural modes)")
    w.add_argument("--cache-dir", help="a Hugging Face cache other than the standard one "
                                       "(the backend's `cache_dir` option)")
    sub.add_parser("modes", help="list modes and their availability")
    args = parser.parse_args(argv)
    if args.command == "modes":
        return cmd_modes()
    action = cmd_check if args.action == "check" else cmd_fetch
    return action(args.modes, args.cache_dir)


if __name__ == "__main__":
    raise SystemExit(main())
