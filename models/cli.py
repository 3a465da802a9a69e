"""`lockn-bod`: run the server, fetch and check the official weights of each mode.

    lockn-bod serve [SERVE RUN ARGUMENTS]   the server, as the README runs it
    lockn-bod weights check [MODE ...]      list what is missing
    lockn-bod weights fetch MODE ...        download exactly the files a mode needs
    lockn-bod modes [--json]                which modes can run here, and why not
    lockn-bod avatar build [--data-dir var]  build the default avatar3d avatar (GLB)
    lockn-bod verify FILE [--trust ca.pem] [--data-dir var] [--json]
                                            C2PA state, invisible mark, ledger entry of a file
    lockn-bod keys rotate [--data-dir var]  a new C2PA signing certificate from the same local CA
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

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


FETCH_FAILED_EXIT = 2


def fetch_failure(mode: str, err: Exception) -> str:
    """What a person reads when a download fails, instead of huggingface_hub's traceback."""
    first_line = (str(err).strip().splitlines() or [""])[0][:300]
    return (
        f"lockn-bod: could not fetch the weights of {mode}: {type(err).__name__}: {first_line}\n"
        "The files come from the Hugging Face Hub. Without access to it: set HF_ENDPOINT to a mirror you "
        "can reach; or copy the files (`lockn-bod weights check` lists them) into the Hugging Face cache "
        "(HF_HUB_CACHE, or --cache-dir) on a machine that has them, then set HF_HUB_OFFLINE=1.\n"
    )


def cmd_fetch(modes: list[str], cache_dir: str | None = None) -> int:
    for mode in _neural_modes(modes):
        files = mode_files(MODES[mode])
        sys.stdout.write(f"{mode}: fetching {len(files)} file(s)\n")
        try:
            fetch(files, cache_dir)
        except Exception as err:  # noqa: BLE001 - the CLI's edge: any download failure becomes one paragraph
            sys.stderr.write(fetch_failure(mode, err))
            return FETCH_FAILED_EXIT
    return cmd_check(modes, cache_dir)


def modes_table(status: list[dict]) -> str:
    """One line a mode: name, available or not, GPU, and the reason or the description."""
    rows = [("mode", "available", "gpu", "notes")]
    for s in status:
        note = s["description"] if s["available"] else s["reason"]
        rows.append((s["name"], "yes" if s["available"] else "no", "yes" if s["needs_gpu"] else "no", note))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3] + "\n" for row in rows
    )


def cmd_modes(as_json: bool = False) -> int:
    status = [mode_status(s).__dict__ for s in MODES.values() if not s.test_only]
    sys.stdout.write(json.dumps(status, indent=2) + "\n" if as_json else modes_table(status))
    return 0


# What the README's server command used to set by hand (README, "Two commands").
SERVE_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # the cluster `serve run` starts stays on loopback
    "RAY_SERVE_ENABLE_HA_PROXY": "1",  # HAProxy on port 8000 in place of Serve's Python proxy
}


