"""Cross-session batching in a backend replica (deployments/rendering/batcher.py and
BackendDeployment._render_jobs), without Ray."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from deployments.backend import BackendDeployment
from deployments.rendering.batcher import RenderBatcher
from deployments.transports.encode import EncodedFrames, FrameFormat
from models.base import SAMPLES_PER_FRAME, Controls


class SlowEcho:
    """render_many for the batcher: each job's args back, after `seconds` (in the worker thread);
    a job whose first arg is "bad" fails its whole batch."""

    def __init__(self, seconds: float = 0.0):
        self.seconds, self.batches = seconds, []
        self.started = threading.Event()

    def __call__(self, jobs: list[tuple]) -> list:
        self.batches.append([job[0] for job in jobs])
        self.started.set()
        time.sleep(self.seconds)
        if any(job[0] == "bad" for job in jobs):
            raise ValueError("bad input")
        return [f"rendered {job[0]}" for job in jobs]


def test_a_lone_call_renders_at_once_in_a_batch_of_one():
    echo = SlowEcho()
    batcher = RenderBatcher(echo, max_jobs=8)
    assert asyncio.run(batcher.submit("a")) == "rendered a"
    assert echo.batches == [["a"]] and batcher.batch_sizes == [1]


def test_calls_that_queue_during_a_render_go_together_up_to_the_limit():
    echo = SlowEcho(seconds=0.1)
    batcher = RenderBatcher(echo, max_jobs=3)

    async def main():
        first = asyncio.ensure_future(batcher.submit("a"))
        while not echo.started.is_set():
            await asyncio.sleep(0.005)
        later = [asyncio.ensure_future(batcher.submit(name)) for name in "bcdef"]
        return await asyncio.gather(first, *later)

    results = asyncio.run(main())
    assert results == [f"rendered {name}" for name in "abcdef"]
    assert echo.batches == [["a"], ["b", "c", "d"], ["e", "f"]]


def test_a_failing_call_fails_alone_and_the_others_are_rendered():
    echo = SlowEcho(seconds=0.05)
    batcher = RenderBatcher(echo, max_jobs=8)

    async def main():
        first = asyncio.ensure_future(batcher.submit("a"))
        while not echo.started.is_set():
            await asyncio.sleep(0.005)
        others = [asyncio.ensure_future(batcher.submit(name)) for name in ("b", "bad", "c")]
        return await asyncio.gather(first, *others, return_exceptions=True)

    a, b, bad, c = asyncio.run(main())
    assert (a, b, c) == ("rendered a", "rendered b", "rendered c")
    assert isinstance(bad, ValueError)
    assert echo.batches == [["a"], ["b", "bad", "c"], ["b"], ["bad"], ["c"]]


def test_max_jobs_must_be_positive():
    with pytest.raises(ValueError):
        RenderBatcher(SlowEcho(), max_jobs=0)


# ---- the backend's batched path with the LivePortrait pipeline -----------------------------

class CountingLivePortrait:
    """The tiny LivePortrait pipeline, counting its render_batch calls and their sizes."""

    def __init__(self, pipeline):
        self.pipeline, self.batches = pipeline, []
        self.mode, self.lookahead_frames, self.idle_is_silence = "liveportrait", 0, True

    def render(self, *args):
        return self.pipeline.render(*args)

    def render_batch(self, jobs):
        self.batches.append(len(jobs))
        return self.pipeline.render_batch(jobs)


@pytest.fixture(scope="module")
def tiny_liveportrait():
    from tests.parity.test_liveportrait_pipeline import PORTRAIT_HW, make_tiny
    from models.base import PersonaMedia

    pipeline, first = make_tiny(real_renderer=False)
    rng = np.random.default_rng(2)
    second = pipeline.prepare(PersonaMedia([rng.integers(0, 256, (*PORTRAIT_HW, 3), dtype=np.uint8)]), "p2")
    return pipeline, first, second


def speech(frames: int) -> np.ndarray:
    t = np.arange(frames * SAMPLES_PER_FRAME) / 16_000
    return (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)


def test_the_backend_draws_chunk_k_of_every_session_together(tmp_path, tiny_liveportrait):
    pipeline, first, second = tiny_liveportrait
    counting = CountingLivePortrait(pipeline)
    backend = BackendDeployment("liveportrait", str(tmp_path), chunk_frames=5, batch_sessions=4,
                                pipeline_factory=lambda mode, **options: counting)
    controls = (Controls(emotion="happy"), Controls(listening=True))
    jobs = [(first, pipeline.start(first, controls[0]), speech(12), controls[0], None),
            (second, pipeline.start(second, controls[1]), speech(5), controls[1], FrameFormat(80))]
    together = backend._render_jobs(jobs)
    assert counting.batches == [2, 1, 1]  # chunks of 5, 5 and 2 frames; the second call has one chunk
    alone = [backend._render_chunks(persona, carry, audio, c) for persona, carry, audio, c, _ in jobs]
    assert np.array_equal(together[0][0], alone[0][0]) and together[0][0].shape[0] == 12
    assert isinstance(together[1][0], EncodedFrames) and len(together[1][0]) == 5  # the call's format
    assert together[0][1].frame == alone[0][1].frame == 12 and together[1][1].frame == 5


def test_idle_goes_through_the_batcher_as_silence(tmp_path, tiny_liveportrait, monkeypatch):
    pipeline, first, _ = tiny_liveportrait
    counting = CountingLivePortrait(pipeline)
    backend = BackendDeployment("liveportrait", str(tmp_path), chunk_frames=5, batch_sessions=4,
                                pipeline_factory=lambda mode, **options: counting)

    async def the_persona():
        return first

    monkeypatch.setattr(backend, "_persona", the_persona)
    carry = pipeline.start(first, Controls())
    frames, after = asyncio.run(backend.idle(carry, 7, Controls()))
    assert len(frames) == 7 and after.frame == 7 and counting.batches == [1, 1]
    want, _ = pipeline.idle(first, carry, 7, Controls())
    assert np.array_equal(frames, want)


# ---- a pipeline whose compiled networks record CUDA graphs: one thread ---------------------

class ThreadRecordingPipeline:
    """A pipeline whose networks record CUDA graphs (`compiled.cuda_graphs`): notes the thread
    of every call, as inductor's per-thread graph state would see it."""

    mode, lookahead_frames, idle_is_silence = "liveportrait", 0, True

    def __init__(self, cuda_graphs: bool):
        from models.compiled import Compiled

        self.compiled = Compiled("reduce-overhead", "reduce-overhead", ("warping",), cuda_graphs)
        self.threads: list[int] = []

    def _frames(self, n: int):
        self.threads.append(threading.get_ident())
        return np.zeros((n, 4, 4, 3), np.uint8)

    def start(self, persona, controls):
        self.threads.append(threading.get_ident())
        return 0

    def render(self, persona, carry, audio, controls):
        return self._frames(len(audio) // SAMPLES_PER_FRAME), carry

    def render_batch(self, jobs):
        return [self.render(*job) for job in jobs]

    def idle(self, persona, carry, n, controls):
        return self._frames(n), carry

    def flush(self, persona, carry, controls):
        return self._frames(0), carry


@pytest.mark.parametrize("batch_sessions", [1, 4])
def test_a_pipeline_with_cuda_graphs_is_called_from_one_thread(tmp_path, monkeypatch, batch_sessions):
    """pytorch/pytorch#123177: a CUDA graph replayed from another thread than the one that
    recorded it fails. Every call, batched or not, goes to the replica's one pipeline thread."""
    pipeline = ThreadRecordingPipeline(cuda_graphs=True)
    backend = BackendDeployment("liveportrait", str(tmp_path), chunk_frames=5, batch_sessions=batch_sessions,
                                pipeline_factory=lambda mode, **options: pipeline)

    async def the_persona():
        return "persona"

    monkeypatch.setattr(backend, "_persona", the_persona)

    async def session_calls():  # six sessions at once: batched calls and calls outside the batcher
        await asyncio.gather(*(backend.render(0, speech(12), Controls()) for _ in range(6)),
                             *(backend.idle(0, 3, Controls()) for _ in range(6)),
                             *(backend.start(Controls()) for _ in range(6)),
                             *(backend.flush(0, Controls()) for _ in range(6)))

    asyncio.run(session_calls())
    assert len(pipeline.threads) >= 24 and len(set(pipeline.threads)) == 1
    assert pipeline.threads[0] != threading.get_ident()  # off the event loop all the same

