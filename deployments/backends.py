"""Backends: a thin shim over a models/ pipeline, local or as a Ray Serve deployment.

- `LocalBackend` runs a pipeline inside the session host (still mode: no GPU).
- `BackendDeployment` is the Serve deployment of a neural mode (one per mode,
  fractional num_gpus, min_replicas 0). It loads weights at construction,
  caches prepared personas with `@serve.multiplexed`, and is stateless per
  call: a session's state travels in each call as `carry`. Its options are
  the pipeline's keyword options, plus `cuda_memory_fraction` (this process's
  cap on the GPU, DESIGN section 1), which the deployment applies itself.
- `RemoteBackend` is what a session holds to call that deployment.

Render calls (`render`, `flush`, `idle`) take an optional `FrameFormat`: a remote
backend then JPEG-encodes its frames before they cross Ray, and the session
publishes them as they come. A local backend returns raw frames whatever the
format: the session encodes them itself, with its encoder's cache of the last
frame (still mode shows one portrait over and over).
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

import numpy as np
from ray import serve

from models.base import SAMPLES_PER_FRAME, Controls, Persona, plan_clip
from models.modes import build_pipeline

from .calls import call, direct
from .encode import EncodedFrames, FrameFormat
from .personas import PersonaStore

log = logging.getLogger("ray.serve")
# Deployment options that are not the pipeline's: the deployment applies them.
MEMORY_FRACTION_OPTION = "cuda_memory_fraction"


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


class BackendDeployment:
    """Serve deployment body for one neural mode; see module docstring."""

    def __init__(self, mode: str, persona_dir: str, options: dict | None = None, chunk_frames: int | None = None):
        self.mode = mode
        # A render call may carry several chunks (Session batches them when well ahead):
        # the pipeline still gets one chunk a call, so its batch size and memory peak
        # are those of chunk_frames. None: the call's audio in one piece.
        self.chunk_frames = chunk_frames
        options = dict(options or {})
        fraction = options.pop(MEMORY_FRACTION_OPTION, None)
        # Before any weight is loaded; None when not asked or without CUDA.
        self.memory_fraction = cap_cuda_memory(float(fraction)) if fraction is not None else None
        self.pipeline = build_pipeline(mode, **options)
        self.store = PersonaStore(persona_dir)

    @serve.multiplexed(max_num_models_per_replica=4)
    async def get_persona(self, persona_id: str) -> Persona:
        media = await asyncio.to_thread(self.store.load_media, persona_id)
        persona = await asyncio.to_thread(self.pipeline.prepare, media, persona_id)
        for warning in persona_warnings(persona):
            log.warning("%s persona %s: %s (%s)", self.mode, persona_id, warning["message"], warning["code"])
        return persona

    async def _persona(self) -> Persona:
        return await self.get_persona(serve.get_multiplexed_model_id())

    async def warnings(self) -> list[dict]:
        """What preparing the persona (multiplexed model id) found worth telling its user:
        [{"code", "message"}], e.g. several faces, the largest used."""
        return persona_warnings(await self._persona())

    async def hold(self):
        """A live session's keep-alive: one call held open per session.

        Serve's autoscaler samples ongoing requests; short render calls often read as
        none, and a backend that sessions use would be scaled to zero under them. Held
        calls make it count sessions instead (target_ongoing_requests sessions a replica).
        """
        yield "held"
        await asyncio.Event().wait()  # until the session cancels the call

    async def start(self, controls: Controls) -> Any:
        return await asyncio.to_thread(self.pipeline.start, await self._persona(), controls)

    async def render(self, carry: Any, audio16k: np.ndarray, controls: Controls, fmt: FrameFormat | None = None):
        """(frames: N×H×W×3 uint8, or EncodedFrames in `fmt`; carry)."""
        persona = await self._persona()
        return await asyncio.to_thread(self._rendered, fmt, self._render_chunks, persona, carry, audio16k, controls)

    def _render_chunks(self, persona: Persona, carry: Any, audio16k: np.ndarray, controls: Controls):
        """pipeline.render over the call's audio (samples,), one chunk_frames chunk at a time."""
        if self.chunk_frames is None:
            return self.pipeline.render(persona, carry, audio16k, controls)
        step, batches = self.chunk_frames * SAMPLES_PER_FRAME, []
        for start in range(0, max(1, len(audio16k)), step):
            frames, carry = self.pipeline.render(persona, carry, audio16k[start:start + step], controls)
            batches.append(frames)
        drawn = [frames for frames in batches if len(frames)] or batches[:1]  # a lookahead may hold all of a chunk
        return (np.concatenate(drawn) if len(drawn) > 1 else drawn[0]), carry

    async def flush(self, carry: Any, controls: Controls, fmt: FrameFormat | None = None):
        persona = await self._persona()
        return await asyncio.to_thread(self._rendered, fmt, self.pipeline.flush, persona, carry, controls)

    async def idle(self, carry: Any, n: int, controls: Controls, fmt: FrameFormat | None = None):
        persona = await self._persona()
        return await asyncio.to_thread(self._rendered, fmt, self.pipeline.idle, persona, carry, n, controls)

    @staticmethod
    def _rendered(fmt: FrameFormat | None, step, *args) -> tuple[np.ndarray | EncodedFrames, Any]:
        """A render call's result: the frames, encoded in `fmt` if given, and the carry."""
        frames, carry = step(*args)
        return (frames if fmt is None else EncodedFrames.of(frames, fmt)), carry

    async def interrupt(self, carry: Any, controls: Controls) -> Any:
        """The carry with what the lookahead held dropped (no frames: nothing is drawn)."""
        return await asyncio.to_thread(self.pipeline.interrupt, await self._persona(), carry, controls)

    async def plan(self, carry: Any, audio16k: np.ndarray, controls: Controls) -> Any:
        """A one-shot render's whole clip, for pipelines that plan it (models.base.plan_clip)."""
        return await asyncio.to_thread(plan_clip, self.pipeline, await self._persona(), carry, audio16k, controls)


def persona_warnings(persona: Persona) -> list[dict]:
    """A prepared persona's warnings ([{"code", "message"}]; pipelines put them in features["warnings"])."""
    return list(persona.features.get("warnings", []))


def cap_cuda_memory(fraction: float) -> float | None:
    """Cap this process's CUDA allocations at `fraction` of the device (DESIGN section 1).

    Ray Serve does not enforce fractional num_gpus; this makes torch raise out-of-memory in
    this replica rather than let it take memory that the VramController gave to others.
    Returns the fraction applied, or None without CUDA (nothing to cap).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"{MEMORY_FRACTION_OPTION} must be in (0, 1], got {fraction}")
    import torch

    if not torch.cuda.is_available():
        return None
    torch.cuda.set_per_process_memory_fraction(fraction, torch.cuda.current_device())
    return fraction


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
