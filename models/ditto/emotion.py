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

CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise", "contempt")
NEUTRAL = CLASSES.index("neutral")
LOGIT = 8.0  # the reference's logit for a chosen class


def class_vector(idx: int | Iterable[int]) -> np.ndarray:
    """(8,) float32: the reference's vector for one class index or a list of them."""
    logits = np.zeros(8, dtype=np.float32)
    logits[list(idx) if isinstance(idx, Iterable) else idx] = LOGIT
    return softmax(logits).astype(np.float32)
