"""Our MuseTalk networks at the official configs have the official checkpoints' state dicts.

The oracle's manifests list every key, shape and dtype of the UNet (`unet.pth`), the
VAE (sd-vae-ft-mse), whisper-tiny's encoder and the positional-encoding buffer. The
networks are built on the meta device: shapes without allocating 3.4 GB of UNet.
"""
from __future__ import annotations

import json

import pytest
import torch

from models.musetalk.unet import PositionalEncoding, build_unet

pytestmark = pytest.mark.oracle


def oracle_json(oracle, name: str) -> dict:
    return json.loads((oracle / "musetalk" / name).read_text())


def manifest_of(state: dict) -> dict:
    return {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in state.items()}


def expected(oracle, name: str) -> dict:
    return {k: v for k, v in oracle_json(oracle, name).items() if not k.startswith("_")}


@pytest.mark.parametrize("config, manifest", [("config_unet_musetalkV15.json", "manifest_unet.json"),
                                              ("config_unet_small.json", "manifest_unet_small.json")])
def test_unet_state_dict_is_the_official_one(oracle, config, manifest):
    with torch.device("meta"):
        unet = build_unet(oracle_json(oracle, config))
    assert manifest_of(unet.state_dict()) == expected(oracle, manifest)


@pytest.mark.parametrize("config, manifest", [("config_vae_sd_ft_mse.json", "manifest_vae_sd_ft_mse.json"),
                                              ("config_vae_small.json", "manifest_vae_small.json")])
def test_vae_state_dict_is_the_official_one(oracle, config, manifest):
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(oracle_json(oracle, config))
    assert manifest_of(vae.state_dict()) == expected(oracle, manifest)


def test_whisper_encoder_state_dict_is_the_official_one(oracle):
    from transformers import WhisperConfig, WhisperModel

    config = {k: v for k, v in oracle_json(oracle, "config_whisper_tiny.json").items() if not k.startswith("_")}
    with torch.device("meta"):
        model = WhisperModel(WhisperConfig(**config))
    encoder = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    assert manifest_of(encoder) == expected(oracle, "manifest_whisper_tiny_encoder.json")


def test_positional_encoding_buffer(oracle):
    assert manifest_of(PositionalEncoding(384).state_dict()) == expected(oracle, "manifest_positional_encoding.json")
