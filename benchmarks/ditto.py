"""Ditto timings; prints one JSON object.

- LMDM: wall time of one DDIM window (10 steps x 2 guided passes) and the motion
  real-time factor per overlap setting (each window yields 80 - overlap frames).
- Algorithmic delay per overlap: audio needed before motion for frame 0 leaves
  (2 x (80 - overlap) frames online, plus HuBERT's 2 frames + 80 samples).
- Renderer: LivePortrait warping + SPADE generator per frame (Ditto's renderer
  files are key for key LivePortrait's), optionally under fp16 autocast.
- First frame: algorithmic delay + compute (two LMDM windows + one rendered frame;
  HuBERT is not timed: its ONNX file is not available here).

Weights are freshly initialised: speed does not depend on their values.

    python benchmarks/ditto.py                # CPU: tiny LMDM and tiny renderer
    python benchmarks/ditto.py --full         # official widths
    python benchmarks/ditto.py --full --fp16  # on CUDA: renderer under fp16 autocast
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.ditto.audio import LOOKAHEAD_SAMPLES, SR_HZ  # noqa: E402
from models.ditto.lmdm import LMDMConfig, MotionDecoder  # noqa: E402
from models.ditto.sampler import DDIMSampler, SeededNoise  # noqa: E402
from models.ditto.stream import first_frame_delay_frames  # noqa: E402

FRAME_MS = 40.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def lmdm_window_ms(cfg: LMDMConfig, steps: int, device: torch.device, repeats: int) -> float:
    model = MotionDecoder(cfg).to(device).eval()
    sampler = DDIMSampler(model, steps, SeededNoise(0))
    sampler.step_noise = [n.to(device) for n in sampler.step_noise]
    cond_frame = torch.zeros(1, cfg.motion_dim, device=device)
    cond = torch.randn(1, cfg.seq_frames, cfg.cond_dim, device=device)
    x_init = torch.randn(1, cfg.seq_frames, cfg.motion_dim, device=device)
    return median_ms(lambda: sampler.sample(cond_frame, cond, x_init), device, 1, repeats)


def renderer_frame_ms(full: bool, fp16: bool, device: torch.device, repeats: int) -> dict:
    from models.liveportrait.config import LivePortraitConfig
    from models.liveportrait.loading import LivePortraitNetworks

    nets = LivePortraitNetworks.random(LivePortraitConfig() if full else LivePortraitConfig.tiny(), device)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        volume = nets.appearance(torch.rand(1, 3, 256, 256, generator=gen).to(device))
    x_s = (torch.rand(1, 21, 3, generator=gen) * 1.2 - 0.6).to(device)
    x_d = x_s + 0.05
    autocast = torch.autocast(device.type, dtype=torch.float16) if fp16 else contextlib.nullcontext()

    def frame():
        with torch.no_grad(), autocast:
            nets.generator(nets.warping(volume, kp_driving=x_d, kp_source=x_s)["out"])

    return {"config": "full" if full else "tiny", "fp16": fp16, "warp_plus_decoder_ms": median_ms(frame, device, 1, repeats)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="official widths (default: tiny)")
    p.add_argument("--fp16", action="store_true", help="renderer under fp16 autocast (CUDA)")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps (online default 10)")
    p.add_argument("--overlaps", type=int, nargs="+", default=[10, 40, 60, 70, 75, 78])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cfg = LMDMConfig() if args.full else LMDMConfig.tiny()

    window_ms = lmdm_window_ms(cfg, args.steps, device, args.repeats)
    render = renderer_frame_ms(args.full, args.fp16, device, args.repeats)
    per_overlap = {}
    for overlap in args.overlaps:
        valid = cfg.seq_frames - overlap
        delay_frames = first_frame_delay_frames(overlap, cfg.seq_frames)
        algorithmic_ms = delay_frames * FRAME_MS + LOOKAHEAD_SAMPLES / SR_HZ * 1e3
        motion_ms_per_frame = window_ms / valid
        per_overlap[str(overlap)] = {
            "new_frames_per_window": valid,
            "motion_rtf": motion_ms_per_frame / FRAME_MS,
            "total_rtf": (motion_ms_per_frame + render["warp_plus_decoder_ms"]) / FRAME_MS,
            "algorithmic_delay_frames": delay_frames,
            "algorithmic_delay_ms": algorithmic_ms,
            "first_frame_compute_ms": 2 * window_ms + render["warp_plus_decoder_ms"],
            "first_frame_ms": algorithmic_ms + 2 * window_ms + render["warp_plus_decoder_ms"],
        }
    print(json.dumps({
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(),
        "lmdm": {"config": "full" if args.full else "tiny", "sampling_steps": args.steps,
                 "guided_passes_per_window": 2 * args.steps, "ms_per_window": window_ms},
        "renderer": render,
        "per_overlap": per_overlap,
    }, indent=1))


if __name__ == "__main__":
    main()
