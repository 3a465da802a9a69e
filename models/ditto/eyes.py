"""Eye openness and eyeball offset from MediaPipe's 478 face-mesh points: LMDM's eye condition.

Ditto conditions its motion model on the source portrait's eyes: per eye an openness
(2 values) and the eyeball's offset from the eye's centre (3-D per eye, 6 values),
computed from MediaPipe's face mesh with iris refinement (478 points; 468 and 473 are
the iris centres). The rules, per eye, with o/i its outer and inner corner:

- width  = |o - i|
- open   = (sum of three lid gaps: lower point to upper point) / width
- centre = (o + i) / 2
- move   = (unit(ball - centre) - unit(o - i)) * |ball - centre|

`eye_attributes` returns (open (n, 2) as [left, right], ball_move (n, 6) as
[Lx, Rx, Ly, Ry, Lz, Rz]: the per-eye (n, 3, 2) stack flattened), matching
`image_geometry.npz` in the oracle. Every division adds 1e-8, as upstream.
"""
from __future__ import annotations

import numpy as np

N_POINTS = 478
EPS = 1e-8
# (outer corner, inner corner) and three (lower lid, upper lid) pairs, outer to inner.
LEFT_CORNERS, RIGHT_CORNERS = (33, 133), (263, 362)
LEFT_LID_PAIRS = ((145, 159), (144, 160), (153, 158))
RIGHT_LID_PAIRS = ((374, 386), (373, 387), (380, 385))
LEFT_IRIS, RIGHT_IRIS = 468, 473


def _norm(v: np.ndarray) -> np.ndarray:
    return np.sqrt((v**2).sum(-1))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (_norm(v)[..., None] + EPS)


def _one_eye(points: np.ndarray, corners, lid_pairs, iris: int) -> tuple[np.ndarray, np.ndarray]:
    """points: (n, 478, D) -> openness (n,), ball move (n, D)."""
    outer, inner = points[:, corners[0]], points[:, corners[1]]
    width = _norm(outer - inner)
    gaps = sum(_norm(points[:, lower] - points[:, upper]) for lower, upper in lid_pairs)
    openness = gaps / (width + EPS)
    from_centre = points[:, iris] - (outer + inner) * 0.5
    move = (_unit(from_centre) - _unit(outer - inner)) * _norm(from_centre)[:, None]
    return openness, move


def eye_attributes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """points: (n, 478, 3) or (478, 3) face-mesh points (any consistent unit)
    -> open (n, 2) float32, ball_move (n, 6) float32."""
    points = np.asarray(points, np.float32)
    if points.ndim == 2:
        points = points[None]
    if points.ndim != 3 or points.shape[1] != N_POINTS:
        raise ValueError(f"expected (n, {N_POINTS}, D) face-mesh points, got {points.shape}")
    left_open, left_move = _one_eye(points, LEFT_CORNERS, LEFT_LID_PAIRS, LEFT_IRIS)
    right_open, right_move = _one_eye(points, RIGHT_CORNERS, RIGHT_LID_PAIRS, RIGHT_IRIS)
    openness = np.stack([left_open, right_open], -1)  # (n, 2)
    move = np.stack([left_move, right_move], -1).reshape(len(points), -1)  # (n, D, 2) -> (n, 2D)
    return openness.astype(np.float32), move.astype(np.float32)
