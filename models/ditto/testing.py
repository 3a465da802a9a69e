"""File-free stand-ins for a tiny, seeded ditto pipeline (CPU tests, graph tests, benchmarks).

`DittoPipeline(config="tiny", seed=s)` uses these instead of the official
files: tiny LMDM and renderer widths with seeded random weights, a HuBERT
stand-in with HuBERT's frame geometry, and a face "analyser" that puts
face-shaped landmarks in the middle of any image. The rest of the code path
(streaming, stitching, warping, paste-back) is the real one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .audio import CHUNK_SAMPLES, FEAT_DIM

HUBERT_WINDOW = 400  # samples per HuBERT frame (25 ms)
HUBERT_HOP = 320  # 20 ms
HUBERT_ROWS = (CHUNK_SAMPLES - HUBERT_WINDOW) // HUBERT_HOP + 1  # 20 rows per 6480-sample chunk


class SeededHubert:
    """(6480,) float32 -> (20, 1024): a fixed random projection of each 400-sample window.

    Same geometry as the streaming HuBERT ONNX, so the framing code is exercised as
    in production; values are O(1) for speech-level input (std ~0.1-0.3).
    """

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng([seed, 0xD177])
        self.proj = (rng.standard_normal((HUBERT_WINDOW, FEAT_DIM)) * 0.25).astype(np.float32)

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        idx = np.arange(HUBERT_ROWS)[:, None] * HUBERT_HOP + np.arange(HUBERT_WINDOW)[None]
        return np.asarray(chunk, np.float32)[idx] @ self.proj  # 20 x 1024


@dataclass
class StandInFace:
    """What the pipeline reads from models.face.analysis.AnalysedFace."""

    points106: np.ndarray  # 106 x 2
    points203: np.ndarray  # 203 x 2
    warnings: list = field(default_factory=list)


def _ellipse(n: int, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return centre + np.stack([np.cos(a), np.sin(a)], -1) * radii


def upright_face_points(h: int, w: int, n: int) -> np.ndarray:
    """n (106 or 203) landmarks of an upright face filling the middle of an h x w image:
    the contour on an ellipse, the eye and lip anchors that the crop reads in place."""
    centre, radii = np.array([w / 2, h / 2]), np.array([w * 0.22, h * 0.28])
    pts = _ellipse(n, centre, radii)
    anchors = {
        106: ([33, 35, 40, 39], [87, 89, 94, 93], [52, 61]),
        203: ([0, 6, 12, 18], [24, 30, 36, 42], [48, 66]),
    }[n]
    left, right, lips = anchors
    pts[left] = _ellipse(4, np.array([w * 0.41, h * 0.44]), np.array([w * 0.04, h * 0.02]))
    pts[right] = _ellipse(4, np.array([w * 0.59, h * 0.44]), np.array([w * 0.04, h * 0.02]))
    pts[lips] = [[w * 0.5, h * 0.62], [w * 0.5, h * 0.66]]
    return pts.astype(np.float32)


class CentredFace:
    """Face analyser stand-in: one upright face in the middle of every image."""

    def analyse(self, image: np.ndarray) -> StandInFace:
        h, w = image.shape[:2]
        return StandInFace(upright_face_points(h, w, 106), upright_face_points(h, w, 203))


def face_like_portrait(side: int = 128, seed: int = 0) -> np.ndarray:
    """side x side x 3 uint8 RGB: a skin-toned oval with dark eyes and mouth on a grey
    background, plus a little noise; where CentredFace puts its landmarks."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    img = np.full((side, side, 3), 90.0)
    face = ((xx - 0.5) / 0.22) ** 2 + ((yy - 0.5) / 0.28) ** 2 < 1
    img[face] = (205, 160, 130)
    for cx in (0.41, 0.59):
        img[((xx - cx) / 0.04) ** 2 + ((yy - 0.44) / 0.02) ** 2 < 1] = (40, 30, 30)
    img[(np.abs(xx - 0.5) < 0.07) & (np.abs(yy - 0.64) < 0.015)] = (150, 60, 60)
    img += np.random.default_rng(seed).normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
