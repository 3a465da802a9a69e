"""What a session renders with: one interface for local, remote and gated backends.

Every call is written once, here: it forwards `(method, persona_id, *args)` to the
backend's `_forward`, so a backend says only how a call reaches its pipeline, and a
new call is added in this file alone.
"""
from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any, Protocol

import numpy as np

from models.base import Controls

from ..transports.encode import EncodedFrames, FrameFormat

# Calls whose last argument is the FrameFormat: they return frames, N×H×W×3 uint8, or
# (a remote backend, given a format) EncodedFrames already.
FRAME_CALLS = frozenset({"render", "flush", "idle"})


class HeldCall(Protocol):
    """An open call that keeps a backend up while a session may use it: iterated until it
    ends (the replica went away), cancelled when the session leaves the backend."""

    def __aiter__(self) -> AsyncIterator[Any]: ...
    def cancel(self) -> None: ...


class Backend(ABC):
    """What a session calls to render: a local pipeline, a Ray backend deployment, or one
    under the VRAM controller's lease. Subclasses implement `_forward` only."""

    mode: str

    async def start(self, persona_id: str, controls: Controls) -> Any:
        """A new stream's carry."""
        return await self._forward("start", persona_id, controls)

    async def render(self, persona_id: str, carry: Any, audio16k: np.ndarray, controls: Controls,
                     fmt: FrameFormat | None = None) -> tuple[np.ndarray | EncodedFrames, Any]:
        """Frames for audio16k (samples,) and the carry after them."""
        return await self._forward("render", persona_id, carry, audio16k, controls, fmt)

    async def flush(self, persona_id: str, carry: Any, controls: Controls,
                    fmt: FrameFormat | None = None) -> tuple[np.ndarray | EncodedFrames, Any]:
        """The frames a lookahead still holds at the end of an utterance."""
        return await self._forward("flush", persona_id, carry, controls, fmt)

    async def idle(self, persona_id: str, carry: Any, n: int, controls: Controls,
                   fmt: FrameFormat | None = None) -> tuple[np.ndarray | EncodedFrames, Any]:
        """n frames without speech."""
        return await self._forward("idle", persona_id, carry, n, controls, fmt)

    async def interrupt(self, persona_id: str, carry: Any, controls: Controls) -> Any:
        """The carry with what the lookahead held dropped (nothing is drawn)."""
        return await self._forward("interrupt", persona_id, carry, controls)

    async def plan(self, persona_id: str, carry: Any, audio16k: np.ndarray, controls: Controls) -> Any:
        """A one-shot render's whole clip, for pipelines that plan it (models.base.plan_clip)."""
        return await self._forward("plan", persona_id, carry, audio16k, controls)

    async def warnings(self, persona_id: str) -> list[dict]:
        """What preparing the persona found worth telling its user: [{"code", "message"}]."""
        return await self._forward("warnings", persona_id)

    def hold(self, persona_id: str) -> HeldCall:
        """A call held open while the session may use this backend. Only a deployment that
        Serve scales on its load needs one (RemoteBackend); here there is nothing to keep
        up, so the hold just waits to be cancelled."""
        return IdleHold()

    @abstractmethod
    async def _forward(self, method: str, persona_id: str, *args: Any) -> Any:
        """Run call `method` of the persona `persona_id` with `args` (those of the method above)."""


class IdleHold:
    """A held call with nothing behind it: yields nothing, ends once cancelled."""

    def __init__(self):
        self._cancelled = asyncio.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    def __aiter__(self) -> IdleHold:
        return self

    async def __anext__(self) -> Any:
        await self._cancelled.wait()
        raise StopAsyncIteration
