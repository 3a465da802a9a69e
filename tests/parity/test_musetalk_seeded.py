"""Seeded MuseTalk weights written into a Hugging Face cache (test helpers, no tests).

Values come from the oracle's `seeded.py` (imported by path, never copied), so
our networks get exactly the weights the reference outputs were computed with.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tests.hf_layout import cache_file_path, write_torch


def load_seeded(oracle: Path):
    """The oracle's seeded.py as a module."""
    spec = importlib.util.spec_from_file_location("oracle_seeded", Path(oracle) / "seeded.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def oracle_json(oracle: Path, name: str) -> dict:
    return json.loads((Path(oracle) / "musetalk" / name).read_text())


def write_whisper(cache: Path, oracle: Path, whisper_config: dict | None = None) -> Path:
    """Seeded openai/whisper-tiny (config, model.safetensors, preprocessor) in `cache`; returns the folder."""
    from safetensors.torch import save_file
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    from models.musetalk.weights import WHISPER_FILES

    seeded = load_seeded(oracle)
    cfg = WhisperConfig(**(whisper_config or oracle_json(oracle, "config_whisper_tiny.json")))
    state = seeded.seeded_state_dict(WhisperModel(cfg).state_dict(), seed=0, gain=1.0)
    config_file, weights_file, preprocessor_file = WHISPER_FILES
    folder = cache_file_path(cache, config_file.repo_id, config_file.filename).parent
    cfg.to_json_file(folder / config_file.filename)
    save_file({k: v.contiguous() for k, v in state.items()}, cache_file_path(cache, weights_file.repo_id, weights_file.filename))
    WhisperFeatureExtractor(feature_size=80).to_json_file(cache_file_path(cache, preprocessor_file.repo_id, preprocessor_file.filename))
    return folder


def small_whisper_config(oracle: Path) -> dict:
    """whisper-tiny with a 1-layer decoder and tiny vocab: same encoder, cheap to build."""
    cfg = oracle_json(oracle, "config_whisper_tiny.json")
    cfg.update(decoder_layers=1, vocab_size=64, max_target_positions=8, pad_token_id=1, bos_token_id=1,
               eos_token_id=1, decoder_start_token_id=1)
    return cfg


def write_unet(cache: Path, oracle: Path, config_name: str = "config_unet_small.json") -> None:
    """Seeded MuseTalk v1.5 UNet (musetalk.json + unet.pth) from an oracle config."""
    from models.musetalk.unet import build_unet
    from models.musetalk.weights import UNET_CONFIG, UNET_WEIGHTS

    seeded = load_seeded(oracle)
    config = oracle_json(oracle, config_name)
    cache_file_path(cache, UNET_CONFIG.repo_id, UNET_CONFIG.filename).write_text(json.dumps(config))
    unet = build_unet(config)
    write_torch(cache, UNET_WEIGHTS.repo_id, UNET_WEIGHTS.filename, seeded.seeded_state_dict(unet.state_dict()))


def write_vae(cache: Path, oracle: Path, config_name: str = "config_vae_small.json") -> None:
    """Seeded sd-vae-ft-mse (config.json + safetensors) from an oracle config."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from models.musetalk.weights import VAE_CONFIG, VAE_WEIGHTS

    seeded = load_seeded(oracle)
    config = oracle_json(oracle, config_name)
    cache_file_path(cache, VAE_CONFIG.repo_id, VAE_CONFIG.filename).write_text(json.dumps(config))
    vae = AutoencoderKL.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    state = seeded.seeded_state_dict(vae.state_dict())
    save_file({k: v.contiguous() for k, v in state.items()}, cache_file_path(cache, VAE_WEIGHTS.repo_id, VAE_WEIGHTS.filename))
