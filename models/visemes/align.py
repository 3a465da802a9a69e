"""Forced alignment: where each phone of a known sentence lies in its audio.

When the client tells us the sentence being spoken, pocketsphinx's word alignment
(set_align_text) followed by its phone alignment (set_alignment) gives phone timings that
follow the sentence's real phones, better than free phone recognition. It needs every
word in the pronouncing dictionary and fails on long passages (measured: fine on a
sentence, failed on a 9.7 s paragraph); the caller then keeps the recognised phones.
"""
from __future__ import annotations

import logging
import re

import numpy as np
import pocketsphinx

from .pool import PhoneSpan, process_blocks, start_utterance

log = logging.getLogger(__name__)

# Letters, digits and apostrophes make words ("don't" is in CMUdict); anything else
# (punctuation, hyphens, dashes) separates them.
_NOT_WORD = re.compile(r"[^a-z0-9']+")


def dictionary_words(text: str) -> list[str]:
    """The sentence as the dictionary spells words: lower case, no punctuation."""
    text = text.lower().replace("\u2019", "'")  # typographic apostrophe, as TTS input often has
    words = (word.strip("'") for word in _NOT_WORD.split(text))
    return [word for word in words if word]


def align_phones(decoder: pocketsphinx.Decoder, pcm: np.ndarray, text: str) -> list[PhoneSpan] | None:
    """Phone spans of `text` in `pcm` (int16, shape [n], 16 kHz), or None if it cannot be aligned.

    Leaves the decoder with no utterance open and its all-phone search active again.
    """
    words = dictionary_words(text)
    unknown = [word for word in words if decoder.lookup_word(word) is None]
    if not words or unknown:
        log.info("visemes: no forced alignment (words not in the dictionary: %s); using recognised phones",
                 unknown or "none given")
        return None
    try:
        return _two_pass_alignment(decoder, pcm, " ".join(words))
    except RuntimeError as error:  # pocketsphinx found no path through the whole sentence
        log.info("visemes: forced alignment failed (%s); using recognised phones", error)
        return None
    finally:
        decoder.activate_search()  # back to the all-phone search made with the decoder


def _two_pass_alignment(decoder: pocketsphinx.Decoder, pcm: np.ndarray, sentence: str) -> list[PhoneSpan]:
    """Word alignment, then phone alignment within those words (pocketsphinx's two passes)."""
    decoder.set_align_text(sentence)  # raises RuntimeError if the text cannot be set up
    _decode(decoder, pcm)
    decoder.set_alignment()  # raises RuntimeError if the first pass did not reach the end
    _decode(decoder, pcm)
    alignment = decoder.get_alignment()
    _check_every_word_aligned(sentence.split(), [word.name for word in alignment.words()])
    spans = [PhoneSpan(phone.name, phone.start, phone.start + phone.duration) for phone in alignment.phones()]
    if not spans:
        raise RuntimeError("empty alignment")
    return spans


def _check_every_word_aligned(expected: list[str], aligned: list[str]) -> None:
    """pocketsphinx may end a sentence's path early and drop its last words (seen on espeak-ng
    speech: "… of the lips" aligned without "lips"); such an alignment is wrong, not short."""
    found = [re.sub(r"\(\d+\)$", "", name) for name in aligned if not name.startswith(("<", "["))]
    if found != expected:
        missing = expected[len(found):] if expected[:len(found)] == found else expected
        raise RuntimeError(f"the alignment left out words: {' '.join(missing)}")


def _decode(decoder: pocketsphinx.Decoder, pcm: np.ndarray) -> None:
    start_utterance(decoder)
    process_blocks(decoder, pcm)
    decoder.end_utt()
