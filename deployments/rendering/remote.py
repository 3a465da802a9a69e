"""A session's client of a backend deployment: handle calls, persona as multiplex id."""
from __future__ import annotations

from typing import Any

from ..ray_private import call, direct
from ..transports.encode import FrameFormat
from .interface import FRAME_CALLS, Backend, HeldCall

# Calls whose arguments and answer are small: over Serve's direct channel.
DIRECT_CALLS = frozenset({"interrupt"})


class RemoteBackend(Backend):
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

    def _route(self, method: str, persona_id: str, args: tuple):
        """The handle a call goes through: frames by their format, small calls direct,
        the rest (a carry or a clip's audio may be large) through the object store."""
        if method in FRAME_CALLS:
            return self._render_call(persona_id, args[-1])
        if method in DIRECT_CALLS:
            return direct(self.handle, multiplexed_model_id=persona_id)
        return self._for(persona_id)

    async def _forward(self, method: str, persona_id: str, *args: Any) -> Any:
        return await call(getattr(self._route(method, persona_id, args), method), *args)

    def hold(self, persona_id: str) -> HeldCall:
        """An open streaming call that keeps the deployment scaled up while the session lives."""
        return call(self._for(persona_id, True).hold)
