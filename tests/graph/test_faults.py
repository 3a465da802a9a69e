"""SIGKILL of each serving process under a live session, and what a client sees (issue 19).

- **A Router replica.** Its WebSocket ends; a reconnect with the same session id streams
  again well within the disconnect grace. HTTP meanwhile answers at once: 2xx from the
  other Router, or (serve_config.yaml's one Router) a 503 `{error, code}` with Retry-After
  until the replacement serves; a GET in flight when the Router died is sent again.
- **HAProxy.** Port 8000 is refused until Serve's controller has failed three of its
  health checks (10 s apart) and started a new one: ~30 s, measured here. The default
  disconnect grace (60 s) outlives that, so a client that reconnects finds its session.
- **The SessionHost.** Its WebSocket is told `session_lost` and closed with 4410; calls for
  the old session answer 404 `unknown_session` from the replacement, and its sweep deletes
  the crashed session's unsaved persona once the old host's heartbeat is stale (30 s).

The first test runs on one Router, the others on two (the second fixture's app replaces the
first); each ends with the app serving again.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websockets

from deployments.config import SessionTimeouts
from deployments.inputs.personas import HOST_TTL_S
from deployments.session.manager import SWEEP_PERIOD_S
from lockn_bod_client import LockNBodError
from tests.graph_client import WsViewer, create_persona, create_session, deploy_still_app, open_ws

pytestmark = pytest.mark.graph
APP_NAME = "lockn-bod"
HTTP_TIMEOUT_S = 10.0  # a request slower than this is a hang
FAST_ANSWER_S = 3.0  # what "answers at once" means while a Router is replaced
GRACE_S = SessionTimeouts().disconnect_grace_s  # the default: these tests keep it
REPLACEMENT_TIMEOUT_S = 60.0  # Serve starting a new replica on 2 busy cores
HOST_CALL_TIMEOUT_S = 40.0  # the Router gives up on a SessionHost call after 30 s (504)


@pytest.fixture(scope="module")
def one_router_app(ray_serve, tmp_path_factory):
    """As serve_config.yaml: one Router replica. Used by the first test only (the next
    fixture's app replaces it)."""
    return deploy_still_app(ray_serve, tmp_path_factory.mktemp("data"), 1)


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory):
    """Two Router replicas."""
    return deploy_still_app(ray_serve, tmp_path_factory.mktemp("data"), 2)


# ---------------- the processes ----------------
def replica_pids(deployment: str) -> dict[str, int]:
    """Running replicas of one of the app's deployments: replica id -> pid. Serve's
    controller knows both (the replica id is what the Router sends as X-LocknBod-Router)."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    replicas = details["applications"][APP_NAME]["deployments"][deployment]["replicas"]
    return {r["replica_id"]: r["pid"] for r in replicas if r["state"] == "RUNNING" and r.get("pid")}


def process_tree(root_pid: int) -> list[int]:
    """Every process below root_pid (Ray's workers and HAProxy are below the test's driver)."""
    parent_of = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent_of[int(stat_file.parent.name)] = int(stat_file.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    found, frontier = set(), {root_pid}
    while frontier:
        frontier = {pid for pid, ppid in parent_of.items() if ppid in frontier} - found
        found |= frontier
    return sorted(found)


def haproxy_pids() -> list[int]:
    """The HAProxy processes of this cluster: the serving one and any still draining after a reload."""
    pids = []
    for pid in process_tree(os.getpid()):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "haproxy":
                pids.append(pid)
        except OSError:
            continue
    return pids


def kill(pid: int) -> float:
    """SIGKILL one process we started; returns when it was sent (monotonic seconds)."""
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


# ---------------- what a client sees ----------------
@dataclass
class Answer:
    path: str
    status: int | None  # None: no HTTP answer at all (refused, reset, timed out)
    sent_at_s: float  # monotonic
    elapsed_s: float
    headers: dict
    body: str


def is_error_json(answer: Answer) -> bool:
    import json

    try:
        body = json.loads(answer.body)
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), str) and isinstance(body.get("code"), str)


def acceptable_while_replaced(answer: Answer) -> bool:
    """2xx from a live Router, or a 503 that says so and when to retry."""
    if answer.status is not None and 200 <= answer.status < 300:
        return True
    return answer.status == 503 and is_error_json(answer) and "retry-after" in answer.headers


async def timed_get(http: httpx.AsyncClient, path: str) -> Answer:
    t0 = time.monotonic()
    try:
        r = await http.get(path)
        return Answer(path, r.status_code, t0, time.monotonic() - t0, dict(r.headers), r.text)
    except httpx.HTTPError as err:
        return Answer(path, None, t0, time.monotonic() - t0, {}, repr(err))


async def probe_http(base: str, paths: list[str], stop: asyncio.Event, answers: list[Answer],
                     timeout_s: float = HTTP_TIMEOUT_S) -> None:
    """GET each path in turn until stopped, each on a new connection (as a fresh client would)."""
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=timeout_s, limits=limits) as http:
        while not stop.is_set():
            for path in paths:
                answers.append(await timed_get(http, path))
            await asyncio.sleep(0.05)


async def until_closed(viewer: WsViewer, timeout_s: float) -> websockets.ConnectionClosed:
    """Read the viewer's stream until the server ends it; the close, as the client saw it."""
    try:
        await viewer.recv_until(lambda v: False, timeout_s)
    except websockets.ConnectionClosed as closed:
        return closed
    raise AssertionError("the stream did not end")


