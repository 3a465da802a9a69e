"""Per-stage timing of the LivePortrait networks; prints one JSON object.

Stages: F (appearance) and M (motion) run once per persona; W (warping),
G (SPADE generator) and S (stitching + lip + eye MLPs) run per frame. Each is
timed at the requested batch sizes in fp32 and, where CUDA is available, under
fp16 autocast. Weights are freshly initialised: speed does not depend on their
values, so no weight files are needed. Paste-back is timed by the pipeline's
own benchmark (it is image geometry, not a network).

    python benchmarks/liveportrait.py                 # CPU: batch 1, official widths
    python benchmarks/liveportrait.py --sizes 1 4 8   # default on CUDA
    python benchmarks/liveportrait.py --tiny          # smoke run with the tiny config
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

from models.liveportrait import keypoints  # noqa: E402
from models.liveportrait.config import LivePortraitConfig  # noqa: E402
from models.liveportrait.loading import LivePortraitNetworks  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def stage_inputs(nets: LivePortraitNetworks, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Realistic inputs per stage: an image, F's volume, source and driving keypoints, W's output."""
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, 256, 256, generator=gen).to(device)
    with torch.no_grad():
        volume = nets.appearance(image)
        x_s = (torch.rand(batch, 21, 3, generator=gen) * 1.2 - 0.6).to(device)
        x_d = x_s + 0.05
        feature = nets.warping(volume, kp_driving=x_d, kp_source=x_s)["out"]
    ratios = {"eye": torch.full((batch, 3), 0.3, device=device), "lip": torch.full((batch, 2), 0.2, device=device)}
    return {"image": image, "volume": volume, "x_s": x_s, "x_d": x_d, "feature": feature, **ratios}


def stages(nets: LivePortraitNetworks, inp: dict[str, torch.Tensor]) -> dict[str, callable]:
    s = nets.stitching

    def stitching_and_retargeting():
        delta = keypoints.retarget_eye(s.eye, inp["x_s"], inp["eye"])
        delta = delta + keypoints.retarget_lip(s.lip, inp["x_s"], inp["lip"])
        return keypoints.stitching(s.stitching, inp["x_s"], inp["x_d"] + delta)

    return {
        "F_per_persona": lambda: nets.appearance(inp["image"]),
        "M_per_persona": lambda: nets.motion(inp["image"]),
        "W_per_frame": lambda: nets.warping(inp["volume"], kp_driving=inp["x_d"], kp_source=inp["x_s"]),
        "G_per_frame": lambda: nets.generator(inp["feature"]),
        "S_per_frame": stitching_and_retargeting,
    }


def run(
    nets: LivePortraitNetworks, batch: int, precision: str, device: torch.device, warmup: int, repeats: int
) -> dict:
    autocast = (torch.autocast("cuda", dtype=torch.float16) if precision == "fp16"
                else contextlib.nullcontext())
    with torch.no_grad(), autocast:
        inp = stage_inputs(nets, batch, device)
        result = {}
        for name, fn in stages(nets, inp).items():
            total = time_ms(fn, device, warmup, repeats)
            result[name] = {"ms_per_call": round(total, 3), "ms_per_item": round(total / batch, 3)}
    per_frame = sum(result[k]["ms_per_item"] for k in ("W_per_frame", "G_per_frame", "S_per_frame"))
    return {"batch": batch, "precision": precision, "stages": result, "W+G+S_ms_per_frame": round(per_frame, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", help="batch sizes (default: 1 on CPU, 1 4 8 on CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny config (smoke run)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    sizes = args.sizes or ([1, 4, 8] if on_cuda else [1])
    warmup = args.warmup if args.warmup is not None else (3 if on_cuda else 1)
    repeats = args.repeats if args.repeats is not None else (10 if on_cuda else 2)
    config = LivePortraitConfig.tiny() if args.tiny else LivePortraitConfig()

    torch.manual_seed(0)
    nets = LivePortraitNetworks.random(config, device=device)
    precisions = ["fp32", "fp16"] if on_cuda else ["fp32"]
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    runs = [run(nets, b, p, device, warmup, repeats) for p in precisions for b in sizes]
    report = {
        "model": "liveportrait",
        "config": "tiny" if args.tiny else "official",
        "device": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "warmup": warmup,
        "repeats": repeats,
        "runs": runs,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
