"""Emotion tags in an LLM's text: `[happy]`, `[sad:0.4]`.

An agent's LLM writes its emotion inline, as a tag in square brackets before the words it
colours: a tag name, and optionally `:` and an intensity from 0 to 1 (default 1).

    "[happy] Glad you asked! [thinking:0.6] Let me see..."

`EmotionTagParser` takes the text as it streams (an LLM sends it a few characters at a
time, so a tag may be split across chunks) and returns it as pieces in order: text, and
`EmotionTag`s where the tags stood. Only names in `emotions` count as tags (a `[1]` or `[sic]` stays in the text); a
bracket left open for more than `max_tag_chars` is text too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# The server's emotion tags and common synonyms it folds in (docs/api.md#emotions).
EMOTIONS = frozenset({
    "neutral", "happy", "sad", "angry", "surprised", "thinking",
    "disgust", "fear", "surprise", "contempt",
    "joy", "joyful", "glad", "smile", "excited", "scared", "afraid", "mad", "upset", "calm", "curious",
})
_TAG = re.compile(r"\[\s*([A-Za-z_]+)\s*(?::\s*([0-9]*\.?[0-9]+)\s*)?\]")


@dataclass(frozen=True)
class EmotionTag:
    """One tag: the emotion's name (lower case) and its intensity (0 to 1)."""

    value: str
    intensity: float = 1.0


class EmotionTagParser:
    """Strips emotion tags from streamed text (`feed`), holding back an open `[` until its tag is whole."""

    def __init__(self, emotions: frozenset[str] | set[str] | None = None, max_tag_chars: int = 24):
        self.emotions = frozenset(e.lower() for e in (emotions if emotions is not None else EMOTIONS))
        self.max_tag_chars = max_tag_chars
        self._held = ""
        self._space_before = False  # the text given out so far ends with a space

    def feed(self, text: str) -> list[str | EmotionTag]:
        """The text so far as pieces in order: strings (never empty) and the tags between them.
        An unfinished tag at the end is held for the next call."""
        text = self._held + text
        self._held = ""
        pieces: list[str | EmotionTag] = []
        out: list[str] = []
        i = 0
        while i < len(text):
            start = text.find("[", i)
            if start < 0:
                out.append(text[i:])
                break
            out.append(text[i:start])
            end = text.find("]", start)
            if end < 0:
                if len(text) - start <= self.max_tag_chars:
                    self._held = text[start:]  # maybe a tag, split across chunks
                else:
                    out.append(text[start:])
                break
            match = _TAG.fullmatch(text, start, end + 1)
            if match and match.group(1).lower() in self.emotions:
                intensity = min(1.0, max(0.0, float(match.group(2)))) if match.group(2) else 1.0
                before = "".join(out)
                out = []
                if before:
                    pieces.append(before)
                pieces.append(EmotionTag(match.group(1).lower(), intensity))
                i = end + 1
                if (before.endswith(" ") or (not before and self._space_before)) and text[i:i + 1] == " ":
                    i += 1  # "a [happy] b" -> "a b", not "a  b"
            else:
                out.append("[")  # not a tag: the bracket is text
                i = start + 1
        if "".join(out):
            pieces.append("".join(out))
        texts = [p for p in pieces if isinstance(p, str)]
        if texts:
            self._space_before = texts[-1].endswith(" ")
        return pieces

    @staticmethod
    def text_of(pieces: list[str | EmotionTag]) -> str:
        """The text of `feed`'s pieces, without the tags."""
        return "".join(p for p in pieces if isinstance(p, str))

    def flush(self) -> str:
        """The end of the text (a response ended): what was held is text after all."""
        held, self._held = self._held, ""
        return held
