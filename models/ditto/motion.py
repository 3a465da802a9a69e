"""Motion post-processing: LMDM motion vectors -> LivePortrait keypoints.

Motion layout (265 = LMDM space, 328 with the canonical keypoints):
    scale 1 | pitch 66 | yaw 66 | roll 66 | t 3 | exp 63 [| kp 63]
Angles are 66-bin logits (softmax expectation * 3 - 97.5 gives degrees).
In LMDM space column 0 holds scale - 1; an "info" dict holds scale itself.
"""
from __future__ import annotations

import numpy as np
from scipy.special import softmax

# (key, width) in vector order
LAYOUT = (("scale", 1), ("pitch", 66), ("yaw", 66), ("roll", 66), ("t", 3), ("exp", 63), ("kp", 63))
MOTION_DIM = 265  # everything but kp

Info = dict  # key -> (1, width) float32 array


def info_to_vec(info: Info, ignore: tuple[str, ...] = ("kp",)) -> np.ndarray:
    """Info dict -> flat vector in LAYOUT order (scale stored as scale - 1)."""
    parts = []
    for key, width in LAYOUT:
        if key in info and key not in ignore:
            v = np.asarray(info[key]).reshape(width)
            parts.append(v - 1 if key == "scale" else v)
    return np.concatenate(parts, -1)


def vec_to_info(vec: np.ndarray) -> Info:
    """Flat vector (>= 265 entries, scale - 1 first) -> info dict of (1, width) arrays."""
    assert vec.shape[0] >= MOTION_DIM, vec.shape
    out, start = {}, 0
    for key, width in LAYOUT:
        if start >= len(vec):
            break
        v = vec[start : start + width].reshape(1, width)
        out[key] = v + 1 if key == "scale" else v
        start += width
    return out


def bin66_to_degree(logits: np.ndarray) -> np.ndarray:
    """(B, 66) bin logits -> (B,) degrees; anything else is taken as degrees already."""
    if logits.ndim > 1 and logits.shape[1] == 66:
        p = softmax(logits, axis=1)
        return np.sum(p * np.arange(66, dtype=np.float32), axis=1) * 3 - 97.5
    return logits
