"""What a session renders with: one interface for local, remote and gated backends."""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from models.base import Controls

from ..transports.encode import EncodedFrames, FrameFormat


class Backend(Protocol):
    """What a session calls to render: a local pipeline or a Ray backend deployment."""

    mode: str

    async def start(self, persona_id: str, controls: Controls) -> Any: ...
    # Frames: N×H×W×3 uint8, or (a remote backend, given a format) already EncodedFrames.
    async def render(self, persona_id: str, carry: Any, audio16k: np.ndarray, controls: Controls,
                     fmt: FrameFormat | None = None) -> tuple[np.ndarray | EncodedFrames, Any]: ...
    async def flush(self, persona_id: str, carry: Any, controls: Controls,
                    fmt: FrameFormat | None = None) -> tuple[np.ndarray | EncodedFrames, Any]: ...
    async def idle(self, persona_id: str, carry: Any, n: int, controls: Controls,
                   fmt: FrameFormat | None = None) -> tuple[np.ndarray | EncodedFrames, Any]: ...
    async def interrupt(self, persona_id: str, carry: Any, controls: Controls) -> Any: ...
