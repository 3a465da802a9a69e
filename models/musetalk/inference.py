"""One MuseTalk generation step: latents + audio prompts -> 256×256 mouth-region faces.

    prompts  B×50×384 --(+ positional encoding)--> encoder_hidden_states
    latents  B×8×32×32 (masked, reference) --UNet at t=0--> B×4×32×32
             --VAE decode--> B×3×256×256 --> uint8 BGR
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import vae as vae_ops
from .unet import PositionalEncoding


@dataclass
class MuseTalkNets:
    """The three networks of a generation step, on one device and dtype."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    pe: PositionalEncoding

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "MuseTalkNets":
        self.unet.to(device, dtype)
        self.vae.to(device, dtype)
        self.pe.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype


@torch.no_grad()
def predict_latents(nets: MuseTalkNets, latents: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """latents B×8×32×32, prompts B×50×384 -> B×4×32×32 (one UNet step at timestep 0)."""
    hidden = nets.pe(prompts.to(nets.device, nets.dtype))
    timestep = torch.tensor([0], device=nets.device)
    return nets.unet(latents.to(nets.device, nets.dtype), timestep, encoder_hidden_states=hidden).sample


def generate(nets: MuseTalkNets, latents: torch.Tensor, prompts: torch.Tensor) -> np.ndarray:
    """latents B×8×32×32, prompts B×50×384 -> B×256×256×3 uint8 BGR faces."""
    pred = predict_latents(nets, latents, prompts)
    return vae_ops.to_bgr_uint8(vae_ops.decode(nets.vae, pred))
