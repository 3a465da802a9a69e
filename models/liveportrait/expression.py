"""Semantic expression controls on LivePortrait's 21 implicit keypoints, and emotion presets.

LivePortrait describes a face by 21 canonical 3-D keypoints `kp`, a head pose
and an expression offset `exp` (21×3) on top of them:
x = scale·(kp @ R + exp) + t. An expression control adds a fixed, sparse offset
to `exp` (so it follows the head when it turns) and a head control adds degrees
to the pose. Which keypoints carry which part of the face is known for the
official weights from public expression editors built on them; the offsets
below are our own starting values, in canonical units (the face spans about 1),
small enough that the warp stays clean. Axes: 0 = x (image right), 1 = y (image
down), 2 = z (depth).

| control      | keypoints moved (index: axes)                            | +1 means                 |
|--------------|----------------------------------------------------------|--------------------------|
| smile        | 3: y, 7: y, 13: y, 14: y, 16: y, 17: y z, 20: y          | mouth corners up, cheeks up, lower lids up |
| brow         | 1: y, 2: y                                               | brows raised (−1: lowered, a frown) |
| brow_squeeze | 1: x, 2: x                                               | brows pulled together    |
| eye_open     | 11: y, 13: y, 15: y, 16: y                               | eyes wider (−1: squint)  |
| mouth_open   | 19: y z, 17: y                                           | jaw dropped, lips apart ('aa') |
| mouth_wide   | 14: y, 20: y z                                           | lips stretched sideways ('ee') |
| mouth_round  | 3: y, 7: y, 14: y, 17: z                                 | lips rounded, pushed out ('oo') |
| head_pitch/yaw/roll_deg | all 21 (through the rotation R)               | degrees added to the source pose |
| gaze x, y (`gaze_offsets`) | 11: x y, 15: x y, 13: y, 16: y             | eyes to the viewer's right / up (±1: their full turn) |

Emotion presets (one per tag of models.base.EMOTIONS) are points in this
control space, scaled by intensity; `approach` moves the current point toward
a new preset a little every frame so emotions blend instead of jumping.
"""
from __future__ import annotations

import math
from dataclasses import astuple, dataclass, fields

import numpy as np

NUM_KP = 21


@dataclass(frozen=True)
class Expression:
    """A point in control space; each face control roughly in [−1, 1], head controls in degrees."""

    smile: float = 0.0
    brow: float = 0.0
    brow_squeeze: float = 0.0
    eye_open: float = 0.0
    mouth_open: float = 0.0
    mouth_wide: float = 0.0
    mouth_round: float = 0.0
    head_pitch_deg: float = 0.0
    head_yaw_deg: float = 0.0
    head_roll_deg: float = 0.0

    def to_vector(self) -> np.ndarray:
        """(10,) float64 in field order: what the carry stores."""
        return np.array(astuple(self), np.float64)

    @classmethod
    def from_vector(cls, v: np.ndarray) -> Expression:
        return cls(*(float(x) for x in v))


CONTROL_NAMES = tuple(f.name for f in fields(Expression))
FACE_CONTROLS = CONTROL_NAMES[:7]
HEAD_CONTROLS = CONTROL_NAMES[7:]

# control -> [(keypoint, axis, offset at +1)], offsets in canonical units.
_BASIS: dict[str, list[tuple[int, int, float]]] = {
    "smile": [(20, 1, -0.012), (14, 1, -0.016), (17, 1, 0.006), (17, 2, 0.004),
              (13, 1, -0.003), (16, 1, -0.003), (3, 1, -0.004), (7, 1, -0.004)],
    "brow": [(1, 1, -0.012), (2, 1, -0.012)],
    "brow_squeeze": [(1, 0, 0.006), (2, 0, -0.006)],
    "eye_open": [(11, 1, -0.008), (15, 1, -0.008), (13, 1, 0.003), (16, 1, 0.003)],
    "mouth_open": [(19, 1, 0.03), (19, 2, 0.004), (17, 1, 0.004)],
    "mouth_wide": [(20, 1, -0.006), (20, 2, -0.004), (14, 1, -0.006)],
    "mouth_round": [(14, 1, 0.008), (3, 1, -0.004), (7, 1, -0.004), (17, 2, -0.006)],
}


# Gaze, (x, y) at +1: the eyeball keypoints 11 and 15 move across (x) and up (y); the lower
# lids (13, 16) follow a look up a little, as real lids do. Public LivePortrait editors move
# the same keypoints for eyeball direction; the sizes are ours (about 15° across, 10° up,
# at +1, judged on the official weights' crops: more tears the eye region).
_GAZE_BASIS: dict[str, list[tuple[int, int, float]]] = {
    "x": [(11, 0, 0.024), (15, 0, 0.024)],
    "y": [(11, 1, -0.02), (15, 1, -0.02), (13, 1, -0.004), (16, 1, -0.004)],
}


