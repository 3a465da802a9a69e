"""A session's client of a backend deployment: handle calls, persona as multiplex id."""
from __future__ import annotations

from typing import Any

from models.base import Controls

from ..ray_private import call, direct
from ..transports.encode import FrameFormat


class RemoteBackend:
    """A session's client of a backend deployment: handle calls, persona as multiplex id."""

    def __init__(self, mode: str, handle):
        self.mode = mode
        self.handle = handle

    def _for(self, persona_id: str, stream: bool = False):
        return self.handle.options(multiplexed_model_id=persona_id, stream=stream)

    def _render_call(self, persona_id: str, fmt: FrameFormat | None):
        """Frames come back as JPEGs alone: small, so over the direct channel. Raw frames
        (a one-shot render's, or a WebRTC viewer's) are large: through Ray's object store.
        Unary calls: a streaming call of one item costs ~0.5 ms of CPU more, caller and
        replica together (benchmarks/handle_calls.py)."""
        if fmt is None or fmt.raw:
            return self._for(persona_id)
        return direct(self.handle, multiplexed_model_id=persona_id)

    async def start(self, persona_id: str, controls: Controls) -> Any:
        return await call(self._for(persona_id).start, controls)

    def hold(self, persona_id: str):
        """An open streaming call that keeps the deployment scaled up while the session lives."""
        return call(self._for(persona_id, True).hold)

    async def render(self, persona_id, carry, audio16k, controls, fmt: FrameFormat | None = None):
        return await call(self._render_call(persona_id, fmt).render, carry, audio16k, controls, fmt)

    async def flush(self, persona_id, carry, controls, fmt: FrameFormat | None = None):
        return await call(self._render_call(persona_id, fmt).flush, carry, controls, fmt)

    async def idle(self, persona_id, carry, n, controls, fmt: FrameFormat | None = None):
        return await call(self._render_call(persona_id, fmt).idle, carry, n, controls, fmt)

    async def interrupt(self, persona_id, carry, controls):
        return await call(direct(self.handle, multiplexed_model_id=persona_id).interrupt, carry, controls)

    async def plan(self, persona_id, carry, audio16k, controls):
        return await call(self._for(persona_id).plan, carry, audio16k, controls)

    async def warnings(self, persona_id: str) -> list[dict]:
        """The persona's preparation warnings ([{"code", "message"}]) from the backend."""
        return await call(self._for(persona_id).warnings)