async def stream_again(base: str, session_id: str, timeout_s: float) -> float:
    """Reconnect until the session streams frames again; returns how long that took."""
    t0 = time.monotonic()
    last_error: Exception | None = None
    while time.monotonic() - t0 < timeout_s:
        try:
            async with await open_ws(base, session_id) as ws:
                await WsViewer(ws).recv_until(lambda v: len(v.frames) >= 5, 5)
                return time.monotonic() - t0
        except (OSError, TimeoutError, websockets.WebSocketException, LockNBodError) as err:
            last_error = err  # LockNBodError: a clean 503 while the Router is replaced
            await asyncio.sleep(0.5)
    raise AssertionError(f"no frames within {timeout_s} s of reconnecting: {last_error!r}")


async def watch(base: str, session_id: str) -> tuple[WsViewer, object]:
    """A viewer that has seen frames, and the WebSocket it reads."""
    ws = await open_ws(base, session_id)
    viewer = WsViewer(ws)
    await viewer.recv_until(lambda v: len(v.frames) >= 5, 30)
    return viewer, ws


def wait_healthy(base: str, timeout_s: float) -> float:
    """Poll /healthz until it answers 200; the seconds that took. Connections refused meanwhile."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{base} not healthy within {timeout_s} s")


# ---------------- a Router replica ----------------
PROBE_AFTER_KILL_S = 10.0  # HTTP is probed at least this long after the kill


def test_the_only_router_killed_under_a_websocket(one_router_app):
    """serve_config.yaml's one Router: HTTP gets a fast 503 until its replacement serves."""
    kill_a_router_under_a_websocket(one_router_app, routers=1)


def test_one_of_two_routers_killed_under_a_websocket(app):
    """The other Router serves at once."""
    kill_a_router_under_a_websocket(app, routers=2)


def kill_a_router_under_a_websocket(app: dict, routers: int) -> None:
    base = app["base"]
    session_id = create_session(base, app["persona"], "still")["session_id"]
    pids = replica_pids("Router")
    assert len(pids) == routers, pids

    async def main():
        viewer, ws = await watch(base, session_id)
        stop, answers = asyncio.Event(), []
        probing = asyncio.create_task(probe_http(base, ["/healthz", f"/v1/sessions/{session_id}"], stop, answers))
        await asyncio.sleep(0.5)
        dead_pid = pids[ws.response.headers["x-locknbod-router"]]
        t_kill = kill(dead_pid)
        closed = await until_closed(viewer, 10)
        ended_s = time.monotonic() - t_kill
        back_s = await stream_again(base, session_id, GRACE_S - 5)
        await asyncio.sleep(max(2.0, PROBE_AFTER_KILL_S - (time.monotonic() - t_kill)))
        stop.set()
        await probing
        return closed, ended_s, back_s, answers, dead_pid

    closed, ended_s, back_s, answers, dead_pid = asyncio.run(main())
    print(f"router kill ({routers} routers): websocket ended after {ended_s:.2f} s ({closed!r}); streaming again "
          f"after {back_s:.2f} s; slowest of {len(answers)} answers {max(a.elapsed_s for a in answers):.2f} s; "
          f"statuses {sorted({a.status for a in answers}, key=str)}")
    assert ended_s < 5
    slow = [a for a in answers if a.elapsed_s > FAST_ANSWER_S]
    assert not slow, f"requests hung while the Router was replaced: {slow[:3]}"
    bad = [a for a in answers if not acceptable_while_replaced(a)]
    assert not bad, f"neither served nor a clean 503: {bad[:3]}"
    wait_viewers(base, session_id, 0)  # the dead Router's viewer went with it
    wait_replicas("Router", routers, dead_pid)
    assert httpx.delete(f"{base}/v1/sessions/{session_id}").status_code == 204


def wait_viewers(base: str, session_id: str, count: int, timeout_s: float = 10.0) -> None:
    """The session's host counts `count` viewers (a dead Router's stream is let go)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(f"{base}/v1/sessions/{session_id}").json()["viewers"] == count:
            return
        time.sleep(0.2)
    raise AssertionError(f"{session_id} does not have {count} viewers within {timeout_s} s")


def wait_replicas(deployment: str, count: int, dead_pid: int, timeout_s: float = REPLACEMENT_TIMEOUT_S) -> float:
    """Seconds until Serve runs `count` replicas again, none of them the dead process (the
    controller lists a killed replica as running until it notices)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        pids = replica_pids(deployment)
        if len(pids) == count and dead_pid not in pids.values():
            return time.monotonic() - t0
        time.sleep(0.5)
    raise AssertionError(f"{deployment}: not {count} running replicas within {timeout_s} s")