def gaze_offsets(gaze: np.ndarray) -> np.ndarray:
    """N×2 gaze points (x right, y up, in [-1, 1]) -> N×21×3 float32 exp offsets."""
    basis2 = np.zeros((2, NUM_KP, 3), np.float32)
    for row, axis_name in enumerate(("x", "y")):
        for kp, axis, offset in _GAZE_BASIS[axis_name]:
            basis2[row, kp, axis] = offset
    return np.einsum("nc,ckd->nkd", np.asarray(gaze, np.float32), basis2)


def pose_offsets_deg(controls) -> np.ndarray:
    """A `pose` control (models.base.Controls: yaw to the viewer's right, pitch down, roll with
    the top of the head to the viewer's right) -> (3,) [pitch, yaw, roll] in LivePortrait's
    angles, which Ditto shares.

    LivePortrait turns row keypoints by (Rz·Ry·Rx)ᵀ with x to the image's right, y down and
    z away from the camera (a face's front has z < 0). A positive pitch swings the front down
    and a positive roll swings the top to the right, as our controls mean; a positive yaw
    swings the front to the image's left, so yaw changes sign.
    """
    return np.array([controls.head_pitch_deg, -controls.head_yaw_deg, controls.head_roll_deg])


def control_keypoints(name: str) -> list[int]:
    """The keypoint indices a face control moves (for documentation and tests)."""
    return sorted({k for k, _, _ in _BASIS[name]})


def basis() -> np.ndarray:
    """7×21×3 float32: the exp offset of each face control at +1, in FACE_CONTROLS order."""
    out = np.zeros((len(FACE_CONTROLS), NUM_KP, 3), np.float32)
    for c, name in enumerate(FACE_CONTROLS):
        for kp, axis, offset in _BASIS[name]:
            out[c, kp, axis] = offset
    return out


def expression_offsets(vectors: np.ndarray) -> np.ndarray:
    """N×10 control vectors -> N×21×3 float32 exp offsets (head controls ignored here)."""
    weights = vectors[:, : len(FACE_CONTROLS)].astype(np.float32)  # N×7
    return np.einsum("nc,ckd->nkd", weights, basis())


def head_offsets_deg(vectors: np.ndarray) -> np.ndarray:
    """N×10 control vectors -> N×3 [pitch, yaw, roll] degrees."""
    return vectors[:, len(FACE_CONTROLS):]


# Emotion presets at intensity 1. "surprise" is Ditto's name for "surprised".
PRESETS: dict[str, Expression] = {
    "neutral": Expression(),
    "happy": Expression(smile=1.0, eye_open=-0.25, brow=0.15, head_pitch_deg=-1.0),
    "sad": Expression(smile=-0.6, brow=0.35, brow_squeeze=0.6, eye_open=-0.3, head_pitch_deg=5.0),
    "angry": Expression(brow=-1.0, brow_squeeze=0.8, smile=-0.4, eye_open=0.2, mouth_wide=0.2),
    "surprised": Expression(brow=1.0, eye_open=0.8, mouth_open=0.5, mouth_round=0.3, head_pitch_deg=-2.0),
    "surprise": Expression(brow=1.0, eye_open=0.8, mouth_open=0.5, mouth_round=0.3, head_pitch_deg=-2.0),
    "thinking": Expression(brow=0.3, brow_squeeze=0.3, eye_open=-0.2, mouth_round=0.2,
                           head_pitch_deg=-3.0, head_yaw_deg=8.0, head_roll_deg=3.0),
    "disgust": Expression(smile=-0.5, brow=-0.5, brow_squeeze=0.5, mouth_wide=0.4, eye_open=-0.3),
    "fear": Expression(brow=0.8, brow_squeeze=0.7, eye_open=1.0, mouth_wide=0.5, head_pitch_deg=3.0),
    "contempt": Expression(smile=0.3, eye_open=-0.2, head_yaw_deg=-6.0, head_roll_deg=4.0, head_pitch_deg=-2.0),
}


def preset(emotion: str, intensity: float = 1.0) -> Expression:
    """The preset of an emotion tag scaled by intensity in [0, 1]."""
    return Expression.from_vector(PRESETS[emotion].to_vector() * intensity)


def approach(current: np.ndarray, target: np.ndarray, n_frames: int, fps: float, time_constant_s: float) -> np.ndarray:
    """n_frames×10 control vectors easing from `current` toward `target` (first-order lag).

    Returns frame-by-frame vectors; the last row is the carry's new current vector.
    """
    keep = math.exp(-1.0 / (fps * time_constant_s))  # share of the gap left after one frame
    steps = keep ** np.arange(1, n_frames + 1)[:, None]  # n×1
    return target + (current - target) * steps
