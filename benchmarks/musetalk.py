"""MuseTalk per-stage timings and the streaming-feature error, printed as JSON.

    python benchmarks/musetalk.py                 # small config, CPU (or CUDA if present)
    python benchmarks/musetalk.py --full          # real musetalk.json / sd-vae-ft-mse sizes
    python benchmarks/musetalk.py --skip-stream   # timings only

Weights: timings do not depend on values, so the networks are randomly
initialised from the configs (no download). The streaming error needs whisper
weights: the official whisper-tiny when it is in the HF cache, else the oracle's
seeded weights (LOCKN_ORACLE_DIR), else a random init; the JSON says which.
Seeded and random weights attend globally and overstate the error that the real
encoder, which attends mostly locally, would show.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

def oracle_dir() -> Path:
    return Path(os.environ.get("LOCKN_ORACLE_DIR", ROOT.parent / "shared" / "oracle"))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    """Best wall time of `repeats` calls after one warm-up, in seconds."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def build_nets(full: bool, device: str, dtype: torch.dtype):
    from diffusers import AutoencoderKL

    from models.musetalk.inference import MuseTalkNets
    from models.musetalk.config import FULL_UNET, FULL_VAE, SMALL_UNET, SMALL_VAE
    from models.musetalk.unet import PositionalEncoding, build_unet

    unet = build_unet(FULL_UNET if full else SMALL_UNET).eval()
    vae = AutoencoderKL(**(FULL_VAE if full else SMALL_VAE)).eval()
    return MuseTalkNets(unet, vae, PositionalEncoding(384)).to(device, dtype)


