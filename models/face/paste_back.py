"""Paste an animated crop back into the full portrait, at the portrait's own resolution.

The crop→original map `M_c2o` of the source crop places the rendered crop; a
feathered mask (see `mask.py`), warped once per persona with the same map,
blends it over the untouched portrait so no seam shows at the crop's border.
Matches LivePortrait's `prepare_paste_back` / `paste_back` (and Ditto's
`PutBackNumpy`): float blend, clip to [0, 255], then a truncating uint8 cast.
"""
from __future__ import annotations

import numpy as np

from .crop import warp


def warp_mask(mask_crop: np.ndarray, M_c2o: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Mask in crop pixels -> mask in portrait pixels, float32 in [0, 1].

    mask_crop: S×S[×3] uint8 (0..255) or float in [0, 1]; returns H×W[×3] float32.
    Done once per persona: the mask does not change between frames.
    """
    h, w = size_hw
    warped = warp(mask_crop, M_c2o, (w, h))
    if mask_crop.dtype == np.uint8:
        return warped.astype(np.float32) / 255.0
    return warped.astype(np.float32)


def mask_box(mask: np.ndarray) -> tuple[slice, slice]:
    """The rows and columns where the portrait-space mask is non-zero (computed once per persona).

    Outside it the blend gives the portrait back exactly (mask 0), so blending only inside
    is bit-identical and much cheaper for a large portrait with a small face.
    """
    alpha = mask if mask.ndim == 2 else mask.max(axis=2)
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    if not len(rows):
        return slice(0, 0), slice(0, 0)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def paste_back(
    crop: np.ndarray, M_c2o: np.ndarray, portrait: np.ndarray, mask: np.ndarray,
    box: tuple[slice, slice] | None = None,
) -> np.ndarray:
    """Blend one rendered crop into the portrait.

    crop: S×S×3 uint8 (LivePortrait's network output) or float32 in 0..255 (Ditto's); portrait: H×W×3 uint8;
    mask: H×W×3 (or H×W) float32 in [0, 1] from `warp_mask`; box: `mask_box(mask)`
    to blend only where the mask is non-zero (same bytes, less work). Returns H×W×3 uint8.
    """
    h, w = portrait.shape[:2]
    placed = warp(crop, M_c2o, (w, h))  # H×W×3 uint8, black outside the crop
    if mask.ndim == 2:
        mask = mask[..., None]
    if box is None:
        box = (slice(0, h), slice(0, w))
    m, p, img = mask[box], placed[box], portrait[box]
    blended = m * p + (1 - m) * img  # float32 (uint8 promotes to the mask's type)
    out = portrait.copy()
    out[box] = np.clip(blended, 0, 255).astype(np.uint8)  # truncation, not rounding: as the reference
    return out