def serve_command(config: str, extra: list[str], environ: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The `serve run` command line and environment `lockn-bod serve` executes.

    Variables the caller already set win, so each default can be overridden. HAProxy is
    started through `lockn-bod-haproxy` (deployments/haproxy_loopback.py), installed beside
    this program, which keeps HAProxy's admin listeners on loopback.
    """
    bin_dir = Path(sys.executable).parent
    env = {**SERVE_ENV, **environ}
    env.setdefault("RAY_SERVE_HAPROXY_BINARY_PATH", str(bin_dir / "lockn-bod-haproxy"))
    serve = shutil.which("serve", path=str(bin_dir)) or shutil.which("serve") or "serve"
    return [serve, "run", config, *extra], env


def cmd_serve(config: str, extra: list[str]) -> int:
    if not Path(config).is_file():
        sys.stderr.write(f"lockn-bod serve: no config file {config} (run it from the project folder, "
                         "or pass --config)\n")
        return 1
    argv, env = serve_command(config, extra, dict(os.environ))
    os.execvpe(argv[0], argv, env)  # Serve's own Ctrl-C handling and exit code, as `serve run`
    return 0  # not reached


def cmd_avatar_build(data_dir: str) -> int:
    """Builds (or finds current) the default avatar3d GLB and prints its path."""
    from .avatar3d.default_avatar import ensure_default_avatar  # numpy work only when asked for

    try:
        path = ensure_default_avatar(Path(data_dir))
    except RuntimeError as err:  # the wheel could not be downloaded or failed its hash check
        sys.stderr.write(f"lockn-bod avatar build: {err}\n")
        return FETCH_FAILED_EXIT
    sys.stdout.write(f"{path}\n")
    return 0


def cmd_verify(file: str, trust: str | None, data_dir: str, as_json: bool) -> int:
    """Prints what FILE says about its provenance; the exit code is the verdict (verify.py)."""
    from .provenance.keys import keys_dir
    from .provenance.ledger import Ledger, ledger_path
    from .provenance.verify import format_report, verify_file

    folder = keys_dir(Path(data_dir))
    secret_file = folder / "watermark.secret"
    secret = secret_file.read_bytes() if secret_file.is_file() else None  # the operator's check; others: C2PA only
    trust_file = Path(trust) if trust else folder / "ca.pem"
    trust_pem = trust_file.read_bytes() if trust_file.is_file() else None
    try:
        report = verify_file(Path(file), trust_pem, secret, Ledger(ledger_path(Path(data_dir))))
    except (OSError, ValueError) as err:
        sys.stderr.write(f"lockn-bod verify: {err}\n")
        return 2
    sys.stdout.write((json.dumps(report.as_dict(), indent=1) if as_json else format_report(report)) + "\n")
    return report.verdict


def cmd_keys_rotate(data_dir: str) -> int:
    from .provenance.keys import ensure_keys, rotate_leaf

    ensure_keys(Path(data_dir))
    sys.stdout.write(f"{rotate_leaf(Path(data_dir))}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lockn-bod", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("weights", help="check or fetch official weight files")
    w.add_argument("action", choices=["check", "fetch"])
    w.add_argument("modes", nargs="*", help="modes (default: all neural modes)")
    w.add_argument("--cache-dir", help="a Hugging Face cache other than the standard one "
                                       "(the backend's `cache_dir` option)")
    m = sub.add_parser("modes", help="list modes and their availability")
    m.add_argument("--json", action="store_true", help="JSON instead of a table")
    s = sub.add_parser("serve", help="run the server (serve run serve_config.yaml, loopback, HAProxy)",
                       description="Runs `serve run CONFIG ARGS...` with the README's settings; "
                                   "arguments after the options pass through to `serve run`.")
    s.add_argument("--config", default="serve_config.yaml", help="the Serve config (default: %(default)s)")
    a = sub.add_parser("avatar", help="build the default avatar3d avatar")
    a.add_argument("action", choices=["build"])
    a.add_argument("--data-dir", default="var", help="the server's data folder (default: %(default)s)")
    v = sub.add_parser("verify", help="what a file says about its provenance (exit 0 consistent, 1 tampered, "
                                      "3 nothing found)")
    v.add_argument("file")
    v.add_argument("--trust", help="a CA certificate (PEM) to trust (default: this server's, under --data-dir)")
    v.add_argument("--data-dir", default="var", help="the server's data folder: keys and ledger (default: %(default)s)")
    v.add_argument("--json", action="store_true", help="JSON instead of text")
    k = sub.add_parser("keys", help="provenance keys")
    k.add_argument("action", choices=["rotate"])
    k.add_argument("--data-dir", default="var", help="the server's data folder (default: %(default)s)")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "serve":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "serve":
        return cmd_serve(args.config, extra)
    if args.command == "modes":
        return cmd_modes(args.json)
    if args.command == "avatar":
        return cmd_avatar_build(args.data_dir)
    if args.command == "verify":
        return cmd_verify(args.file, args.trust, args.data_dir, args.json)
    if args.command == "keys":
        return cmd_keys_rotate(args.data_dir)
    action = cmd_check if args.action == "check" else cmd_fetch
    return action(args.modes, args.cache_dir)


if __name__ == "__main__":
    raise SystemExit(main())
