"""MuseTalk v1.5 UNet: diffusers' UNet2DConditionModel from `musetalk.json`, plus the
positional encoding MuseTalk adds to the audio prompts.

The UNet takes 8 latent channels (masked frame latents, then reference latents)
and cross-attends to 50 audio tokens of width 384; it is run once, at timestep 0.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn


def build_unet(config: dict):
    """UNet2DConditionModel from a musetalk.json dict; `_`-keys are metadata, not arguments."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})


def load_unet(config_path: Path, weights_path: Path):
    """Build from musetalk.json and load unet.pth unchanged: strict, weights_only."""
    from ..weights import load_torch_state_dict

    unet = build_unet(json.loads(Path(config_path).read_text()))
    unet.load_state_dict(load_torch_state_dict(weights_path), strict=True)
    return unet.eval()


class PositionalEncoding(nn.Module):
    """Sinusoidal encoding added to the audio prompt (computed, in no checkpoint).

    pe[p, 2i] = sin(p / 10000^(2i/d)), pe[p, 2i+1] = cos(same); x: B×T×d -> x + pe[:T].
    """

    def __init__(self, d_model: int = 384, max_len: int = 5000):
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]  # max_len×1
        inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * inv_freq)
        pe[:, 1::2] = torch.cos(position * inv_freq)
        self.register_buffer("pe", pe[None])  # 1×max_len×d; persistent, as upstream (no checkpoint holds it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[:, : x.shape[1]].to(x.dtype)
