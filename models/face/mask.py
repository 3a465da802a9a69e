"""Feathered paste-back masks, generated instead of read from a file.

A mask is 1 inside an axis-aligned inner rectangle of the crop and falls off
linearly with the Euclidean distance to that rectangle, reaching 0 after
`ramp_px` pixels (so its corners are rounded).

Why generated: upstream LivePortrait reads `src/utils/resources/mask_template.png`
from its GitHub repo; that file is not among the Hugging Face weight files we
fetch. `liveportrait_mask_template()` reproduces it exactly (checked against
the copy stored in the oracle fixture: 0 of 786,432 values differ): a 16 px
ramp around the inner rectangle [16, 496] of a 512 crop, scaled to 0..255
and truncated to uint8. Ditto's `get_mask(512, 512, 0.9, 0.9)` is the same
shape with a 25 px ramp around [25, 486], kept as float (`ditto_mask()`).
"""
from __future__ import annotations

import numpy as np


def feathered_mask(size: int, inner_lo: int, inner_hi: int, ramp_px: float) -> np.ndarray:
    """size×size float64 mask in [0, 1]: 1 on pixels inner_lo..inner_hi (both axes),
    falling to 0 at ramp_px pixels' distance from that square."""
    coord = np.arange(size, dtype=np.float64)
    # Distance of each row / column index outside the inner range (0 inside).
    outside = np.maximum(np.maximum(inner_lo - coord, coord - inner_hi), 0)
    dist = np.hypot(outside[:, None], outside[None, :])  # size×size
    return np.clip(1 - dist / ramp_px, 0, 1)


def liveportrait_mask_template(size: int = 512) -> np.ndarray:
    """size×size×3 uint8: upstream LivePortrait's mask_template.png (exact at 512)."""
    margin = size // 32  # 16 px at 512
    mask = feathered_mask(size, margin, size - margin, margin)
    gray = (mask * 255).astype(np.uint8)  # truncation, as the stored PNG
    return np.repeat(gray[..., None], 3, axis=2)


def ditto_mask(size: int = 512, keep_ratio: float = 0.9) -> np.ndarray:
    """size×size float32: Ditto's get_mask(size, size, keep_ratio, keep_ratio)."""
    ramp = int(size * (1 - keep_ratio) / 2)  # 25 px at 512, 0.9
    return feathered_mask(size, ramp, size - 1 - ramp, ramp).astype(np.float32)
