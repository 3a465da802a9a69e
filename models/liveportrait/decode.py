"""Per-frame rendering: warp the source volume by the keypoints (W), decode it (G), to uint8.

All frames of a render chunk go through W and G as one batch.
"""
from __future__ import annotations

import numpy as np
import torch

from .loading import LivePortraitNetworks
from .source import autocast_for


@torch.no_grad()
def warp_decode(
    nets: LivePortraitNetworks, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor, fp16: bool = False
) -> dict[str, torch.Tensor]:
    """f_s: 1×C×D×64×64, x_s: 1×21×3 (one source for every frame), or B× each (a source per
    frame: several sessions in one batch); x_d: B×21×3 -> W's outputs plus 'image' B×3×512×512 in (0, 1)."""
    b = x_d.shape[0]
    feature = f_s.expand(b, *f_s.shape[1:])
    kp_source = x_s.expand(b, *x_s.shape[1:]).to(nets.dtype)
    with autocast_for(nets, fp16):
        warped = nets.warping(feature, kp_driving=x_d.to(nets.dtype), kp_source=kp_source)
        warped["image"] = nets.generator(warped["out"])
    return warped


def stack_sources(volumes: list[torch.Tensor], keypoints: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The source of each frame of a W+G batch (volumes 1×C×D×64×64, keypoints 1×21×3, one per
    frame) as warp_decode takes them: frames of one source share it (1×, expanded as a view, no
    copy); frames of several sessions stack theirs (B×)."""
    shared = all(volume is volumes[0] for volume in volumes)
    if shared:
        return volumes[0], keypoints[0]
    return torch.cat(volumes), torch.cat(keypoints)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """B×3×H×W float in [0, 1] -> B×H×W×3 uint8, clipped then truncated (not rounded), as upstream."""
    x = images.float().permute(0, 2, 3, 1).cpu().numpy()
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)
