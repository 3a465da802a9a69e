"""Backend-<mode>: the Serve deployment of a neural mode, a thin shim over a models/ pipeline.

- `BackendDeployment` is the Serve deployment of a neural mode (one per mode,
  fractional num_gpus, min_replicas 0). It builds its pipeline at construction
  with the factory it is given (graph.py binds models.modes.build_pipeline; tests
  give their own), caches up to `max_personas` prepared personas with Serve's
  multiplexing, and is stateless per call: a session's state travels in each
  call as `carry`. Its options are the pipeline's keyword options, plus
  `cuda_memory_fraction` (this process's cap on the GPU, DESIGN section 1),
  which the deployment applies itself.
- `LeasedBackendDeployment` is the same under the VRAM controller: it loads only once
  the controller leases it the memory, and reports what it measured.

A session calls it through `rendering.remote.RemoteBackend` (or `rendering.gated`).

Render calls (`render`, `flush`, `idle`) take an optional `FrameFormat`: a remote
backend then JPEG-encodes its frames before they cross Ray, and the session
publishes them as they come. A local backend returns raw frames whatever the
format: the session encodes them itself, with its encoder's cache of the last
frame (still mode shows one portrait over and over).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from models.base import SAMPLES_PER_FRAME, Controls, Persona, plan_clip
from models.compiled import records_cuda_graphs

from .inputs.personas import PersonaStore
from .ray_private import call
from .rendering.batcher import RenderBatcher
from .rendering.local import persona_warnings
from .serving_metrics import replica_metrics
from .transports.encode import EncodedFrames, FrameFormat

log = logging.getLogger("ray.serve")
# Deployment options that are not the pipeline's: the deployment applies them.
MEMORY_FRACTION_OPTION = "cuda_memory_fraction"
# Prepared personas a replica keeps (BackendArgs.max_personas_per_replica's default).
DEFAULT_MAX_PERSONAS = 4
# (mode, **options) -> a models.base.Pipeline; models.modes.build_pipeline in the graph.
PipelineFactory = Callable[..., Any]


class BackendDeployment:
    """Serve deployment body for one neural mode; see module docstring."""

    def __init__(self, mode: str, persona_dir: str, options: dict | None = None, chunk_frames: int | None = None,
                 *, pipeline_factory: PipelineFactory, max_personas: int = DEFAULT_MAX_PERSONAS,
                 data_dir: str | None = None, batch_sessions: int = 1):
        """data_dir: where the provenance keys are, to mark frames with their session's tag
        (`FrameFormat.mark_tag`); None: provenance is off. batch_sessions: render calls of up
        to this many sessions that queue while one renders go to the pipeline together
        (rendering/batcher.py); 1: each call on its own."""
        self.mode = mode
        self.data_dir = data_dir
        self.metrics = replica_metrics()  # render time and frames per call
        self._provenance: Any = None  # made on the first marked frame: one marker (and its layout cache)
        self._markings: dict[int, Any] = {}
        # A render call may carry several chunks (Session batches them when well ahead):
        # the pipeline still gets one chunk a call, so its batch size and memory peak
        # are those of chunk_frames. None: the call's audio in one piece.
        self.chunk_frames = chunk_frames
        options = dict(options or {})
        fraction = options.pop(MEMORY_FRACTION_OPTION, None)
        # Before any weight is loaded; None when not asked or without CUDA.
        self.memory_fraction = cap_cuda_memory(float(fraction)) if fraction is not None else None
        self.pipeline = pipeline_factory(mode, **options)
        # Compiled networks that record CUDA graphs replay only in the thread that recorded
        # them (models/compiled.py): then the pipeline gets one thread of its own.
        self._pipeline_thread = (ThreadPoolExecutor(1, thread_name_prefix=f"{mode}-pipeline")
                                 if records_cuda_graphs(self.pipeline) else None)
        self.store = PersonaStore(persona_dir)
        self.max_personas = max_personas
        self.get_persona = multiplexed(self._prepare_persona, max_personas)
        self.batcher = (RenderBatcher(self._render_jobs, batch_sessions, in_thread=self._in_thread)
                        if batch_sessions > 1 else None)

    async def _in_thread(self, fn: Callable, *args) -> Any:
        """fn(*args) off the event loop: in a worker thread, or in the pipeline's own thread."""
        if self._pipeline_thread is None:
            return await asyncio.to_thread(fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self._pipeline_thread, partial(fn, *args))

    async def _prepare_persona(self, persona_id: str) -> Persona:
        """A persona (multiplex id) prepared for this pipeline; Serve's LRU keeps it (`get_persona`)."""
        media = await asyncio.to_thread(self.store.load_media, persona_id)
        persona = await self._in_thread(self.pipeline.prepare, media, persona_id)
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
        return await self._in_thread(self.pipeline.start, await self._persona(), controls)

    async def render(self, carry: Any, audio16k: np.ndarray, controls: Controls, fmt: FrameFormat | None = None):
        """(frames: N×H×W×3 uint8, or EncodedFrames in `fmt`, marked with fmt.mark_tag; carry)."""
        persona = await self._persona()
        if self.batcher is not None:
            return await self.batcher.submit(persona, carry, audio16k, controls, fmt)
        started = time.perf_counter()
        frames, carry = await self._in_thread(self._rendered, fmt, self._render_chunks, persona, carry, audio16k,
                                              controls)
        self.metrics.backend_render(self.mode, time.perf_counter() - started, len(frames))
        return frames, carry

    def _render_chunks(self, persona: Persona, carry: Any, audio16k: np.ndarray, controls: Controls):
        """pipeline.render over the call's audio (samples,), one chunk_frames chunk at a time."""
        batches = []
        for chunk in chunks_of(audio16k, self.chunk_frames):
            frames, carry = self.pipeline.render(persona, carry, chunk, controls)
            batches.append(frames)
        return joined(batches), carry

    def _render_jobs(self, jobs: list[tuple]) -> list[tuple[np.ndarray | EncodedFrames, Any]]:
        """Several sessions' render calls (persona, carry, audio16k, controls, fmt) at once (in
        the worker thread): chunk k of every call that has one goes to `render_batch` together.
        A pipeline without `render_batch` renders them one after the other."""
        started = time.perf_counter()
        render_batch = getattr(self.pipeline, "render_batch", None)
        if render_batch is None:
            results = [self._rendered(fmt, self._render_chunks, persona, carry, audio16k, controls)
                       for persona, carry, audio16k, controls, fmt in jobs]
        else:
            chunks = [chunks_of(audio16k, self.chunk_frames) for _, _, audio16k, _, _ in jobs]
            carries, drawn = [carry for _, carry, _, _, _ in jobs], [[] for _ in jobs]
            for k in range(max(len(c) for c in chunks)):
                now = [i for i in range(len(jobs)) if k < len(chunks[i])]
                outputs = render_batch([(jobs[i][0], carries[i], chunks[i][k], jobs[i][3]) for i in now])
                for i, (frames, carry) in zip(now, outputs):
                    drawn[i].append(frames)
                    carries[i] = carry
            results = [self._rendered(job[4], lambda frames, carry: (frames, carry), joined(frames), carry)
                       for job, frames, carry in zip(jobs, drawn, carries)]
        self.metrics.backend_render(self.mode, time.perf_counter() - started, sum(len(f) for f, _ in results),
                                    sessions=len(jobs))
        return results

    async def flush(self, carry: Any, controls: Controls, fmt: FrameFormat | None = None):
        persona = await self._persona()
        return await self._in_thread(self._rendered, fmt, self.pipeline.flush, persona, carry, controls)

    async def idle(self, carry: Any, n: int, controls: Controls, fmt: FrameFormat | None = None):
        persona = await self._persona()
        if self.batcher is not None and getattr(self.pipeline, "idle_is_silence", False):
            # Idle frames are most frames when many sessions wait for speech: batch them too.
            return await self.batcher.submit(persona, carry, np.zeros(n * SAMPLES_PER_FRAME, np.float32), controls,
                                             fmt)
        started = time.perf_counter()
        frames, carry = await self._in_thread(self._rendered, fmt, self.pipeline.idle, persona, carry, n, controls)
        self.metrics.backend_render(self.mode, time.perf_counter() - started, len(frames))
        return frames, carry

    def _rendered(self, fmt: FrameFormat | None, step, *args) -> tuple[np.ndarray | EncodedFrames, Any]:
        return rendered(fmt, step, *args, marking_for=self._marking)

    def _marking(self, tag: int):
        """The marking of one session's frames (a few kept: a replica serves a few sessions)."""
        from .transports.provenance import Provenance

        if tag not in self._markings:
            if self.data_dir is None:
                raise RuntimeError("frames asked to be marked, but this backend has no provenance keys")
            if self._provenance is None:
                self._provenance = Provenance(Path(self.data_dir))
            if len(self._markings) >= 64:
                self._markings.pop(next(iter(self._markings)))
            self._markings[tag] = self._provenance.marking(tag)
        return self._markings[tag]

    async def interrupt(self, carry: Any, controls: Controls) -> Any:
        """The carry with what the lookahead held dropped (no frames: nothing is drawn)."""
        return await self._in_thread(self.pipeline.interrupt, await self._persona(), carry, controls)

    async def plan(self, carry: Any, audio16k: np.ndarray, controls: Controls) -> Any:
        """A one-shot render's whole clip, for pipelines that plan it (models.base.plan_clip)."""
        return await self._in_thread(plan_clip, self.pipeline, await self._persona(), carry, audio16k, controls)


