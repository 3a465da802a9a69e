"""Per-stage timing of the photoreal mode (LivePortrait's face, MuseTalk's lips); prints one JSON object.

Per frame, at each batch size: LivePortrait's S+W+G (`render_crops`, the mouth at rest),
MuseTalk's VAE encode of each frame's masked and full face crop, its UNet step, its VAE
decode, the jaw-mask blend into the 512² crop, LivePortrait's paste-back into the portrait;
and `render` whole (a chunk of `batch` frames of speech once the stream is warm). Also the
first call of a fresh stream on 8 frames of audio (MuseTalk's lookahead holds 3 back):
what the first frame waits for once the audio is there.

Weights are freshly initialised (speed does not depend on their values), the face is given
and MuseTalk's face models are file-free stand-ins, so no files are needed. fp16 on CUDA.

    python benchmarks/photoreal.py                  # tiny networks on CPU, official widths on CUDA
    python benchmarks/photoreal.py --official       # official widths on CPU too (very slow)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from liveportrait import GivenFace, speech, time_ms  # noqa: E402  (benchmarks/liveportrait.py)
from musetalk import build_nets, whisper_encoder  # noqa: E402  (benchmarks/musetalk.py)

from models.base import Controls, PersonaMedia  # noqa: E402
from models.liveportrait.config import LivePortraitConfig  # noqa: E402
from models.liveportrait.loading import LivePortraitNetworks  # noqa: E402
from models.liveportrait.pipeline import LivePortraitPipeline, LivePortraitPipelineConfig  # noqa: E402
from models.musetalk import vae as vae_ops  # noqa: E402
from models.musetalk.blending import blend, resize_face  # noqa: E402
from models.musetalk.face_box import crop_face  # noqa: E402
from models.musetalk.inference import predict_latents  # noqa: E402
from models.musetalk.pipeline import MuseTalkPipeline  # noqa: E402
from models.musetalk.testing import all_skin_parser, ellipse_landmarks  # noqa: E402
from models.photoreal.pipeline import MODE, PhotorealPipeline  # noqa: E402

CONTROLS = Controls(emotion="happy", intensity=0.7)


def build(official: bool, device: torch.device, max_batch: int, portrait_hw: tuple[int, int],
          fp16: bool | None = None):
    """The composite on fresh weights (seeded: the same for every call), and a persona of a random
    portrait; fp16 (default: on CUDA) autocasts LivePortrait and runs MuseTalk's networks in half."""
    fp16 = device.type == "cuda" if fp16 is None else fp16
    torch.manual_seed(0)
    lp_config = LivePortraitConfig() if official else LivePortraitConfig.tiny()
    liveportrait = LivePortraitPipeline(
        LivePortraitPipelineConfig(networks=lp_config, max_batch=max_batch, fp16=fp16),
        networks=LivePortraitNetworks.random(lp_config, device=device),
        face=GivenFace((portrait_hw[1] / 2, portrait_hw[0] * 0.45), min(portrait_hw) / 5))
    dtype = torch.float16 if fp16 else torch.float32
    encoder, _ = whisper_encoder(str(device), dtype)
    # fp16 told to the pipeline too: it casts its networks to half on CUDA unless config.fp16 is False.
    musetalk = MuseTalkPipeline({"preset": "official" if official else "tiny", "batch_size": max_batch, "fp16": fp16},
                                device=str(device), nets=build_nets(official, str(device), dtype),
                                audio_encoder=encoder, parser=all_skin_parser, landmarks=ellipse_landmarks)
    pipeline = PhotorealPipeline(liveportrait=liveportrait, musetalk=musetalk)
    portrait = np.random.default_rng(0).integers(0, 256, (*portrait_hw, 3), dtype=np.uint8)
    return pipeline, pipeline.prepare(PersonaMedia([portrait]), "bench")


