"""What one backend-style call costs in Ray Serve: unary against a streaming call of one item.

A session's render call carries ~20 JPEG frames (~9 KB each) back over Serve's direct
gRPC channel (`deployments/ray_private.py:direct`), with the persona as multiplexed model id,
and the replica runs the render in a worker thread. This runs that shape of call between
two replicas with the README's replica settings (`graph.py:REPLICA_ENV`), one call every
40 ms, and prints JSON: CPU ms a call in the caller and in the callee, each minus its
process's own background over an idle period as long, per kind of call, and the ratio of
streaming to unary.

    python benchmarks/handle_calls.py [--calls 200] [--repeats 5]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import ray
from ray import serve

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployments.ray_private import call, direct  # noqa: E402
from graph import REPLICA_ENV  # noqa: E402

OPTIONS = {"ray_actor_options": {"num_cpus": 0.1, "runtime_env": {"env_vars": dict(REPLICA_ENV)}}}
FRAMES = [os.urandom(9000) for _ in range(20)]  # a call's JPEGs
CALL_PERIOD_S = 0.04


@serve.deployment(**OPTIONS)
class Callee:
    @serve.multiplexed(max_num_models_per_replica=4)
    async def get_persona(self, persona_id: str) -> str:
        return persona_id

    async def streaming(self, carry: dict):
        await self.get_persona(serve.get_multiplexed_model_id())
        yield await asyncio.to_thread(lambda: {"frames": FRAMES, "carry": carry})

    async def unary(self, carry: dict) -> dict:
        await self.get_persona(serve.get_multiplexed_model_id())
        return await asyncio.to_thread(lambda: {"frames": FRAMES, "carry": carry})

    def cpu_s(self) -> float:
        return time.process_time()


@serve.deployment(**OPTIONS)
class Caller:
    def __init__(self, callee):
        self.callee = callee

    async def calls(self, kind: str, n: int) -> dict:
        """n calls of `kind` ("unary", "streaming", or "none": the same wait, no call)."""
        callee0, caller0 = await call(self.callee.cpu_s), time.process_time()
        for i in range(n):
            if kind == "streaming":
                async for _ in call(direct(self.callee, multiplexed_model_id="p", stream=True).streaming, {"i": i}):
                    pass
            elif kind == "unary":
                await call(direct(self.callee, multiplexed_model_id="p").unary, {"i": i})
            await asyncio.sleep(CALL_PERIOD_S)
        caller1 = time.process_time()
        return {"caller_s": caller1 - caller0, "callee_s": await call(self.callee.cpu_s) - callee0}


async def measure(calls: int, repeats: int) -> dict:
    caller = serve.run(Caller.bind(Callee.bind()), name="handle-calls", route_prefix=None)
    for kind in ("unary", "streaming"):  # warm-up
        await caller.calls.remote(kind, 20)
    runs: dict[str, list[dict]] = {"none": [], "unary": [], "streaming": []}
    for _ in range(repeats):  # interleaved, so drift in Ray's background hits every kind alike
        for kind in runs:
            runs[kind].append(await caller.calls.remote(kind, calls))
    background = {side: statistics.mean(r[side] for r in runs["none"]) for side in ("caller_s", "callee_s")}
    out = {"calls": calls, "repeats": repeats}
    for kind in ("unary", "streaming"):
        per_call = {side.removesuffix("_s") + "_cpu_ms_per_call":
                    [1000 * (r[side] - background[side]) / calls for r in runs[kind]] for side in background}
        out[kind] = {k: {"median": statistics.median(v), "all": v} for k, v in per_call.items()}
        out[kind]["total_cpu_ms_per_call"] = sum(v["median"] for v in out[kind].values())
    out["streaming_over_unary"] = out["streaming"]["total_cpu_ms_per_call"] / out["unary"]["total_cpu_ms_per_call"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ray.init(include_dashboard=False, num_cpus=2, logging_level="ERROR", log_to_driver=False)
    try:
        result = asyncio.run(measure(args.calls, args.repeats))
    finally:
        ray.shutdown()  # the whole local cluster, Serve with it
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