def multiplexed(load: Callable[[str], Any], capacity: int) -> Callable[[str], Any]:
    """`load(model_id)` behind Serve's multiplexing: an LRU of `capacity` models in this
    replica, whose ids the replica reports so that calls for one reach a replica holding it.

    Applied per instance, not as a method decorator: the decorator takes its capacity when
    it is applied, and the capacity is a deployment argument (max_personas_per_replica).
    Routing is as with a decorated method: the wrapper itself reports the ids it holds
    (Ray 2.60's build-time look for a decorated method, `uses_multiplexing`, decides nothing).
    """
    async def load_model(model_id: str) -> Any:
        return await load(model_id)

    return serve.multiplexed(max_num_models_per_replica=capacity)(load_model)


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


def measure_peak_bytes(pid: int) -> int | None:
    """What this backend holds on the GPU after loading: NVML's number for its PID
    (CUDA context + allocator + non-torch memory), else torch's reserved peak."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if p.pid == pid and p.usedGpuMemory:
                        return int(p.usedGpuMemory)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.max_memory_reserved())
    except ImportError:
        pass
    return None


def chunks_of(audio16k: np.ndarray, chunk_frames: int | None) -> list[np.ndarray]:
    """A call's audio (samples,) in pieces of chunk_frames frames (None: one piece); an empty
    call is one empty piece, so the pipeline still sees it."""
    if chunk_frames is None:
        return [audio16k]
    step = chunk_frames * SAMPLES_PER_FRAME
    return [audio16k[start:start + step] for start in range(0, max(1, len(audio16k)), step)]


def joined(batches: list[np.ndarray]) -> np.ndarray:
    """The frames of a call's chunks in one array (a lookahead may hold all of a chunk)."""
    drawn = [frames for frames in batches if len(frames)] or batches[:1]
    return np.concatenate(drawn) if len(drawn) > 1 else drawn[0]