def stage_times(pipeline: PhotorealPipeline, persona, batch: int, device: torch.device, warmup: int,
                repeats: int) -> dict:
    """Milliseconds a frame of each stage at one batch size."""
    lp, mt = pipeline.liveportrait, pipeline.musetalk
    region = persona.features[MODE]
    carry = lp.start(persona, CONTROLS)
    crops, _, _ = lp.render_crops(persona, carry, np.zeros(batch, np.float32), CONTROLS)  # B×512×512×3
    crops_bgr = [np.ascontiguousarray(c[..., ::-1]) for c in crops]
    faces_256 = np.stack([crop_face(c, region.box) for c in crops_bgr])
    latents = vae_ops.unet_input_latents(mt.nets.vae, faces_256)
    prompts = torch.randn(batch, 50, 384, device=latents.device, dtype=latents.dtype)
    predicted = predict_latents(mt.nets, latents, prompts)
    generated = vae_ops.to_bgr_uint8(vae_ops.decode(mt.nets.vae, predicted))

    def blend_all():
        for frame, face in zip(crops_bgr, generated):
            blend(frame, resize_face(face, region.box), region.box, region.mask, region.mask_box)

    stages = {
        "liveportrait_S+W+G": lambda: lp.render_crops(persona, carry, np.zeros(batch, np.float32), CONTROLS),
        "musetalk_vae_encode": lambda: vae_ops.unet_input_latents(mt.nets.vae, faces_256),
        "musetalk_unet": lambda: predict_latents(mt.nets, latents, prompts),
        "musetalk_vae_decode": lambda: vae_ops.to_bgr_uint8(vae_ops.decode(mt.nets.vae, predicted)),
        "blend": blend_all,
        "paste_back": lambda: [lp.paste(persona, c) for c in crops],
    }
    ms = {name: round(time_ms(fn, device, warmup, repeats) / batch, 3) for name, fn in stages.items()}
    return {"batch": batch, "ms_per_frame": ms, "render_ms_per_frame": round(render_ms(pipeline, persona, batch, device,
                                                                                       warmup, repeats) / batch, 3)}


def render_ms(pipeline: PhotorealPipeline, persona, batch: int, device: torch.device, warmup: int,
              repeats: int) -> float:
    """`render` of a chunk of `batch` frames of speech, the stream warm (its lookahead full)."""
    carry = pipeline.start(persona, CONTROLS)
    _, carry = pipeline.render(persona, carry, speech(8), CONTROLS)
    audio = speech(batch)

    def render():
        nonlocal carry
        _, carry = pipeline.render(persona, carry, audio, CONTROLS)

    return time_ms(render, device, warmup, repeats)


def first_frames_ms(pipeline: PhotorealPipeline, persona, device: torch.device, repeats: int) -> dict:
    """A fresh stream's first call, 8 frames of audio in: how many frames come out, and its time."""
    out = []

    def first():
        frames, _ = pipeline.render(persona, pipeline.start(persona, CONTROLS), speech(8), CONTROLS)
        out.append(len(frames))

    ms = time_ms(first, device, 1, repeats)
    return {"audio_frames_in": 8, "frames_out": out[-1], "ms": round(ms, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8], help="batch sizes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--official", action="store_true", help="official widths (the default on CUDA)")
    parser.add_argument("--portrait", type=int, nargs=2, default=[720, 720], metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    official = args.official or on_cuda
    repeats = args.repeats or (10 if on_cuda else 2)
    warmup = 3 if on_cuda else 1
    pipeline, persona = build(official, device, max(args.sizes), tuple(args.portrait))
    report = {
        "model": "photoreal",
        "config": "official" if official else "tiny",
        "precision": "fp16" if on_cuda else "fp32",
        "portrait_hw": args.portrait,
        "device": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "runs": [stage_times(pipeline, persona, batch, device, warmup, repeats) for batch in args.sizes],
        "first_call": first_frames_ms(pipeline, persona, device, repeats),
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
