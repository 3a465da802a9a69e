"""Paste-back of generated faces into full frames, with upstream's (PIL) semantics.

Per face box (x1, y1, x2, y2) (v1.5 box, margin included):
  crop box  = square of side 2·int(max(w, h) // 2 · 1.5) around the box centre;
              parts outside the frame read as zeros (PIL crop) and are clipped on paste;
  mask      = parser mask of the crop box, resized to it (PIL default resample),
              kept inside the face box only, upper half of the crop box zeroed,
              Gaussian-blurred (kernel 0.1·side realtime / 0.05·side offline);
  paste     = frame·(255 − m) + face·m, divided by 255 the way PIL rounds.

The mask depends only on the reference frame, so `prepare_mask` runs once per
persona frame and `blend` once per rendered frame.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

Box = tuple[int, int, int, int]


def crop_box(face_box: Box, expand: float = 1.5) -> Box:
    """Square box around the face box, side 2·int(max(w, h) // 2 · expand)."""
    x1, y1, x2, y2 = face_box
    xc, yc = (x1 + x2) // 2, (y1 + y2) // 2
    s = int(max(x2 - x1, y2 - y1) // 2 * expand)
    return xc - s, yc - s, xc + s, yc + s


def crop_padded(image: np.ndarray, box: Box) -> np.ndarray:
    """image H×W(×C) -> the box's pixels, zeros where the box leaves the image (PIL crop)."""
    x1, y1, x2, y2 = box
    out = np.zeros((y2 - y1, x2 - x1, *image.shape[2:]), image.dtype)
    h, w = image.shape[:2]
    ax, ay, bx, by = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if bx > ax and by > ay:
        out[ay - y1 : by - y1, ax - x1 : bx - x1] = image[ay:by, ax:bx]
    return out


def div255(a: np.ndarray) -> np.ndarray:
    """PIL's rounded division by 255 of a uint16/int product."""
    a = a + 128
    return (a + (a >> 8)) >> 8


def paste_masked(frame: np.ndarray, patch: np.ndarray, top_left: tuple[int, int], mask: np.ndarray) -> np.ndarray:
    """PIL `paste(patch, top_left, mask)`: per channel frame·(255−m) + patch·m over 255, clipped to the frame."""
    out = frame.copy()
    x0, y0 = top_left
    h, w = frame.shape[:2]
    ax, ay = max(x0, 0), max(y0, 0)
    bx, by = min(x0 + patch.shape[1], w), min(y0 + patch.shape[0], h)
    if bx <= ax or by <= ay:
        return out
    src = patch[ay - y0 : by - y0, ax - x0 : bx - x0].astype(np.int32)
    m = mask[ay - y0 : by - y0, ax - x0 : bx - x0].astype(np.int32)[..., None]
    dst = frame[ay:by, ax:bx].astype(np.int32)
    out[ay:by, ax:bx] = div255(dst * (255 - m) + src * m).astype(np.uint8)
    return out


def blur_kernel(side: int, fraction: float) -> int:
    """Odd Gaussian kernel: int(fraction·side // 2 · 2) + 1, as upstream."""
    return int(fraction * side // 2 * 2) + 1


def prepare_mask(
    frame_bgr: np.ndarray,
    face_box: Box,
    parse: Callable,
    mode: str = "jaw",
    blur_fraction: float = 0.1,
    upper_boundary_ratio: float = 0.5,
    expand: float = 1.5,
) -> tuple[np.ndarray, Box]:
    """Blurred uint8 blending mask (side×side) and its crop box, for one reference frame.

    parse: PIL RGB image, mode -> PIL 'L' mask (e.g. a FaceParser).
    blur_fraction: 0.1 for the realtime path (our default), 0.05 for upstream's offline script.
    """
    import cv2
    from PIL import Image

    box = crop_box(face_box, expand)
    large = Image.fromarray(np.ascontiguousarray(crop_padded(frame_bgr, box)[..., ::-1]))
    parsed = np.asarray(parse(large, mode).resize(large.size))  # PIL default resample, as upstream
    side_w, side_h = large.size
    x1, y1, x2, y2 = face_box
    fx1, fy1, fx2, fy2 = x1 - box[0], y1 - box[1], x2 - box[0], y2 - box[1]
    mask = np.zeros((side_h, side_w), np.uint8)
    # Keep the parser's mask inside the face box only (clipped like a PIL paste).
    mask[max(fy1, 0) : fy2, max(fx1, 0) : fx2] = parsed[max(fy1, 0) : fy2, max(fx1, 0) : fx2]
    mask[: int(side_h * upper_boundary_ratio)] = 0  # the generated upper face is never used
    k = blur_kernel(side_w, blur_fraction)
    return cv2.GaussianBlur(mask, (k, k), 0), box


def resize_face(face_bgr_256: np.ndarray, face_box: Box) -> np.ndarray:
    """256×256 generated face -> face box size (cv2 INTER_LINEAR, as upstream)."""
    import cv2

    x1, y1, x2, y2 = face_box
    return cv2.resize(face_bgr_256, (x2 - x1, y2 - y1))


def blend(frame_bgr: np.ndarray, face_bgr: np.ndarray, face_box: Box, mask: np.ndarray, box: Box) -> np.ndarray:
    """Paste a face (already resized to the face box) into the frame through the mask."""
    large = crop_padded(frame_bgr, box)
    x1, y1, x2, y2 = face_box
    fx, fy = x1 - box[0], y1 - box[1]
    large[fy : fy + (y2 - y1), fx : fx + (x2 - x1)] = face_bgr
    return paste_masked(frame_bgr, large, (box[0], box[1]), mask)