def rendered(fmt: FrameFormat | None, step, *args, marking_for=None) -> tuple[np.ndarray | EncodedFrames, Any]:
    """A render call's result: the frames (marked with fmt.mark_tag by `marking_for(tag)`, and
    encoded, where `fmt` is given), and the carry."""
    frames, carry = step(*args)
    if fmt is None:
        return frames, carry
    if fmt.mark_tag is not None:
        frames = marking_for(fmt.mark_tag).apply(frames)
    return EncodedFrames.of(frames, fmt), carry


class LeasedBackendDeployment(BackendDeployment):
    """A backend replica that loads only under a lease from the VramController.

    Lease first (no GPU memory before it), cap this process at the lease on CUDA,
    load in a worker thread, then report the measured peak. On failure the report
    says why and the constructor raises (Serve retries or gives up).
    """

    async def __init__(self, mode: str, persona_dir: str, options: dict | None = None,
                       chunk_frames: int | None = None, *, pipeline_factory: PipelineFactory,
                       max_personas: int = DEFAULT_MAX_PERSONAS, vram: Any = None, data_dir: str | None = None,
                       batch_sessions: int = 1):
        self.vram_handle, self.pid = vram, os.getpid()
        lease = await call(vram.lease, mode, self.pid)
        if not lease.granted:
            raise RuntimeError(f"{mode}: {lease.reason}")
        self.lease = lease
        options = dict(options or {})
        if lease.memory_fraction() is not None:
            options.setdefault(MEMORY_FRACTION_OPTION, lease.memory_fraction())
        try:
            await asyncio.to_thread(partial(BackendDeployment.__init__, self, mode, persona_dir, options, chunk_frames,
                                            pipeline_factory=pipeline_factory, max_personas=max_personas,
                                            data_dir=data_dir, batch_sessions=batch_sessions))
        except Exception as err:
            await call(vram.report_loaded, mode, False, self.pid, None, f"{type(err).__name__}: {err}")
            raise
        peak = lease.simulated_bytes or await asyncio.to_thread(measure_peak_bytes, self.pid)
        await call(vram.report_loaded, mode, True, self.pid, peak, "")
