"""Still mode: the persona's portrait, unanimated; the audio passes through.

No GPU, always available: the last rung of the degrade ladder and what a
session shows while its neural backend loads.
"""
from __future__ import annotations

import numpy as np

from .base import Controls, Persona, PersonaMedia, check_audio_chunk


class StillPipeline:
    mode = "still"
    lookahead_frames = 0

    def prepare(self, media: PersonaMedia, persona_id: str = "") -> Persona:
        return Persona(persona_id=persona_id, media=media)

    def start(self, persona: Persona, controls: Controls) -> None:
        return None

    def render(self, persona: Persona, carry, audio16k: np.ndarray, controls: Controls):
        return self._portrait_frames(persona, check_audio_chunk(audio16k)), carry

    def flush(self, persona: Persona, carry, controls: Controls):
        return self._portrait_frames(persona, 0), carry

    def interrupt(self, persona: Persona, carry, controls: Controls):
        return carry  # nothing held

    def idle(self, persona: Persona, carry, n: int, controls: Controls):
        return self._portrait_frames(persona, n), carry

    @staticmethod
    def _portrait_frames(persona: Persona, n: int) -> np.ndarray:
        # n×H×W×3 uint8; a broadcast view, so n frames cost one portrait of memory.
        return np.broadcast_to(persona.portrait, (n, *persona.portrait.shape))
