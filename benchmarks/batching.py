"""Cross-session batching in a backend replica, off against on, in one run; prints one JSON object.

N LivePortrait sessions each send a 5-frame chunk of speech, as the sessions of one backend
replica do. Off: the replica renders their calls one by one (`batch_sessions: 1`). On: one
batched call draws them together (`BackendDeployment._render_jobs`, what the batcher runs
when the calls queue). For each N: wall and CPU milliseconds a frame, and the network passes
(G's forward calls, counted with a hook) a frame. Weights are random (speed does not depend on
their values); the tiny config on CPU, the official one on CUDA.

    python benchmarks/batching.py                       # 1, 2, 4, 8 sessions
    python benchmarks/batching.py --sessions 1 4 --repeats 5 --official
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.liveportrait import build_pipeline, speech, synchronize  # noqa: E402
from deployments.backend import BackendDeployment  # noqa: E402
from models.base import Controls, PersonaMedia  # noqa: E402
from models.liveportrait.config import LivePortraitConfig  # noqa: E402
from models.liveportrait.loading import LivePortraitNetworks  # noqa: E402

CHUNK_FRAMES = 5


def portrait(side: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


def count_passes(module: torch.nn.Module) -> list[int]:
    """A one-element counter of the module's forward calls."""
    calls = [0]
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def timed(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    """(wall s, CPU s of this process) of one call, the best of `repeats` after a warm-up."""
    fn()
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        synchronize(device)
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def measure(backend: BackendDeployment, personas: list, sessions: int, device: torch.device, repeats: int,
            passes: list[int]) -> dict:
    pipeline = backend.pipeline
    jobs = [(persona, pipeline.start(persona, Controls()), speech(CHUNK_FRAMES), Controls(), None)
            for persona in personas[:sessions]]  # a portrait each: mixed batches stack their volumes
    frames = sessions * CHUNK_FRAMES
    result = {"sessions": sessions, "frames": frames}
    for name, render in (("off", lambda: [backend._render_chunks(*job[:4]) for job in jobs]),
                         ("on", lambda: backend._render_jobs(jobs))):
        before = passes[0]
        wall, cpu = timed(render, device, repeats)
        calls = (passes[0] - before) / (repeats + 1)
        result[name] = {"wall_ms_per_frame": round(1e3 * wall / frames, 3),
                        "cpu_ms_per_frame": round(1e3 * cpu / frames, 3),
                        "network_passes_per_frame": round(calls / frames, 3)}
    result["wall_ratio_on_over_off"] = round(result["on"]["wall_ms_per_frame"] / result["off"]["wall_ms_per_frame"], 3)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--official", action="store_true", help="official widths on CPU too (slow)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=8, help="frames per W+G pass (the pipeline's max_batch)")
    parser.add_argument("--portrait", type=int, default=512, help="portrait side in pixels (paste-back cost)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    config = LivePortraitConfig() if args.official or device.type == "cuda" else LivePortraitConfig.tiny()
    torch.manual_seed(0)
    nets = LivePortraitNetworks.random(config).to(device)
    pipeline, persona = build_pipeline(nets, config, "fp32", args.max_batch, (args.portrait, args.portrait))
    personas = [persona] + [pipeline.prepare(PersonaMedia([portrait(args.portrait, seed)]), f"bench{seed}")
                            for seed in range(1, max(args.sessions))]
    backend = BackendDeployment("liveportrait", "/nonexistent", chunk_frames=CHUNK_FRAMES, batch_sessions=8,
                                pipeline_factory=lambda mode, **options: pipeline)
    passes = count_passes(nets.generator)
    with torch.no_grad():
        results = [measure(backend, personas, n, device, args.repeats, passes) for n in args.sessions]
    print(json.dumps({"benchmark": "batching", "device": str(device), "torch": torch.__version__,
                      "config": "official" if config == LivePortraitConfig() else "tiny",
                      "chunk_frames": CHUNK_FRAMES, "max_batch": args.max_batch, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
