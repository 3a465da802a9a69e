"""Face crops from landmarks: the similarity transform, the crop, the 256 network input.

Geometry of LivePortrait's `src/utils/crop.py` (and Ditto's copy of it), which
the oracle fixture `fixture_crop_pasteback` checks bit for bit:

1. Two anchor points from the landmarks: the midpoint of the eye centres and
   the centre of the mouth (`anchor_points`).
2. A rotated square around the landmarks (`face_rect`): its y axis runs from
   the eyes to the mouth, its side is the larger extent of the landmarks in that
   frame times `scale`, shifted by `vy_ratio` of the side along y.
3. The original→crop similarity `M_o2c` that maps that square onto
   `dsize×dsize`, and the image warped with it (`crop_image`).

All arithmetic stays in float32 like the reference: cv2 resamples on a 1/32
pixel grid, so a matrix off in its last bits can move a pixel by one level.
Matrices are 3×3 homogeneous, mapping row-vector points `p @ M[:2,:2].T + M[:2,2]`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

F32 = np.float32


@dataclass(frozen=True)
class CropParams:
    """How much of the head a crop holds, in units of the landmark extent.

    scale: side of the square / the landmarks' larger extent (bigger = smaller face).
    vy_ratio: shift of the square along the eye→mouth axis, in sides (negative = up).
    rotate: undo the head roll (the square follows the eye→mouth axis).
    """

    dsize: int = 512
    scale: float = 2.3
    vy_ratio: float = -0.125
    rotate: bool = True


# The defaults of upstream's CropConfig (source crop) and of its landmark runner.
SOURCE_CROP = CropParams(dsize=512, scale=2.3, vy_ratio=-0.125, rotate=True)
LANDMARK_RUNNER_CROP = CropParams(dsize=224, scale=1.5, vy_ratio=-0.1, rotate=True)


@dataclass(frozen=True)
class FaceRect:
    """A rotated square in image pixels: centre (2,), size (2,) (square), angle in radians."""

    center: np.ndarray
    size: np.ndarray
    angle_rad: float


@dataclass
class Crop:
    """A crop and the transforms between it and the original image.

    image: dsize×dsize×3 uint8; points: the landmarks in crop pixels (N×2 float32);
    M_o2c / M_c2o: 3×3 float32, original→crop and crop→original.
    """

    image: np.ndarray
    points: np.ndarray
    M_o2c: np.ndarray
    M_c2o: np.ndarray


# Landmark indices of the eye contours and the lip centre in the two layouts
# LivePortrait uses (InsightFace 106 points, LivePortrait's own 203 points).
_ANCHORS = {
    106: {"left_eye": [33, 35, 40, 39], "right_eye": [87, 89, 94, 93], "lips": [52, 61]},
    203: {"left_eye": [0, 6, 12, 18], "right_eye": [24, 30, 36, 42], "lips": [48, 66]},
}


def anchor_points(points: np.ndarray) -> np.ndarray:
    """points: N×2 (N = 106 or 203) -> 2×2 [eye midpoint, mouth centre]."""
    idx = _ANCHORS.get(len(points))
    if idx is None:
        raise ValueError(f"expected 106 or 203 landmarks, got {len(points)}")
    left_eye = points[idx["left_eye"]].mean(axis=0)
    right_eye = points[idx["right_eye"]].mean(axis=0)
    eyes = (left_eye + right_eye) / 2
    lips = (points[idx["lips"][0]] + points[idx["lips"][1]]) / 2
    return np.stack([eyes, lips]).astype(F32)


def face_rect(points: np.ndarray, scale: float, vy_ratio: float = 0.0) -> FaceRect:
    """The rotated square that a crop maps to its output (step 2 of the module doc).

    points: N×2 float32 landmarks in image pixels.
    """
    points = np.asarray(points, F32)
    eyes, lips = anchor_points(points)
    uy = lips - eyes  # (2,) the face's down direction
    length = np.linalg.norm(uy)
    uy = uy / length if length > 1e-3 else np.array([0, 1], F32)
    ux = np.array([uy[1], -uy[0]], F32)  # the face's right direction, perpendicular
    # Angle of the face's x axis in image coordinates (clockwise positive).
    angle = math.acos(ux[0]) if ux[1] >= 0 else -math.acos(ux[0])

    # Extent of the landmarks in the face frame, around their mean.
    mean = points.mean(axis=0)
    local = (points - mean) @ np.stack([ux, uy]).T  # N×2 in (ux, uy) coordinates
    lo, hi = local.min(axis=0), local.max(axis=0)
    mid = (lo + hi) / 2
    side = np.full(2, max((hi - lo)[0], (hi - lo)[1]), F32) * F32(scale)

    center = mean + ux * mid[0] + uy * mid[1]
    # Upstream also adds `ux * vx_ratio * size`, but never passes a vx_ratio: omitted.
    center = center + uy * (F32(vy_ratio) * side)
    return FaceRect(center=center.astype(F32), size=side, angle_rad=angle)


def similarity_o2c(center: np.ndarray, side: float, dsize: int, angle_rad: float | None) -> np.ndarray:
    """3×3 float32 original→crop map: `center` to the crop's centre, `side` px to `dsize` px,
    rotated by -angle so the face stands upright (no rotation when angle is None)."""
    s = dsize / side  # float32 where side is float32, as in the reference
    cos, sin = (1.0, 0.0) if angle_rad is None else (math.cos(angle_rad), math.sin(angle_rad))
    cx, cy = center[0], center[1]
    half = dsize / 2
    top = [s * cos, s * sin, half - s * (cos * cx + sin * cy)]
    bottom = [-s * sin, s * cos, half - s * (-sin * cx + cos * cy)]
    return np.array([top, bottom, [0, 0, 1]], F32)


def warp(image: np.ndarray, M: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """image warped by the 3×3 (or 2×3) M into size_wh: bilinear, black outside."""
    return cv2.warpAffine(
        image, M[:2], size_wh, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)
    )


def transform_points(points: np.ndarray, M: np.ndarray) -> np.ndarray:
    """points: N×2 -> N×2 through the affine part of M."""
    return points @ M[:2, :2].T + M[:2, 2]


def crop_image(image: np.ndarray, points: np.ndarray, params: CropParams = SOURCE_CROP) -> Crop:
    """Crop `image` (H×W×3 uint8) around `points` (N×2, 106 or 203 layout)."""
    rect = face_rect(points, params.scale, params.vy_ratio)
    M_o2c = similarity_o2c(rect.center, rect.size[0], params.dsize, rect.angle_rad if params.rotate else None)
    return Crop(
        image=warp(image, M_o2c, (params.dsize, params.dsize)),
        points=transform_points(np.asarray(points, F32), M_o2c),
        M_o2c=M_o2c,
        M_c2o=np.linalg.inv(M_o2c),
    )


def network_input_256(crop_512: np.ndarray) -> np.ndarray:
    """512×512×3 uint8 source crop -> 256×256×3 uint8 (area averaging, as upstream)."""
    return cv2.resize(crop_512, (256, 256), interpolation=cv2.INTER_AREA)


# ---- driving-video style crop: an axis-aligned box, averaged over frames ----


def bbox_from_landmarks(points: np.ndarray, scale: float = 2.2, vy_ratio: float = -0.1) -> dict[str, np.ndarray]:
    """The face square of `face_rect` as corners.

    Returns 'box' 4×2 (the square before rotation: lt, rt, rb, lb), 'box_rotated' 4×2,
    and 'ltrb' (4,) = [left, top, right, bottom] of the unrotated square.
    """
    rect = face_rect(points, scale, vy_ratio)
    cx, cy = rect.center
    half_w, half_h = rect.size / 2
    box = np.array(
        [[cx - half_w, cy - half_h], [cx + half_w, cy - half_h], [cx + half_w, cy + half_h], [cx - half_w, cy + half_h]],
        F32,
    )
    cos, sin = math.cos(rect.angle_rad), math.sin(rect.angle_rad)
    rot = np.array([[cos, -sin], [sin, cos]], F32)
    box_rotated = (box - rect.center) @ rot.T + rect.center
    ltrb = np.array([box[0, 0], box[0, 1], box[2, 0], box[2, 1]], F32)
    return {"box": box, "box_rotated": box_rotated, "ltrb": ltrb}


def average_boxes(boxes: list[np.ndarray]) -> np.ndarray:
    """Mean [l, t, r, b] over frames: one steady crop for a whole driving clip."""
    return np.mean(np.array(boxes), axis=0)


def crop_by_box(image: np.ndarray, ltrb: np.ndarray, points: np.ndarray | None = None, dsize: int = 512) -> Crop:
    """Crop an axis-aligned square box [l, t, r, b] to dsize×dsize, no rotation."""
    # Python floats on purpose: the reference averages boxes into a list, so the
    # side and centre are formed in float64 before the matrix is cast to float32.
    left, top, right, bottom = (float(v) for v in ltrb)
    center = np.array([(left + right) / 2, (top + bottom) / 2], F32)
    M_o2c = similarity_o2c(center, right - left, dsize, None)
    crop_points = transform_points(np.asarray(points, F32), M_o2c) if points is not None else None
    return Crop(image=warp(image, M_o2c, (dsize, dsize)), points=crop_points, M_o2c=M_o2c, M_c2o=np.linalg.inv(M_o2c))


def resize_to_limit(image: np.ndarray, max_dim: int = 1280, division: int = 2) -> np.ndarray:
    """Shrink so the longer side is at most max_dim, then trim each side to a multiple of `division`."""
    h, w = image.shape[:2]
    if max_dim > 0 and max(h, w) > max_dim:
        if h > w:
            w, h = int(w * (max_dim / h)), max_dim
        else:
            w, h = max_dim, int(h * (max_dim / w))
        image = cv2.resize(image, (w, h))
    h, w = h - h % division, w - w % division
    return image[:h, :w]
