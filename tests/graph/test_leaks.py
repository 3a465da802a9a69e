"""100 session cycles leave the serving processes as they found them (issue 19).

Each cycle creates a session, watches a few frames over a WebSocket (every fifth also over
MJPEG), closes the viewer and deletes the session; every tenth uses an unsaved persona of
its own, which goes with the session. After a warm-up (pools, caches and thread pools
reach their working size), the Routers' and the SessionHost's open file descriptors and
threads must stay flat and their resident memory within a bound: a socket, a thread or a
viewer queue kept per session would show as 90 more.
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.graph.test_faults import replica_pids
from tests.graph_client import (
    WsViewer,
    create_persona,
    deploy_still_app,
    mjpeg_frames,
    open_ws,
    stop_task,
)

pytestmark = [pytest.mark.graph, pytest.mark.slow]
WARMUP_CYCLES = 10
CYCLES = 100
MJPEG_EVERY = 5
EPHEMERAL_PERSONA_EVERY = 10
FD_SLACK = 8  # keep-alive connections HAProxy pools, Ray's own sockets coming and going
THREAD_SLACK = 3
RSS_SLACK_BYTES = 24 << 20  # measured: ≤ 5 MiB per 100 cycles (the probe: ≤ 6 MiB); allocator noise on top
SETTLE_TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory):
    """As a user's server: two Routers, one SessionHost, still mode."""
    return deploy_still_app(ray_serve, tmp_path_factory.mktemp("data"))


@dataclass(frozen=True)
class Usage:
    """What a process holds: the resources a leak per session would grow."""

    fds: int
    threads: int
    rss_bytes: int

    @classmethod
    def of(cls, pid: int) -> Usage:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f)
        return cls(fds=count_entries(f"/proc/{pid}/fd"), threads=count_entries(f"/proc/{pid}/task"),
                   rss_bytes=int(status["VmRSS"].split()[0]) * 1024)

    def within(self, base: Usage) -> bool:
        return (self.fds <= base.fds + FD_SLACK and self.threads <= base.threads + THREAD_SLACK
                and self.rss_bytes <= base.rss_bytes + RSS_SLACK_BYTES)


def count_entries(path: str) -> int:
    return len(os.listdir(path))


def serving_pids() -> dict[str, int]:
    """The Router replicas and the SessionHost, by a readable name."""
    routers = replica_pids("Router")
    hosts = replica_pids("SessionHost")
    return {**{f"Router {rid}": pid for rid, pid in routers.items()},
            **{f"SessionHost {rid}": pid for rid, pid in hosts.items()}}


def usage(pids: dict[str, int]) -> dict[str, Usage]:
    return {name: Usage.of(pid) for name, pid in pids.items()}


async def one_cycle(base: str, persona_id: str, index: int) -> None:
    """Create, watch, leave, delete: what one short visit of a client does."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        if index % EPHEMERAL_PERSONA_EVERY == 0:
            persona_id = await asyncio.to_thread(create_persona, base, False)
        r = await http.post("/v1/sessions", json={"persona_id": persona_id, "mode": "still"})
        assert r.status_code == 201, r.text
        session_id = r.json()["session_id"]
        async with await open_ws(base, session_id) as ws:
            await WsViewer(ws).recv_until(lambda v: len(v.frames) >= 3, 10)
        if index % MJPEG_EVERY == 0:
            await watch_mjpeg(base, session_id)
        r = await http.delete(f"/v1/sessions/{session_id}")
        assert r.status_code == 204, r.text


async def watch_mjpeg(base: str, session_id: str) -> None:
    parts = []
    task = asyncio.create_task(mjpeg_frames(base, session_id, parts))
    deadline = time.monotonic() + 10
    while len(parts) < 2 and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.05)
    await stop_task(task)
    assert len(parts) >= 2, "no MJPEG frames"


def run_cycles(base: str, persona_id: str, first: int, count: int) -> None:
    async def main():
        for i in range(first, first + count):
            await one_cycle(base, persona_id, i)

    asyncio.run(main())


def settled(pids: dict[str, int], baseline: dict[str, Usage]) -> dict[str, Usage]:
    """Usage once every process is back within its slack, or at the timeout (cleanup such as
    a closed stream's task ends a moment after the client sees the close)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        now = usage(pids)
        if all(now[name].within(baseline[name]) for name in pids) or time.monotonic() > deadline:
            return now
        time.sleep(0.5)


def test_session_cycles_leave_fds_threads_and_memory_flat(app):
    base = app["base"]
    run_cycles(base, app["persona"], 0, WARMUP_CYCLES)
    pids = serving_pids()
    baseline = usage(pids)
    t0 = time.monotonic()
    run_cycles(base, app["persona"], WARMUP_CYCLES, CYCLES)
    cycles_s = time.monotonic() - t0
    after = settled(pids, baseline)
    assert serving_pids() == pids, "a replica was replaced during the cycles"
    for name in pids:
        b, a = baseline[name], after[name]
        print(f"{name}: fds {b.fds} -> {a.fds}, threads {b.threads} -> {a.threads}, "
              f"RSS {b.rss_bytes / 2**20:.1f} -> {a.rss_bytes / 2**20:.1f} MiB")
    print(f"{CYCLES} cycles in {cycles_s:.1f} s")
    grown = {name: (baseline[name], after[name]) for name in pids if not after[name].within(baseline[name])}
    assert not grown, f"grew over {CYCLES} session cycles: {grown}"
    assert httpx.get(f"{base}/v1/sessions").json()["sessions"] == []
