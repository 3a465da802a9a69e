"""Per-stage and whole-pipeline timing of the liveportrait mode; prints one JSON object.

Stages: F (appearance) and M (motion) run once per persona; W (warping),
G (SPADE generator) and S (stitching + lip + eye MLPs) run per frame, and so
does paste-back (the rendered 512² crop blended into the portrait, numpy/OpenCV
on the CPU). `pipeline_render` is `LivePortraitPipeline.render` on a chunk of
`batch` frames of speech (lip level, expression, blinks, idle motion, S, W+G
as one batch, uint8, paste-back), per frame. Each is timed at the requested
batch sizes in fp32 and, where CUDA is available, under fp16 autocast.
Weights are freshly initialised (speed does not depend on their values) and
the face is given, so no files are needed.

    python benchmarks/liveportrait.py                  # tiny config on CPU, official on CUDA
    python benchmarks/liveportrait.py --official       # official widths on CPU too (slow)
    python benchmarks/liveportrait.py --sizes 1 4 8 --portrait 720 1280
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

import numpy as np  # noqa: E402

from models.base import SAMPLE_RATE_HZ, SAMPLES_PER_FRAME, Controls, PersonaMedia  # noqa: E402
from models.face.analysis import AnalysedFace  # noqa: E402
from models.face.detection import FaceBox  # noqa: E402
from models.face.paste_back import paste_back  # noqa: E402
from models.liveportrait import keypoints  # noqa: E402
from models.liveportrait.config import LivePortraitConfig  # noqa: E402
from models.liveportrait.loading import LivePortraitNetworks  # noqa: E402
from models.liveportrait.pipeline import LivePortraitPipeline, LivePortraitPipelineConfig  # noqa: E402
from tests.face_onnx_models import face_points_106, face_points_203  # noqa: E402  (plain numpy layouts)


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


class GivenFace:
    """The face analyser's result, given: synthetic 106/203-point layouts around a face box."""

    def __init__(self, centre_xy: tuple[float, float], half_side_px: float):
        centre = np.asarray(centre_xy, np.float32)
        points106 = centre + face_points_106().astype(np.float32) * half_side_px
        points203 = centre + face_points_203().astype(np.float32) * half_side_px
        box = np.concatenate([centre - half_side_px, centre + half_side_px])
        self.result = AnalysedFace(FaceBox(box, 1.0, np.zeros((5, 2), np.float32)), points106, points203)

    def analyse(self, image: np.ndarray) -> AnalysedFace:
        return self.result


def speech(n_frames: int) -> np.ndarray:
    """n frames of a loud voiced sound (the lip level opens): 180 Hz and harmonics, float32."""
    t = np.arange(n_frames * SAMPLES_PER_FRAME) / SAMPLE_RATE_HZ
    wave = sum(np.sin(2 * np.pi * 180 * k * t) / k for k in range(1, 12))
    return (0.4 * wave / np.abs(wave).max()).astype(np.float32)


def run_pipeline(pipeline: LivePortraitPipeline, persona, batch: int, device: torch.device, warmup: int,
                 repeats: int) -> dict:
    """Whole render of a chunk of `batch` frames, and paste-back alone, per frame."""
    carry = pipeline.start(persona, Controls(emotion="happy", intensity=0.7))
    audio = speech(batch)

    def render():
        nonlocal carry
        _, carry = pipeline.render(persona, carry, audio, Controls(emotion="happy", intensity=0.7))

    source = persona.features["liveportrait"]
    crop = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    paste = time_ms(lambda: paste_back(crop, source.M_c2o, persona.portrait, source.mask, source.mask_box),
                    torch.device("cpu"), warmup, repeats)
    total = time_ms(render, device, warmup, repeats)
    return {"pipeline_render_ms_per_frame": round(total / batch, 3), "paste_back_ms_per_frame": round(paste, 3)}


def build_pipeline(nets: LivePortraitNetworks, config: LivePortraitConfig, precision: str, max_batch: int,
                   portrait_hw: tuple[int, int]):
    """The pipeline on `nets` (fp16 autocast or not) with a given face, and a persona of a random portrait."""
    h, w = portrait_hw
    face = GivenFace((w / 2, h * 0.45), min(h, w) / 5)
    portrait = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    pipeline = LivePortraitPipeline(LivePortraitPipelineConfig(networks=config, max_batch=max_batch,
                                                               fp16=precision == "fp16"),
                                    networks=nets, face=face)
    return pipeline, pipeline.prepare(PersonaMedia([portrait]), "bench")


def measure(nets: LivePortraitNetworks, pipeline: LivePortraitPipeline, persona, batch: int, precision: str,
            device: torch.device, warmup: int, repeats: int) -> dict:
    """One batch size in one precision: the stages, the whole pipeline and paste-back, per frame."""
    result = run(nets, batch, precision, device, warmup, repeats)
    result.update(run_pipeline(pipeline, persona, batch, device, warmup, repeats))
    result["W+G+S+paste_back_ms_per_frame"] = round(
        result["W+G+S_ms_per_frame"] + result["paste_back_ms_per_frame"], 3)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8], help="batch sizes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    widths = parser.add_mutually_exclusive_group()
    widths.add_argument("--tiny", action="store_true", help="tiny config (the default on CPU)")
    widths.add_argument("--official", action="store_true", help="official widths (the default on CUDA)")
    parser.add_argument("--portrait", type=int, nargs=2, default=[720, 720], metavar=("H", "W"),
                        help="portrait size for paste-back and the whole pipeline")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    sizes = args.sizes
    warmup = args.warmup if args.warmup is not None else (3 if on_cuda else 1)
    repeats = args.repeats if args.repeats is not None else (10 if on_cuda else 3)
    tiny = args.tiny or (not args.official and not on_cuda)
    config = LivePortraitConfig.tiny() if tiny else LivePortraitConfig()

    torch.manual_seed(0)
    nets = LivePortraitNetworks.random(config, device=device)
    precisions = ["fp32", "fp16"] if on_cuda else ["fp32"]
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    h, w = args.portrait
    runs = []
    for precision in precisions:
        pipeline, persona = build_pipeline(nets, config, precision, max(sizes), (h, w))
        for batch in sizes:
            runs.append(measure(nets, pipeline, persona, batch, precision, device, warmup, repeats))
    report = {
        "model": "liveportrait",
        "config": "tiny" if tiny else "official",
        "portrait_hw": [h, w],
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
