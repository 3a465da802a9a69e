"""Backends run in this process: a pipeline called in a worker thread, or inline."""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from models.base import Controls, Persona, plan_clip

from ..inputs.personas import PersonaStore
from ..transports.encode import FrameFormat


class PersonaCache:
    """Prepared personas for one pipeline, least recently used evicted first."""

    def __init__(self, pipeline, store: PersonaStore, capacity: int = 16):
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


class LocalBackend:
    """A pipeline called in this process: in a worker thread, or inline when it is trivially cheap."""

    def __init__(self, pipeline, store: PersonaStore, inline: bool = False):
        self.mode = pipeline.mode
        self.pipeline = pipeline
        self.personas = PersonaCache(pipeline, store)
        # Still mode returns views of the portrait: a thread hop would cost more than the call.
        self._run = _run_inline if inline else asyncio.to_thread

    async def start(self, persona_id: str, controls: Controls) -> Any:
        persona = await self.personas.get(persona_id)
        return await self._run(self.pipeline.start, persona, controls)

    async def render(self, persona_id, carry, audio16k, controls, fmt: FrameFormat | None = None):
        persona = await self.personas.get(persona_id)
        return await self._run(self.pipeline.render, persona, carry, audio16k, controls)

    async def flush(self, persona_id, carry, controls, fmt: FrameFormat | None = None):
        persona = await self.personas.get(persona_id)
        return await self._run(self.pipeline.flush, persona, carry, controls)

    async def idle(self, persona_id, carry, n, controls, fmt: FrameFormat | None = None):
        persona = await self.personas.get(persona_id)
        return await self._run(self.pipeline.idle, persona, carry, n, controls)

    async def interrupt(self, persona_id, carry, controls):
        persona = await self.personas.get(persona_id)
        return await self._run(self.pipeline.interrupt, persona, carry, controls)

    async def plan(self, persona_id, carry, audio16k, controls):
        persona = await self.personas.get(persona_id)
        return await self._run(plan_clip, self.pipeline, persona, carry, audio16k, controls)

    async def warnings(self, persona_id: str) -> list[dict]:
        return persona_warnings(await self.personas.get(persona_id))


async def _run_inline(fn, *args):
    return fn(*args)


def persona_warnings(persona: Persona) -> list[dict]:
    """A prepared persona's warnings ([{"code", "message"}]; pipelines put them in features["warnings"])."""
    return list(persona.features.get("warnings", []))
