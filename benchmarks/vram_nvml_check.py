"""Real-NVML check of the VRAM controller (issue 6): a torch process plays the LLM next to us.

Needs a CUDA GPU with a few free GiB, torch and pynvml. On the GPU:

    python benchmarks/vram_nvml_check.py --gpu 0 --backend-gib 6 --grow-gib-per-s 2

Three real processes on one GPU, and the real policy (deployments/vram) on NvmlProbe
readings every --step-s:

- "llm": a torch process listening on a TCP port (how the policy recognises it, as it
  would an LLM server on 11439). It holds --llm-start-gib, then, on cue, grows in
  256 MiB chunks at --grow-gib-per-s (a KV cache filling up) until it holds all but
  --leave-gib of the device: more than is free while our backend is resident. A chunk
  that fails with CUDA out-of-memory is counted and retried every 50 ms, as a server
  retrying requests would.
- "backend": a torch process that caps itself with set_per_process_memory_fraction at
  its lease and holds --backend-gib (plays a backend replica). The policy's LOAD starts
  it; its UNLOAD terminates it (process exit frees everything, CUDA context included),
  exactly what scale-to-zero does to a Serve replica.
- this script: the controller loop (Controller.step on NvmlProbe.read()).

It prints JSON: the time from the neighbour's growth to our UNLOAD decision and to the
memory being seen free by NVML (UNLOAD_CONFIRMED), the neighbour's out-of-memory
retries (each a failed 256 MiB chunk; what an LLM server would see), whether it reached
its target, the decisions with reasons, and NVML readings over time. The Serve path
(custom autoscaling policy to zero replicas) is covered by tests/graph/test_vram_graph.py on
the simulated device; this is the NVML half.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deployments.vram import (  # noqa: E402
    GIB, MIB, Action, BackendSpec, Code, Controller, ControllerConfig, LoadReport, NeighbourSpec,
    NvmlProbe, PolicyConfig, SessionEnded, SessionRequest, VariantSpec,
)

CHUNK_BYTES = 256 * MIB
MODE = "backend"


def llm_main(gpu: int, port: int, start_bytes: int, conn) -> None:
    """The neighbour: listens on `port`, holds memory, grows on cue."""
    import torch

    torch.cuda.set_device(gpu)
    listener = socket.socket()
    listener.bind(("127.0.0.1", port))
    listener.listen()
    held = []
    while len(held) * CHUNK_BYTES < start_bytes:
        held.append(torch.empty(CHUNK_BYTES, dtype=torch.uint8, device="cuda"))
    conn.send(("ready", os.getpid()))
    while True:
        cmd, arg = conn.recv()
        if cmd == "exit":
            return
        target_bytes, rate_bytes_per_s, deadline_s = arg
        ooms, t0 = 0, time.time()
        while len(held) * CHUNK_BYTES < target_bytes and time.time() < deadline_s:
            due = t0 + (len(held) * CHUNK_BYTES - start_bytes) / rate_bytes_per_s
            time.sleep(max(0.0, due - time.time()))
            try:
                held.append(torch.empty(CHUNK_BYTES, dtype=torch.uint8, device="cuda"))
            except torch.cuda.OutOfMemoryError:
                ooms += 1
                time.sleep(0.05)
        conn.send(("grown", {"held_bytes": len(held) * CHUNK_BYTES, "oom_retries": ooms,
                             "reached": len(held) * CHUNK_BYTES >= target_bytes,
                             "grow_s": round(time.time() - t0, 3)}))


def backend_main(gpu: int, hold_bytes: int, fraction: float, conn) -> None:
    """Our backend replica: capped at its lease, holds its 'weights' until terminated."""
    import torch

    torch.cuda.set_device(gpu)
    torch.cuda.set_per_process_memory_fraction(fraction, gpu)
    try:
        weights = torch.empty(hold_bytes, dtype=torch.uint8, device="cuda")  # noqa: F841
    except torch.cuda.OutOfMemoryError as err:
        conn.send(("failed", str(err)))
        return
    torch.cuda.synchronize()
    conn.send(("loaded", os.getpid()))
    signal.pause()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", type=int, default=0)
    p.add_argument("--port", type=int, default=11439)
    p.add_argument("--backend-gib", type=float, default=6.0)
    p.add_argument("--llm-start-gib", type=float, default=8.0)
    p.add_argument("--leave-gib", type=float, default=1.0, help="the LLM grows until this much is left")
    p.add_argument("--grow-gib-per-s", type=float, default=2.0)
    p.add_argument("--floor-gib", type=float, default=2.0)
    p.add_argument("--allowance-gib", type=float, default=2.0)
    p.add_argument("--step-s", type=float, default=0.5)
    p.add_argument("--timeout-s", type=float, default=120.0)
    return p


def run_check(a: argparse.Namespace) -> dict:
    """The whole check with the arguments of build_parser(); the JSON main() prints."""
    ctx = mp.get_context("spawn")
    probe = NvmlProbe(a.gpu)
    total = probe.read().total_bytes
    backend_bytes = int(a.backend_gib * GIB)
    config = ControllerConfig(
        policy=PolicyConfig(gpu_index=a.gpu, floor_bytes=int(a.floor_gib * GIB), load_margin_bytes=512 * MIB,
                            growth_allowance_bytes=int(a.allowance_gib * GIB), neighbour_settle_s=0.0,
                            min_residency_s=0.0, idle_ttl_s=3600.0, load_timeout_s=60.0),
        neighbours=(NeighbourSpec(name="llm", port=a.port),),
        # The guess includes a CUDA context; the measured peak replaces it.
        backends=(BackendSpec(mode=MODE, load_time_s=5.0, variants=(
            VariantSpec(resolution_px=512, default_peak_bytes=backend_bytes + 768 * MIB),)),),
    )
    controller = Controller(config)
    t0 = time.monotonic()
    now = lambda: time.monotonic() - t0  # noqa: E731
    trace, decisions, inbox = [], [], []
    backend = {"proc": None, "conn": None}

    llm_conn, llm_child = ctx.Pipe()
    llm = ctx.Process(target=llm_main, args=(a.gpu, a.port, int(a.llm_start_gib * GIB), llm_child), daemon=True)
    llm.start()
    assert llm_conn.poll(60) and llm_conn.recv()[0] == "ready"

    def step() -> list:
        reading = probe.read()
        if backend["conn"] is not None and backend["conn"].poll():
            kind, value = backend["conn"].recv()
            if kind == "loaded":
                used = {q.pid: q.used_bytes for q in reading.processes}
                inbox.append(LoadReport(MODE, ok=True, pid=value, peak_bytes=used.get(value)))
            else:
                inbox.append(LoadReport(MODE, ok=False, error=value))
        out = controller.step(now(), reading, inbox[:])
        inbox.clear()
        for d in out:
            decisions.append({"t_s": round(now(), 3), "action": d.action.value, "code": d.code.value,
                              "reason": d.reason, **({"extra": d.extra} if d.extra else {})})
            if d.action == Action.LOAD:
                conn, child = ctx.Pipe()
                proc = ctx.Process(target=backend_main, daemon=True,
                                   args=(a.gpu, backend_bytes, min(1.0, d.cap_bytes / total), child))
                proc.start()
                backend.update(proc=proc, conn=conn)
            elif d.action == Action.UNLOAD and backend["proc"] is not None:
                backend["proc"].terminate()  # exit frees it all; NVML must confirm it
                backend.update(proc=None, conn=None)
        trace.append({"t_s": round(now(), 3), "free_gib": round(reading.free_bytes / GIB, 2),
                      "budget_gib": round(controller.state.budget_bytes / GIB, 2),
                      "ledger_gib": round(controller.committed_bytes() / GIB, 2)})
        return out

    def run_until(pred, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            step()
            if pred():
                return True
            time.sleep(a.step_s)
        return False

    resident = lambda: MODE in controller.state.backends and controller.state.backends[MODE].phase.value == "resident"  # noqa: E731
    step()
    inbox.append(SessionRequest("s1", MODE))
    loaded = run_until(resident, 60)
    inbox.append(SessionEnded("s1"))  # idle: the policy may evict it
    step()

    target = total - int(a.leave_gib * GIB)
    t_grow = now()
    llm_conn.send(("grow", (target, a.grow_gib_per_s * GIB, time.time() + a.timeout_s)))
    freed = run_until(lambda: any(d["code"] == Code.UNLOAD_CONFIRMED.value for d in decisions), a.timeout_s)
    grown = llm_conn.recv() if llm_conn.poll(a.timeout_s) else ("grown", {"reached": False})
    llm_conn.send(("exit", None))
    llm.join(10)
    probe.close()

    def first(code: Code) -> float | None:
        return next((d["t_s"] for d in decisions if d["code"] == code.value and d["t_s"] >= t_grow), None)

    t_unload = next((d["t_s"] for d in decisions if d["action"] == "unload" and d["t_s"] >= t_grow), None)
    t_freed = first(Code.UNLOAD_CONFIRMED)
    return {
        "gpu_total_gib": round(total / GIB, 2), "backend_loaded": loaded, "backend_freed": freed,
        "neighbour": grown[1],
        "growth_to_unload_decision_s": round(t_unload - t_grow, 3) if t_unload is not None else None,
        "growth_to_memory_freed_s": round(t_freed - t_grow, 3) if t_freed is not None else None,
        "unload_to_freed_s": next((d["extra"]["time_to_free_s"] for d in decisions
                                   if d["code"] == Code.UNLOAD_CONFIRMED.value), None),
        "decisions": decisions, "trace": trace,
    }


def main() -> None:
    print(json.dumps(run_check(build_parser().parse_args()), indent=1))


if __name__ == "__main__":
    main()
