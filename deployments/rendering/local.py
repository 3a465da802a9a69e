"""Backends run in this process: a pipeline called in a worker thread, or inline."""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from functools import partial
from typing import Any

from models.base import Persona, plan_clip

from ..inputs.personas import PersonaStore
from .interface import FRAME_CALLS, Backend

# Prepared personas a local backend keeps (a session host's still mode serves all of its sessions').
DEFAULT_MAX_PERSONAS = 16


class PersonaCache:
    """Prepared personas for one pipeline, least recently used evicted first."""

    def __init__(self, pipeline, store: PersonaStore, capacity: int = DEFAULT_MAX_PERSONAS):
        self.pipeline, self.store, self.capacity = pipeline, store, capacity
        self._items: OrderedDict[str, Persona] = OrderedDict()

    async def get(self, persona_id: str) -> Persona:
        if persona_id in self._items:
            self._items.move_to_end(persona_id)
            return self._items[persona_id]
        media = await asyncio.to_thread(self.store.load_media, persona_id)
        persona = await asyncio.to_thread(self.pipeline.prepare, media, persona_id)
        self._items[persona_id] = persona
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return persona


class LocalBackend(Backend):
    """A pipeline called in this process: in a worker thread, or inline when it is trivially cheap."""

    def __init__(self, pipeline, store: PersonaStore, inline: bool = False,
                 max_personas: int = DEFAULT_MAX_PERSONAS):
        self.mode = pipeline.mode
        self.pipeline = pipeline
        self.personas = PersonaCache(pipeline, store, max_personas)
        # Still mode returns views of the portrait: a thread hop would cost more than the call.
        self._run = _run_inline if inline else asyncio.to_thread

    async def _forward(self, method: str, persona_id: str, *args: Any) -> Any:
        """The pipeline's method of that name on the prepared persona; `plan` through
        models.base.plan_clip (pipelines that do not plan render the clip at once)."""
        persona = await self.personas.get(persona_id)
        if method == "warnings":
            return persona_warnings(persona)
        if method in FRAME_CALLS:
            args = args[:-1]  # the FrameFormat: the session encodes a local backend's frames itself
        step = partial(plan_clip, self.pipeline) if method == "plan" else getattr(self.pipeline, method)
        return await self._run(step, persona, *args)


async def _run_inline(fn, *args):
    return fn(*args)


def persona_warnings(persona: Persona) -> list[dict]:
    """A prepared persona's warnings ([{"code", "message"}]; pipelines put them in features["warnings"])."""
    return list(persona.features.get("warnings", []))
