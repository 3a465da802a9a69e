"""sd-vae-ft-mse through diffusers' AutoencoderKL, with MuseTalk's pre/post-processing.

Upstream samples the posterior when it encodes (`latent_dist.sample()`); a
single-step model has no reason to inject noise into its reference, so we use
the posterior mean. `eps` lets parity tests inject upstream's recorded noise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SCALING_FACTOR = 0.18215  # sd-vae-ft-mse config has none: diffusers' default


def load_vae(folder: Path):
    """AutoencoderKL.from_pretrained on the snapshot folder: diffusers' own (safe) loader,
    which also renames legacy attention keys (query/key/value/proj_attn)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(folder, local_files_only=True).eval()


def preprocess(crops_bgr: np.ndarray, mask_lower_half: bool) -> torch.Tensor:
    """crops_bgr: B×256×256×3 uint8 BGR -> B×3×256×256 float32 RGB in [-1, 1].

    The masked copy zeroes the lower half (rows 128..255) *before* normalising,
    so those pixels become -1, as upstream.
    """
    x = torch.from_numpy(np.ascontiguousarray(crops_bgr[..., ::-1])).permute(0, 3, 1, 2).float() / 255.0
    if mask_lower_half:
        x[:, :, x.shape[2] // 2 :] = 0.0
    return (x - 0.5) / 0.5


@torch.no_grad()
def encode(vae, images: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """images: B×3×H×W in [-1,1] -> B×4×H/8×W/8 scaled latents (mean, or mean + std·eps)."""
    dist = vae.encode(images.to(vae.device, vae.dtype)).latent_dist
    latents = dist.mean if eps is None else dist.mean + dist.std * eps.to(dist.mean)
    return SCALING_FACTOR * latents


def unet_input_latents(vae, crops_bgr: np.ndarray, eps_masked=None, eps_ref=None) -> torch.Tensor:
    """B×256×256×3 BGR crops -> B×8×32×32: masked-frame latents, then reference latents."""
    masked = encode(vae, preprocess(crops_bgr, mask_lower_half=True), eps_masked)
    ref = encode(vae, preprocess(crops_bgr, mask_lower_half=False), eps_ref)
    return torch.cat([masked, ref], dim=1)


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """B×4×32×32 scaled latents -> B×3×256×256 float in about [-1, 1]."""
    # Multiply by the reciprocal as upstream does (dividing differs by ~5e-6).
    return vae.decode((1 / SCALING_FACTOR) * latents.to(vae.dtype)).sample


def to_bgr_uint8(images: torch.Tensor) -> np.ndarray:
    """B×3×H×W in [-1,1] -> B×H×W×3 uint8 BGR, rounded as upstream."""
    x = (images.float() / 2 + 0.5).clamp(0, 1)
    x = (x.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return np.ascontiguousarray(x[..., ::-1])
