"""Server-side lip sync for the avatar3d mode: Oculus viseme cues from any TTS's raw PCM.

`VisemeTracker` turns a speaking session's 16 kHz audio into `Cue`s as it streams
(pocketsphinx phone recognition, or forced alignment when the sentence is known);
`DecoderPool` keeps the pocketsphinx decoders it needs warm.
"""
from .arpabet import ARPABET_TO_VISEME, OCULUS_VISEMES, viseme_of
from .pool import DecoderPool
from .tracker import Cue, VisemeTracker, cues_from_phones

__all__ = ["ARPABET_TO_VISEME", "OCULUS_VISEMES", "Cue", "DecoderPool", "VisemeTracker", "cues_from_phones",
           "viseme_of"]
