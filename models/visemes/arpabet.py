"""Which mouth shape each speech sound makes: ARPAbet phones to the Oculus visemes.

pocketsphinx's en-US acoustic model speaks in ARPAbet (39 phones, plus SIL and two
noise "phones"); TalkingHead animates the 15 Oculus visemes. Several phones share a
mouth shape, so the table is many-to-one, and most of the recogniser's phone
confusions (S/Z, T/D, IY/IH) vanish once mapped.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# The Oculus (Meta) viseme set, in its documented order; TalkingHead's morph targets are
# named viseme_<id>.
OCULUS_VISEMES = ("sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "I", "O", "U")

SILENCE = "sil"

ARPABET_TO_VISEME: dict[str, str] = {
    # Not speech: the mouth rests. +SPN+ (spoken noise) and +NSN+ (noise) are the model's
    # filler phones; a mumble drawn as a closed mouth looks better than a guessed shape.
    "SIL": "sil", "+SPN+": "sil", "+NSN+": "sil",
    # Lips pressed together.
    "P": "PP", "B": "PP", "M": "PP",
    # Lower lip against the upper teeth.
    "F": "FF", "V": "FF",
    # Tongue between the teeth.
    "TH": "TH", "DH": "TH",
    # Tongue tip on the ridge behind the teeth.
    "T": "DD", "D": "DD",
    # Back of the tongue raised; NG is made at the same place as K and G.
    "K": "kk", "G": "kk", "NG": "kk",
    # Rounded, pushed-out lips of the postalveolars.
    "CH": "CH", "JH": "CH", "SH": "CH", "ZH": "CH",
    # Teeth nearly closed, lips spread.
    "S": "SS", "Z": "SS",
    # Tongue tip up, jaw half open.
    "N": "nn", "L": "nn",
    # R and the r-coloured vowel of "bird".
    "R": "RR", "ER": "RR",
    # Open vowels, and the diphthongs that start open ("cow", "buy").
    "AA": "aa", "AE": "aa", "AH": "aa", "AW": "aa", "AY": "aa",
    # HH has no shape of its own (it takes the next vowel's); a half-open mouth is the
    # least wrong single choice.
    "HH": "aa",
    "EH": "E", "EY": "E",
    # Spread lips; Y is a very short IY.
    "IH": "I", "IY": "I", "Y": "I",
    "AO": "O", "OW": "O", "OY": "O",
    # Rounded lips; W is a very short UW.
    "UH": "U", "UW": "U", "W": "U",
}


def viseme_of(phone: str) -> str:
    """The viseme of one phone as pocketsphinx names it; unknown names rest the mouth."""
    viseme = ARPABET_TO_VISEME.get(phone.upper())
    if viseme is None:
        log.warning("visemes: phone %r has no viseme; drawn as silence", phone)
        return SILENCE
    return viseme
