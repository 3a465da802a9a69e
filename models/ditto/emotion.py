"""Ditto's emotion control: the eight classes, mixtures and intensity.

LMDM is conditioned on an 8-d emotion vector per frame. The reference builds it
from class indices as softmax of 8 at the chosen classes and 0 elsewhere
(`_get_emo_avg`): one class gives 0.9977 on it; k classes share it evenly.
Class order, as in the reference's `condition_handler.py`:
    0 angry, 1 disgust, 2 fear, 3 happy, 4 neutral, 5 sad, 6 surprise, 7 contempt
The reference default is 4 (neutral).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy.special import softmax

from ..liveportrait.expression import pose_offsets_deg

CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise", "contempt")
NEUTRAL = CLASSES.index("neutral")
LOGIT = 8.0  # the reference's logit for a chosen class


def class_vector(idx: int | Iterable[int]) -> np.ndarray:
    """(8,) float32: the reference's vector for one class index or a list of them."""
    logits = np.zeros(8, dtype=np.float32)
    logits[list(idx) if isinstance(idx, Iterable) else idx] = LOGIT
    return softmax(logits).astype(np.float32)


# Session tags (models.base.EMOTIONS) -> weights over Ditto's classes. Tags that are
# Ditto classes map to themselves; "surprised" is "surprise". "thinking" has no Ditto
# class: we use a neutral-dominant mix with a little sad and contempt (a slightly
# lowered, inward look); this is our choice, not the reference's.
TAG_MIX: dict[str, dict[str, float]] = {
    **{c: {c: 1.0} for c in CLASSES},
    "surprised": {"surprise": 1.0},
    "thinking": {"neutral": 0.8, "sad": 0.1, "contempt": 0.1},
}


def mix_vector(weights: dict[str, float]) -> np.ndarray:
    """(8,) convex mix of the reference's one-class vectors."""
    total = sum(weights.values())
    vec = sum(w / total * class_vector(CLASSES.index(c)) for c, w in weights.items())
    return np.asarray(vec, np.float32)


def emotion_vector(tag: str, intensity: float = 1.0) -> np.ndarray:
    """Session tag + intensity in [0, 1] -> (8,) LMDM emotion condition.

    Intensity blends from the neutral vector (0) to the tag's vector (1), so 1 gives
    exactly the reference's vector for a single class and every value stays a
    probability vector like those LMDM was trained on.
    """
    if tag not in TAG_MIX:
        raise ValueError(f"unknown emotion tag {tag!r}; expected one of {', '.join(TAG_MIX)}")
    if not 0.0 <= intensity <= 1.0:
        raise ValueError(f"intensity must be in [0, 1], got {intensity}")
    target, neutral = mix_vector(TAG_MIX[tag]), class_vector(NEUTRAL)
    return (intensity * target + (1 - intensity) * neutral).astype(np.float32)


def pose_controls(pitch_deg: float = 0.0, yaw_deg: float = 0.0, roll_deg: float = 0.0) -> dict:
    """Head pose offsets in degrees -> MotionStitch control kwargs (only non-zero ones,
    because a delta turns the key from bin logits into degrees)."""
    out = {"delta_pitch": pitch_deg, "delta_yaw": yaw_deg, "delta_roll": roll_deg}
    return {k: v for k, v in out.items() if v}


def controls_to_ditto(controls) -> tuple[np.ndarray, dict]:
    """models.base.Controls -> (emotion vector (8,), MotionStitch control kwargs)."""
    pose = pose_controls(*pose_offsets_deg(controls))
    return emotion_vector(controls.emotion, controls.intensity), pose
