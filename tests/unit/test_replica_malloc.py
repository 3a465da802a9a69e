"""The replicas' malloc settings (graph.MALLOC_ENV) keep a render call's frames in the process.

The probe runs a backend replica's own render path (`BackendDeployment._rendered` over
`_render_chunks`, no Ray): each call in a worker thread, two 5-frame chunks joined and
JPEG-encoded, the result freed on the event loop's thread. It runs in a fresh interpreter,
since glibc reads the settings at start, and prints the render thread's page faults a frame
after a warm-up.

The worker thread is one thread of its own. A replica's `asyncio.to_thread` pool mostly reuses
one thread too, but on a busy machine it starts another now and then (a call may be handed
over before the last one's thread is idle again). Page faults are counted per thread, and each
thread has its own malloc arena, so a second thread made the count meaningless (from -0.7 to
6.4 faults a frame in runs beside three busy processes, 0.03 otherwise).
"""
from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from graph import MALLOC_ENV  # that every replica gets it: tests/graph/test_graph.py, on live replicas

ROOT = Path(__file__).resolve().parents[2]
WARM_UP_FRAMES, MEASURED_FRAMES = 100, 200


def render_faults_per_frame(env: dict[str, str]) -> float:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-m", "tests.unit.test_replica_malloc"], cwd=ROOT, env=clean | env,
                         capture_output=True, text=True, timeout=120, check=True)
    return float(out.stdout.strip())


def test_a_render_call_reuses_the_last_calls_memory_instead_of_faulting_it_in():
    faults = render_faults_per_frame(MALLOC_ENV)
    # glibc's defaults gave ~120 a frame here (256x256 frames): each call's frames faulted in anew.
    assert faults < 5, f"{faults:.1f} page faults a frame in the render thread"


def _probe() -> None:
    import tempfile

    from deployments.backend import BackendDeployment
    from deployments.transports.encode import FrameFormat
    from models.base import SAMPLES_PER_FRAME, Controls, PersonaMedia
    from models.modes import build_pipeline

    backend = BackendDeployment("pattern", tempfile.mkdtemp(), {"size": 256}, chunk_frames=5,
                                pipeline_factory=build_pipeline)
    persona = backend.pipeline.prepare(PersonaMedia([np.zeros((256, 256, 3), np.uint8)]))
    call = 10 * SAMPLES_PER_FRAME  # two chunks a call
    audio = np.zeros((WARM_UP_FRAMES + MEASURED_FRAMES) * SAMPLES_PER_FRAME, np.float32)  # (samples,)

    def thread_faults() -> int:
        return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt

    async def main(render_thread: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        carry, faults_before = backend.pipeline.start(persona, Controls()), 0
        for start in range(0, len(audio), call):
            if start == WARM_UP_FRAMES * SAMPLES_PER_FRAME:
                faults_before = await loop.run_in_executor(render_thread, thread_faults)
            # What BackendDeployment.render runs: its chunks, joined and JPEG-encoded, in a worker thread.
            _, carry = await loop.run_in_executor(render_thread, backend._rendered, FrameFormat(),
                                                  backend._render_chunks, persona, carry,
                                                  audio[start:start + call], Controls())
        print((await loop.run_in_executor(render_thread, thread_faults) - faults_before) / MEASURED_FRAMES)

    with ThreadPoolExecutor(1, thread_name_prefix="render") as render_thread:
        asyncio.run(main(render_thread))


if __name__ == "__main__":
    _probe()
