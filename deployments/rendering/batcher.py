"""Cross-session batching in a backend replica: render chunks of several sessions in one
network call (BackendArgs.batch_sessions).

Each session calls its backend on its own (`render` with its carry and audio). While the
replica's worker thread renders, calls that arrive wait in a queue; when it is free, it
takes up to `max_jobs` of them and renders them together (`Pipeline.render_batch`: one W+G
pass over every session's frames). So:

- a lone session pays no wait: its call starts at once, as without batching;
- under load, sessions share the network calls: N sessions that call within one render's
  time cost about one call's GPU launches, not N;
- no timer: the batch is whatever queued during the last render.

A batch that fails is rendered again one job at a time, so one session's bad input fails
only its own call.

Why not Serve's `@serve.batch`: with `batch_wait_timeout_s=0` it batches the same way, but
its queue reads the replica's context when it is made (Ray 2.60), so the backend's body
would only run inside a Serve replica (its unit tests build it in-process), and a batch
that raises fails every caller in it, which would need this retry around it anyway.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("ray.serve")


@dataclass
class Job:
    """One session's render call, waiting for its batch."""

    args: tuple
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class RenderBatcher:
    """render_many(list of job args) -> list of results, run in a worker thread, at most one
    batch at a time, up to max_jobs jobs a batch."""

    def __init__(self, render_many: Callable[[list[tuple]], list[Any]], max_jobs: int,
                 in_thread: Callable[..., Awaitable[Any]] = asyncio.to_thread):
        """in_thread(fn, *args): runs fn off the event loop (the backend's pipeline thread)."""
        if max_jobs < 1:
            raise ValueError("max_jobs must be at least 1")
        self.render_many, self.max_jobs, self.in_thread = render_many, max_jobs, in_thread
        self._queue: list[Job] = []
        self._worker: asyncio.Task | None = None
        self.batch_sizes: list[int] = []  # the last batches' sizes (tests, benchmarks)

    async def submit(self, *args) -> Any:
        """The result of rendering `args` (in a batch with whatever else is queued)."""
        job = Job(args)
        self._queue.append(job)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        return await job.done

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:self.max_jobs], self._queue[self.max_jobs:]
            self.batch_sizes = (self.batch_sizes + [len(batch)])[-100:]
            await self._run(batch)

    async def _run(self, batch: list[Job]) -> None:
        try:
            results = await self.in_thread(self.render_many, [job.args for job in batch])
        except Exception as err:
            if len(batch) == 1:
                settle(batch[0], error=err)
                return
            log.warning("a batch of %d renders failed; rendering them one by one", len(batch), exc_info=True)
            for job in batch:
                await self._run([job])
            return
        for job, result in zip(batch, results):
            settle(job, result=result)


def settle(job: Job, result: Any = None, error: BaseException | None = None) -> None:
    """Hand the job's caller its result or error (unless the caller went: a cancelled call)."""
    if job.done.done():
        return
    if error is not None:
        job.done.set_exception(error)
    else:
        job.done.set_result(result)
