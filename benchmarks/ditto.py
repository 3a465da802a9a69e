"""Ditto timings; prints one JSON object.

- per_overlap: for each overlap setting, the algorithmic first-frame delay (audio
  needed before motion for frame 0 can leave: 2 windows' new frames, HuBERT's
  5-frame hop and its 2 frames + 80 samples of lookahead), the frames held back
  at most (the declared lookahead), LMDM windows per second of speech and the
  LMDM cost per frame from the measured window time.
- lmdm: wall time of one DDIM window (10 steps x 2 guided passes), float32.
- renderer: LivePortrait warping + SPADE generator per frame at batch 1 and 5
  (Ditto's renderer files are key for key LivePortrait's), fp16 autocast on CUDA.
- stream: the whole pipeline (HuBERT stand-in or the official ONNX, LMDM stream,
  stitching, W + G, paste-back) fed 200 ms chunks as the session does: mean time
  per render call and per frame, the real-time factor, and the first frame's latency
  split into algorithmic delay and compute (the call that emits it, once the audio
  is there; and all calls up to it, for audio that arrives faster than real time).

Weights: `--config tiny` (default) and `--config full` are seeded, file-free
(speed does not depend on values; `full` has the official widths, with the HuBERT
stand-in); `--config official` loads the official files (fetch them first:
`lockn-bod weights fetch ditto`).

    python benchmarks/ditto.py                          # CPU: tiny
    python benchmarks/ditto.py --config full --device cuda
    python benchmarks/ditto.py --config official --device cuda
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

from models.base import Controls, PersonaMedia  # noqa: E402
from models.ditto.lmdm import LMDMConfig, MotionDecoder  # noqa: E402
from models.ditto.pipeline import DittoPipeline, first_frame_audio_ms, lookahead_frames_for  # noqa: E402
from models.ditto.sampler import DDIMSampler, SeededNoise  # noqa: E402
from models.ditto.testing import CentredFace, SeededHubert, face_like_portrait  # noqa: E402

FRAME_MS = 40.0
CHUNK_SAMPLES = 3200  # 200 ms, the session's render chunk


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


def build(config: str, device: str) -> DittoPipeline:
    if config == "official":
        return DittoPipeline("official", device=device)
    if config == "tiny":
        return DittoPipeline("tiny", device=device)
    # official widths, seeded, file-free
    from models.liveportrait.config import LivePortraitConfig
    from models.liveportrait.loading import LivePortraitNetworks

    torch.manual_seed(0)
    return DittoPipeline("official", device=device, lmdm=MotionDecoder(LMDMConfig()).eval(),
                         networks=LivePortraitNetworks.random(LivePortraitConfig()),
                         hubert=SeededHubert(0), face=CentredFace())


def lmdm_window_ms(pipe: DittoPipeline, device: torch.device, repeats: int) -> float:
    cfg = pipe.lmdm.cfg
    sampler = DDIMSampler(pipe.lmdm, pipe.config.stream.sampling_steps, SeededNoise(0))
    cond_frame = torch.zeros(1, cfg.motion_dim, device=device)
    cond = torch.randn(1, cfg.seq_frames, cfg.cond_dim, device=device)
    x_init = torch.randn(1, cfg.seq_frames, cfg.motion_dim, device=device)
    return median_ms(lambda: sampler.sample(cond_frame, cond, x_init), device, 1, repeats)


def renderer_ms(pipe: DittoPipeline, persona, device: torch.device, batch: int, repeats: int) -> float:
    """W + G per frame at a batch size (what the pipeline's _render runs, without paste-back)."""
    from models.liveportrait.decode import warp_decode

    source = persona.features["ditto"]
    x_s = torch.from_numpy(np.asarray(source.cond.kp, np.float32).reshape(1, 21, 3)).to(device)
    x_d = x_s.expand(batch, 21, 3) + 0.01
    return median_ms(lambda: warp_decode(pipe.networks, source.f_s, x_s, x_d, pipe.config.fp16), device, 1, repeats) / batch


def stream_timings(pipe: DittoPipeline, persona, device: torch.device, seconds: float) -> dict:
    """Render `seconds` of speech-like audio in 200 ms chunks, timing every call."""
    t = np.arange(int(seconds * 25) * 640) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)
    controls = Controls()
    warm = pipe.start(persona, controls)  # warm-up: kernels, the silence buffer
    for s in range(0, 4 * CHUNK_SAMPLES, CHUNK_SAMPLES):
        _, warm = pipe.render(persona, warm, audio[s : s + CHUNK_SAMPLES], controls)
    carry, calls = pipe.start(persona, controls), []
    for s in range(0, len(audio), CHUNK_SAMPLES):
        start = time.perf_counter()
        frames, carry = pipe.render(persona, carry, audio[s : s + CHUNK_SAMPLES], controls)
        sync(device)
        calls.append(((time.perf_counter() - start) * 1e3, len(frames)))
    first = next(i for i, (_, n) in enumerate(calls) if n)
    steady = [ms for ms, n in calls[first + 1 :] if n]
    ms_per_frame = float(np.mean(steady)) / 5 if steady else float("nan")
    idle_ms = median_ms(lambda: pipe.idle(persona, carry, 5, controls), device, 1, 3) / 5
    overlap = pipe.config.stream.overlap
    return {
        "chunk_ms": 200, "calls": len(calls), "first_frames_after_calls": first + 1,
        "ms_per_call_steady": float(np.mean(steady)) if steady else None,
        "ms_per_frame": ms_per_frame, "real_time_factor": ms_per_frame / FRAME_MS,
        "idle_ms_per_frame": idle_ms, "idle_real_time_factor": idle_ms / FRAME_MS,
        "first_frame": {
            "algorithmic_delay_ms": first_frame_audio_ms(overlap),
            "with_200ms_chunks_audio_ms": (first + 1) * 200,
            "compute_ms_realtime_input": calls[first][0],
            "compute_ms_burst_input": float(sum(ms for ms, _ in calls[: first + 1])),
            "total_ms_realtime_input": first_frame_audio_ms(overlap) + calls[first][0],
        },
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=("tiny", "full", "official"), default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--overlaps", type=int, nargs="+", default=[70, 75, 76, 77, 78])
    p.add_argument("--seconds", type=float, default=4.0, help="speech rendered for the stream figures")
    p.add_argument("--portrait", type=int, default=512, help="portrait side in pixels")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    device = torch.device(args.device)

    pipe = build(args.config, args.device)
    persona = pipe.prepare(PersonaMedia([face_like_portrait(args.portrait)]), "bench")
    window_ms = lmdm_window_ms(pipe, device, args.repeats)
    seq = pipe.lmdm.cfg.seq_frames
    per_overlap = {
        str(o): {
            "algorithmic_delay_ms": first_frame_audio_ms(o, seq),
            "lookahead_frames": lookahead_frames_for(o, seq),
            "lmdm_windows_per_s": 25 / (seq - o),
            "lmdm_ms_per_frame": window_ms / (seq - o),
        }
        for o in args.overlaps
    }
    print(json.dumps({
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(),
        "config": args.config, "overlap": pipe.config.stream.overlap, "lookahead_frames": pipe.lookahead_frames,
        "fp16_renderer": pipe.config.fp16 and device.type == "cuda", "portrait_px": args.portrait,
        "lmdm": {"sampling_steps": pipe.config.stream.sampling_steps, "ms_per_window": window_ms},
        "renderer": {"warp_decode_ms_per_frame_batch1": renderer_ms(pipe, persona, device, 1, args.repeats),
                     "warp_decode_ms_per_frame_batch5": renderer_ms(pipe, persona, device, 5, args.repeats)},
        "stream": stream_timings(pipe, persona, device, args.seconds),
        "per_overlap": per_overlap,
    }, indent=1))


if __name__ == "__main__":
    main()