# ---------------- HAProxy ----------------
def test_session_outlives_haproxys_restart(app):
    base = app["base"]
    session_id = create_session(base, app["persona"], "still")["session_id"]

    async def view_then_lose_haproxy() -> tuple[float, float]:
        viewer, _ = await watch(base, session_id)
        pids = haproxy_pids()
        assert pids, "no HAProxy under this cluster: RAY_SERVE_ENABLE_HA_PROXY not in effect"
        t_kill = min(kill(pid) for pid in pids)
        await until_closed(viewer, 10)
        return t_kill, time.monotonic() - t_kill

    t_kill, ended_s = asyncio.run(view_then_lose_haproxy())
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/healthz", timeout=2)  # refused, not hanging
    restart_s = time.monotonic() - t_kill + wait_healthy(base, GRACE_S)
    print(f"haproxy kill: websocket ended after {ended_s:.2f} s; port refused for {restart_s:.1f} s "
          f"(disconnect grace {GRACE_S:.0f} s)")
    # The session's last viewer left at the kill: it must still be there, with room to reconnect.
    assert restart_s < GRACE_S - 10, f"HAProxy took {restart_s:.0f} s; the grace is {GRACE_S:.0f} s"
    assert httpx.get(f"{base}/v1/sessions/{session_id}").status_code == 200
    asyncio.run(stream_again(base, session_id, 20))
    assert httpx.delete(f"{base}/v1/sessions/{session_id}").status_code == 204


# ---------------- the SessionHost ----------------
def test_session_host_killed_under_a_websocket(app):
    base = app["base"]
    ephemeral, kept = create_persona(base, save=False), create_persona(base, save=True)
    lost = create_session(base, ephemeral, "still")["session_id"]
    create_session(base, kept, "still")  # lost with its host too; only its marker stays
    (host_pid,) = replica_pids("SessionHost").values()

    async def view_then_lose_host():
        viewer, _ = await watch(base, lost)
        stop, answers = asyncio.Event(), []
        probing = asyncio.create_task(probe_http(base, [f"/v1/sessions/{lost}"], stop, answers, HOST_CALL_TIMEOUT_S))
        t_kill = kill(host_pid)
        closed = await until_closed(viewer, 10)
        told_s = time.monotonic() - t_kill
        await asyncio.to_thread(wait_replicas, "SessionHost", 1, host_pid)
        replaced_s = time.monotonic() - t_kill
        await asyncio.sleep(1)
        stop.set()
        await probing
        return viewer, closed, t_kill, told_s, replaced_s, answers

    viewer, closed, t_kill, told_s, replaced_s, answers = asyncio.run(view_then_lose_host())
    # Meanwhile the old session's GETs wait for a host (the replacement's 404), never fail otherwise.
    assert all(a.status == 404 and is_error_json(a) for a in answers), [a for a in answers if a.status != 404][:3]
    longest_wait_s = max(a.elapsed_s for a in answers)
    errors = [e for e in viewer.events if e["type"] == "error"]
    assert errors and errors[-1]["code"] == "session_lost", viewer.events[-3:]
    assert closed.rcvd is not None and closed.rcvd.code == 4410, closed

    r = httpx.get(f"{base}/v1/sessions/{lost}", timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 404 and r.json()["code"] == "unknown_session", r.text

    gone_s = wait_persona_gone(base, ephemeral, t_kill, HOST_TTL_S + 15)
    print(f"session host kill: told session_lost after {told_s:.2f} s; replacement running after "
          f"{replaced_s:.1f} s; a GET of the old session waited up to {longest_wait_s:.1f} s for it; "
          f"unsaved persona deleted {gone_s:.1f} s after the kill")
    assert gone_s >= HOST_TTL_S - 1, "deleted while its host's heartbeat was still fresh"
    r = httpx.delete(f"{base}/v1/personas/{ephemeral}")
    assert r.status_code == 404, r.text
    # The saved persona stays, and the crashed session's marker no longer holds it.
    assert httpx.get(f"{base}/v1/personas/{kept}").json()["sessions"] == 0
    assert httpx.delete(f"{base}/v1/personas/{kept}").status_code == 204


def wait_persona_gone(base: str, persona_id: str, t_kill: float, timeout_s: float) -> float:
    """Poll the persona (and DELETE nothing) until it is gone; seconds from the kill. Once
    the crashed host's heartbeat is stale, its markers must no longer hold the persona."""
    while time.monotonic() - t_kill < timeout_s:
        r = httpx.get(f"{base}/v1/personas/{persona_id}", timeout=HTTP_TIMEOUT_S)
        if r.status_code == 404:
            return time.monotonic() - t_kill
        assert r.status_code == 200, r.text
        if time.monotonic() - t_kill > HOST_TTL_S + 2 * SWEEP_PERIOD_S:
            assert r.json()["sessions"] == 0, "a crashed host's marker still counts"
        time.sleep(1)
    raise AssertionError(f"unsaved persona still there {timeout_s:.0f} s after its host was killed")
