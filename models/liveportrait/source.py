"""What LivePortrait computes once per source image: features, keypoints, pose.

From the 256×256 source crop: the appearance volume f_s (F), the kp info (M),
the posed source keypoints x_s and the source rotation R_s.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from . import keypoints
from .loading import LivePortraitNetworks


@dataclass
class SourceMotion:
    """f_s: 1×32×16×64×64; info: kp info (angles 1×1 degrees, exp/kp 1×21×3, scale 1×1, t 1×3);
    x_s: 1×21×3 posed keypoints; R_s: 1×3×3. Keypoint tensors are float32."""

    f_s: torch.Tensor
    info: dict[str, torch.Tensor]
    x_s: torch.Tensor
    R_s: torch.Tensor


def image_to_tensor(image_256: np.ndarray, device: torch.device) -> torch.Tensor:
    """256×256×3 uint8 RGB -> 1×3×256×256 float32 in [0, 1] (no mean/std, as upstream)."""
    x = torch.from_numpy(image_256.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    return x.to(device)


def autocast_for(nets: LivePortraitNetworks, fp16: bool):
    """fp16 autocast on CUDA when asked (upstream's default there); nothing on CPU."""
    if fp16 and nets.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


@torch.no_grad()
def extract_source(nets: LivePortraitNetworks, image_256: np.ndarray, fp16: bool = False) -> SourceMotion:
    """Run F and M once on the source crop."""
    x = image_to_tensor(image_256, nets.device).to(nets.dtype)
    with autocast_for(nets, fp16):
        f_s = nets.appearance(x)
        raw = nets.motion(x)
    info = keypoints.refine_kp_info({k: v.float() for k, v in raw.items()})
    return SourceMotion(f_s=f_s, info=info, x_s=keypoints.transform_keypoint(info), R_s=keypoints.kp_info_rotation(info))