def whisper_encoder(device: str, dtype: torch.dtype):
    """(encoder, source): official files if cached, else oracle-seeded, else random."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    from models.musetalk.audio import WhisperAudioEncoder
    from models.musetalk.weights import WHISPER_FILES, folder_of

    try:
        enc = WhisperAudioEncoder.from_pretrained(folder_of(WHISPER_FILES[0]))
        source = "official"
    except Exception:  # not fetched: fall back to seeded or random weights
        config_file = oracle_dir() / "musetalk" / "config_whisper_tiny.json"
        if config_file.is_file():
            cfg = WhisperConfig(**json.loads(config_file.read_text()))
            model = WhisperModel(cfg)
            spec = importlib.util.spec_from_file_location("oracle_seeded", oracle_dir() / "seeded.py")
            seeded = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(seeded)
            model.load_state_dict(seeded.seeded_state_dict(model.state_dict()))
            source = "oracle-seeded"
        else:
            from models.musetalk.config import TINY_WHISPER

            model = WhisperModel(WhisperConfig(**TINY_WHISPER))
            source = "random"
        enc = WhisperAudioEncoder(model.encoder, WhisperFeatureExtractor(feature_size=80))
    enc.encoder.to(device, dtype)
    return enc, source


def test_waveform() -> tuple[np.ndarray, str]:
    """The oracle's 2.23 s waveform if present, else a synthetic voiced sweep."""
    path = oracle_dir() / "musetalk" / "audio_whisper_short.npz"
    if path.is_file():
        wav, name = np.load(path)["waveform"], "oracle audio_whisper_short"
    else:
        t = np.arange(int(2.5 * 16000)) / 16000
        f0 = 140 + 30 * t**2
        wav = sum(np.sin(2 * np.pi * np.cumsum(f0 * k) / 16000) / k for k in range(1, 6))
        wav = (0.3 * wav * np.abs(np.sin(2 * np.pi * 2.5 * t))).astype(np.float32)
        name = "synthetic sweep"
    return wav[: len(wav) // 640 * 640].astype(np.float32), name


def streaming_error(encoder, contexts: list[float], lookaheads: list[int], chunk_frames: int) -> dict:
    """Streamed prompts vs whole-clip prompts, per (context, lookahead), in 200 ms chunks by default."""
    from models.musetalk.audio import AudioConfig, AudioStream, StreamingPrompts

    wav, name = test_waveform()
    whole = encoder.prompts(wav, fps=25)
    scale = float(whole.abs().mean())
    rows = []
    for lookahead in lookaheads:
        for context in contexts:
            streamer = StreamingPrompts(encoder, AudioConfig(context_s=context, lookahead_frames=lookahead))
            stream, out = AudioStream(), []
            step = chunk_frames * 640
            for i in range(0, len(wav), step):
                prompts, stream = streamer.push(stream, wav[i : i + step])
                out.append(prompts)
            prompts, stream = streamer.flush(stream)
            out.append(prompts)
            diff = (torch.cat(out) - whole).abs()
            rows.append({"context_s": context, "lookahead_frames": lookahead, "max_abs": round(float(diff.max()), 4),
                         "mean_abs": round(float(diff.mean()), 5), "mean_abs_rel": round(float(diff.mean()) / scale, 4)})
    return {"waveform": name, "chunk_ms": chunk_frames * 40, "mean_abs_whole_clip": round(scale, 4), "results": rows}


def stage_times(nets, encoder, batch: int, device: str, repeats: int) -> dict:
    """Per-frame milliseconds of each stage at one batch size."""
    from models.musetalk import vae as vae_ops
    from models.musetalk.audio import AudioConfig, AudioStream, StreamingPrompts
    from models.musetalk.blending import blend, crop_box, resize_face
    from models.musetalk.inference import predict_latents

    latents = torch.randn(batch, 8, 32, 32, device=device, dtype=nets.dtype)
    prompts = torch.randn(batch, 50, 384, device=device, dtype=nets.dtype)
    pred = predict_latents(nets, latents, prompts)

    streamer = StreamingPrompts(encoder, AudioConfig())
    warm_stream = streamer.push(AudioStream(), np.zeros(16000, np.float32))[1]  # 1 s already heard
    chunk = (0.1 * np.random.default_rng(0).standard_normal(640 * batch)).astype(np.float32)

    frame = np.random.default_rng(1).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    box = (540, 200, 740, 430)
    cbox = crop_box(box)
    mask = np.full((cbox[3] - cbox[1], cbox[2] - cbox[0]), 128, np.uint8)
    faces = np.random.default_rng(2).integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8)

    def blend_all():
        for face in faces:
            blend(frame, resize_face(face, box), box, mask, cbox)

    seconds = {
        "audio_features": timed(lambda: streamer.push(warm_stream, chunk), device, repeats),
        "unet": timed(lambda: predict_latents(nets, latents, prompts), device, repeats),
        "vae_decode": timed(lambda: vae_ops.to_bgr_uint8(vae_ops.decode(nets.vae, pred)), device, repeats),
        "blending_720p": timed(blend_all, device, repeats),
    }
    ms = {k: round(1000 * v / batch, 3) for k, v in seconds.items()}
    render = seconds["unet"] + seconds["vae_decode"] + seconds["blending_720p"]
    return {"ms_per_frame": ms, "fps_unet_vae_blend": round(batch / render, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="real UNet/VAE sizes (slow on CPU)")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--contexts", type=float, nargs="+", default=[0.2, 0.5, 1.0, 2.0])
    parser.add_argument("--lookaheads", type=int, nargs="+", default=[2, 3, 5])
    args = parser.parse_args()

    dtypes = [torch.float32] + ([torch.float16] if args.device.startswith("cuda") else [])
    report = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "torch_threads": torch.get_num_threads(), "config": "full" if args.full else "small", "timings": {}}
    for dtype in dtypes:
        nets = build_nets(args.full, args.device, dtype)
        encoder, source = whisper_encoder(args.device, dtype)
        report["whisper_weights"] = source
        name = str(dtype).replace("torch.", "")
        report["timings"][name] = {str(b): stage_times(nets, encoder, b, args.device, args.repeats) for b in args.batches}
        del nets
    if not args.skip_stream:
        encoder, _ = whisper_encoder(args.device, torch.float32)
        report["streaming_feature_error"] = streaming_error(encoder, args.contexts, args.lookaheads, chunk_frames=5)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
