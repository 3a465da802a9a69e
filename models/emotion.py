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

SUPPORTS_EMOTION = {"still": False, "musetalk": False, "liveportrait": True, "ditto": True, "pattern": False,
                    "avatar3d": True, "photoreal": True}

# avatar3d: TalkingHead's moods have these names. Where no mood fits, the avatar keeps a
# neutral mood and plays an expression animation (an emoji TalkingHead knows) between
# utterances: those animations move the mouth, so never during speech.
TALKINGHEAD_MOODS = ("neutral", "happy", "sad", "angry", "fear", "disgust")
EXPRESSIONS = {
    "surprised": ("😳", "😱"),  # (mild, strong)
    "surprise": ("😳", "😱"),
    "thinking": ("🤔", "🤔"),
    "contempt": ("😏", "😏"),
}
STRONG_EXPRESSION = 0.75  # from this intensity on, the strong expression


def talkinghead_mood(emotion: str, intensity: float) -> tuple[str, str | None]:
    """(mood, expression emoji or None) that show `emotion` on a TalkingHead avatar; the
    page scales the mood by intensity."""
    if emotion in TALKINGHEAD_MOODS:
        return emotion, None
    mild, strong = EXPRESSIONS.get(emotion, (None, None))
    return "neutral", strong if intensity >= STRONG_EXPRESSION else mild


def normalize_emotion(tag: str) -> str:
    """Lower-case a tag and fold synonyms; ValueError names the vocabulary."""
    t = tag.strip().lower()
    t = ALIASES.get(t, t)
    if t not in EMOTIONS:
        raise ValueError(f"unknown emotion {tag!r}; expected one of {', '.join(EMOTIONS)}")
    return t


def supports_emotion(mode: str) -> bool:
    return SUPPORTS_EMOTION.get(mode, False)
