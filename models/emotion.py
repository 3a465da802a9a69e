"""Emotion tags from the LLM and how each mode hears them.

The session vocabulary is models.base.EMOTIONS. Each backend maps a tag and
an intensity to its own controls: LivePortrait to expression deltas
(models/liveportrait/expression.py), Ditto to its 8-class emotion vector
(models/ditto/emotion.py). MuseTalk and still mode have no emotion control
and say so through `supports_emotion`.
"""
from __future__ import annotations

from .base import EMOTIONS

# Tag synonyms an LLM is likely to emit, folded onto the vocabulary.
ALIASES = {
    "joy": "happy", "joyful": "happy", "glad": "happy", "smile": "happy",
    "sadness": "sad", "unhappy": "sad",
    "anger": "angry", "mad": "angry",
    "surprise": "surprise", "shocked": "surprised", "amazed": "surprised",
    "think": "thinking", "pondering": "thinking", "curious": "thinking",
    "disgusted": "disgust", "afraid": "fear", "scared": "fear", "fearful": "fear",
    "calm": "neutral", "none": "neutral",
}

SUPPORTS_EMOTION = {"still": False, "musetalk": False, "liveportrait": True, "ditto": True, "pattern": False}


def normalize_emotion(tag: str) -> str:
    """Lower-case a tag and fold synonyms; ValueError names the vocabulary."""
    t = tag.strip().lower()
    t = ALIASES.get(t, t)
    if t not in EMOTIONS:
        raise ValueError(f"unknown emotion {tag!r}; expected one of {', '.join(EMOTIONS)}")
    return t


def supports_emotion(mode: str) -> bool:
    return SUPPORTS_EMOTION.get(mode, False)
