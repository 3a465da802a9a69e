"""The VRAM controller in the whole graph, on a real local Ray cluster.

The simulated device stands in for the GPU, NVML and the LLM next to us (a
scripted neighbour on port 11439); the `pattern` backend stands in for a GPU
backend. Its replicas attach their simulated memory through the controller when
they get their lease and lose it when their process exits, so every unload here
is a real scale-to-zero that the probe confirms.

Numbers: a 24 GiB device, floor 1 GiB, growth allowance 1 GiB; the LLM starts at
4 GiB (budget 24 - 5 - 1 = 18 GiB); pattern needs 6 GiB at 512 px, 3 GiB at 256 px.
The tests run in order and each starts from the state the previous one left.
"""
import asyncio
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import httpx
import pytest
from ray import serve

from deployments.config import AppArgs
from deployments.rendering.gated import BackendRevoked, GatedBackend
from deployments.vram import NeighbourScript, SimulatedDevice
from deployments.vram.autoscaling import follow_vram_controller, publish_desired
from deployments.vram.setup import controlled_modes, controller_config, pid_alive
from tests.local_cluster import deploy_app
from tests.graph_client import WsViewer, create_persona, open_ws

GIB = 1024**3
APP = "lockn-bod"
RETRY_AFTER_S = 7


# ---------------------------------------------------------------- pieces, without Ray


def test_a_simulated_allocation_is_freed_when_its_process_exits():
    device = SimulatedDevice(24 * GIB, [NeighbourScript("llm", ((0.0, 4 * GIB),), (11439,))], first_pid=10_000_000)
    device.advance(0.0)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    assert device.attach("pattern", child.pid, 6 * GIB)
    assert {p.pid: p.used_bytes for p in device.read().processes}[child.pid] == 6 * GIB
    assert not device.attach("big", os.getpid(), 15 * GIB)  # 14 GiB free: a backend OOM
    assert len(device.backend_ooms) == 1
    child.wait()
    assert not pid_alive(child.pid) and pid_alive(os.getpid())
    assert device.reap(pid_alive) == ["pattern"] and device.free_bytes() == 20 * GIB
    device.want("llm", 25 * GIB)  # 21 GiB more than it has, 20 free: one OOM event, it keeps asking
    assert len(device.neighbour_ooms) == 1 and device.neighbours_used_bytes() == 4 * GIB


def test_the_controller_drives_the_backends_that_have_a_spec():
    args = AppArgs.model_validate({"enable_test_modes": True, "vram": {"probe": "nvml"},
                                   "backends": {"pattern": {}, "liveportrait": {}, "ditto": {}}})
    assert controlled_modes(args) == ["liveportrait", "ditto"]  # pattern has no spec: not driven
    config = controller_config(args)
    assert [b.mode for b in config.backends] == ["liveportrait", "ditto"]
    assert config.backend("ditto").substitutes == ("liveportrait",)  # musetalk is not served here
    assert config.profile_path == args.data_dir / "vram_profiles.json"
    off = AppArgs.model_validate({"vram": {"probe": "off"}})
    assert controlled_modes(off) == []


def test_a_revoked_backend_fails_at_once_with_the_controllers_reason():
    class Remote:
        mode = "pattern"

        async def idle(self, persona_id, carry, n, controls, fmt=None):
            return "frames", carry

    gate = GatedBackend("s1", "pattern", {"pattern": Remote()}, vram=None, ready_timeout_s=1)
    gate.remote = gate.remotes["pattern"]
    assert asyncio.run(gate.idle("p", None, 1, None)) == ("frames", None)
    gate.revoke("shed_over_budget", "pattern must be unloaded: budget")
    with pytest.raises(BackendRevoked, match="must be unloaded") as raised:
        asyncio.run(gate.idle("p", None, 1, None))
    assert raised.value.code == "shed_over_budget"


def test_a_revoke_cancels_the_call_in_flight_with_the_controllers_reason():
    class Hung:
        mode = "pattern"
        cancelled = False

        async def render(self, persona_id, carry, audio, controls, fmt=None):
            try:
                await asyncio.Event().wait()  # a replica that crashed: no answer, ever
            except asyncio.CancelledError:
                Hung.cancelled = True
                raise

    async def main():
        gate = GatedBackend("s1", "pattern", {"pattern": Hung()}, vram=None, ready_timeout_s=1)
        gate.remote = gate.remotes["pattern"]
        call = asyncio.ensure_future(gate.render("p", None, None, None))
        await asyncio.sleep(0.05)
        gate.revoke("backend_lost", "pattern's process left the GPU")
        with pytest.raises(BackendRevoked, match="left the GPU") as raised:
            await asyncio.wait_for(call, 1.0)
        return raised.value.code

    assert asyncio.run(main()) == "backend_lost" and Hung.cancelled


# ---------------------------------------------------------------- the graph


@pytest.mark.graph
def test_the_autoscaling_policy_returns_the_published_target(ray_serve):
    ctx = SimpleNamespace(app_name="policy-test", deployment_name="Backend-x", target_num_replicas=3)
    assert follow_vram_controller(ctx) == (3, {})  # nothing published yet: keep the target
    publish_desired("policy-test", {"Backend-x": 1})
    assert follow_vram_controller(ctx) == (1, {})
    publish_desired("policy-test", {"Backend-x": 0})
    assert follow_vram_controller(ctx) == (0, {})


@pytest.mark.graph
def test_a_checkpoint_is_resumed_only_when_recent_and_under_the_same_args(ray_serve):
    from deployments.vram import checkpoint

    saved = checkpoint.Checkpoint(state={"ledger": 1}, device=None, by_session={}, placed_at_s={},
                                  hosts_seen_s={}, now_s=12.0, config_key="args-a")
    checkpoint.save("checkpoint-test", saved)
    assert checkpoint.load("checkpoint-test", "args-a").state == {"ledger": 1}
    assert checkpoint.load("checkpoint-test", "args-b") is None  # a redeploy with other args
    saved.saved_at -= checkpoint.MAX_AGE_S + 1
    checkpoint.save("checkpoint-test", saved)
    assert checkpoint.load("checkpoint-test", "args-a") is None  # too old to describe the GPU now
    checkpoint.delete("checkpoint-test")
    assert checkpoint.load("checkpoint-test", "args-a") is None


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory):
    args = {
        "data_dir": str(tmp_path_factory.mktemp("data")),
        "enable_test_modes": True,
        "backends": {"pattern": {"num_gpus": 0.1, "num_cpus": 0.1, "chunk_frames": 5, "options": {"size": 64}}},
        "timeouts": {"backend_ready_timeout_s": 60},
        "vram": {
            "probe": "simulated", "step_period_s": 0.25, "profile_file": None,
            "policy": {"floor_bytes": GIB, "load_margin_bytes": 0, "growth_allowance_bytes": GIB,
                       "neighbour_settle_s": 0, "min_residency_s": 0, "idle_ttl_s": 600,
                       "retry_after_s": RETRY_AFTER_S, "load_timeout_s": 60},
            "neighbours": [{"name": "llm", "port": 11439}],
            "backends": [{"mode": "pattern", "load_time_s": 3, "max_sessions": 4, "variants": [
                {"resolution_px": 512, "default_peak_bytes": 6 * GIB},
                {"resolution_px": 256, "default_peak_bytes": 3 * GIB}]}],
            "simulated": {"total_bytes": 24 * GIB,
                          "neighbours": [{"name": "llm", "port": 11439, "steps": [[0, 4 * GIB]]}]},
        },
    }
    base = deploy_app(ray_serve, args)
    yield {"base": base, "persona": create_persona(base, save=True),
           "controller": serve.get_deployment_handle("VramController", app_name=APP)}


def gpu(app) -> dict:
    r = httpx.get(f"{app['base']}/v1/gpu")
    assert r.status_code == 200, r.text
    return r.json()


def backend_replicas(mode: str, state: str | None = None) -> int:
    """Replicas of the backend per Serve: in `state` (e.g. RUNNING), or in any state."""
    states = serve.status().applications[APP].deployments[f"Backend-{mode}"].replica_states
    return states.get(state, 0) if state else sum(states.values())


def set_llm(app, n_bytes: int) -> None:
    app["controller"].set_neighbour.remote("llm", n_bytes).result(timeout_s=10)


def reset_llm(app) -> None:
    """The LLM exits and comes back at 4 GiB: its reservation is the new run's peak."""
    set_llm(app, 0)
    set_llm(app, 4 * GIB)
    assert gpu(app)["budget_bytes"] == 18 * GIB


def post_session(app, **extra) -> httpx.Response:
    return httpx.post(f"{app['base']}/v1/sessions", timeout=60,
                      json={"persona_id": app["persona"], "mode": "pattern", **extra})


def new_session_id(app, **extra) -> str:
    r = post_session(app, **extra)
    assert r.status_code == 201, r.text
    return r.json()["session_id"]


def close(app, session_id: str) -> None:
    assert httpx.delete(f"{app['base']}/v1/sessions/{session_id}").status_code == 204


def wait_for(check, timeout_s: float, what: str, period_s: float = 0.05):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(period_s)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def watch_until_mode(app, session_id: str, mode: str, timeout_s: float = 40) -> WsViewer:
    async def main():
        async with await open_ws(app["base"], session_id) as ws:
            viewer = WsViewer(ws)
            await viewer.recv_until(lambda v: v.in_mode(mode), timeout_s)
            return viewer

    return asyncio.run(main())


def codes(snapshot: dict) -> list[str]:
    return [d["code"] for d in snapshot["decisions"]]


@pytest.mark.graph
def test_session_for_a_mode_not_resident_starts_still_and_switches_when_loaded(app):
    assert "pattern" not in gpu(app)["backends"] and backend_replicas("pattern") == 0
    r = post_session(app)
    assert r.status_code == 201, r.text
    session = r.json()
    assert session["mode"] == "still" and session["requested_mode"] == "pattern"
    placement = session["placement"]
    assert placement["code"] == "wait_for_load" and "pattern" in placement["reason"]
    assert placement["target"] == {"mode": "pattern", "resolution_px": 512, "fps": 25, "code": "admitted"}

    viewer = watch_until_mode(app, session["session_id"], "pattern")
    ready = next(e for e in viewer.events if e["type"] == "session_ready")
    assert ready["mode"] == "still"  # still frames while the backend loaded
    assert ready["placement"] == placement  # a viewer learns why without the 201 response
    switch = next(e for e in viewer.events if e["type"] == "mode_changed")
    assert switch["mode"] == "pattern" and switch["reason"]

    snapshot = gpu(app)
    assert snapshot["backends"]["pattern"]["phase"] == "resident"
    assert snapshot["backends"]["pattern"]["reserved_bytes"] == 6 * GIB
    assert snapshot["desired_replicas"] == {"pattern": 1} and backend_replicas("pattern") == 1
    assert {"load_admitted", "backend_ready"} <= set(codes(snapshot))
    assert snapshot["sessions"][session["session_id"]]["mode"] == "pattern"
    close(app, session["session_id"])
    wait_for(lambda: not gpu(app)["sessions"], 5, "the controller saw the session end")


@pytest.mark.graph
def test_neighbour_grows_and_the_idle_backend_is_scaled_to_zero_within_2_s(app):
    snapshot = gpu(app)
    assert snapshot["backends"]["pattern"]["phase"] == "resident" and not snapshot["sessions"]
    t0 = time.time()
    set_llm(app, 17 * GIB)  # fits in free memory; its reservation (18 GiB) leaves a 5 GiB budget < 6
    t_freed = wait_for(lambda: "pattern" not in gpu(app)["backends"] and time.time(), 10, "unload confirmed")
    t_zero = wait_for(lambda: backend_replicas("pattern", "RUNNING") == 0 and time.time(), 10,
                      "Serve stopped the pattern replica")
    snapshot = gpu(app)
    evict = next(d for d in snapshot["decisions"] if d["code"] == "evict_over_budget")
    assert evict["mode"] == "pattern" and "budget" in evict["reason"]
    confirmed = next(d for d in snapshot["decisions"] if d["code"] == "unload_confirmed")
    assert confirmed["extra"]["time_to_free_s"] < 2.0
    assert snapshot["neighbours"]["llm"]["used_bytes"] == 17 * GIB
    assert snapshot["budget_bytes"] == 5 * GIB and snapshot["ledger_bytes"] == 0
    assert snapshot["simulated"]["neighbour_oom_events"] == 0
    assert snapshot["counters"]["evictions"] >= 1 and snapshot["time_to_free_s"]
    assert t_zero - t0 < 2.0, f"scaled to zero after {t_zero - t0:.2f} s"
    assert t_freed - t0 < 2.0, f"memory freed after {t_freed - t0:.2f} s"
    # Serve keeps the session host's handle's last request count (the closed session's) for
    # 10 s (RAY_SERVE_MIN_HANDLE_METRICS_TIMEOUT_S) and its cold-start path may start one
    # more replica on it: that replica waits for a lease never granted (no memory) and
    # Serve stops it when the count expires.
    wait_for(lambda: backend_replicas("pattern") == 0, 20, "no pattern replica in any state", 0.25)
    assert gpu(app)["desired_replicas"] == {"pattern": 0} and gpu(app)["free_bytes"] == 7 * GIB


@pytest.mark.graph
def test_no_room_degrades_to_lower_quality_then_still_then_503_and_room_upgrades(app):
    # 5 GiB budget: 512 px (6 GiB) does not fit, 256 px (3 GiB) does.
    r = post_session(app)
    assert r.status_code == 201, r.text
    session = r.json()
    assert session["placement"]["target"] == {"mode": "pattern", "resolution_px": 256, "fps": 25,
                                              "code": "lower_quality"}
    watch_until_mode(app, session["session_id"], "pattern")
    assert gpu(app)["backends"]["pattern"]["resolution_px"] == 256
    close(app, session["session_id"])

    # The LLM grows again: 2.5 GiB budget, nothing fits; the idle backend goes.
    set_llm(app, 19 * GIB + GIB // 2)
    wait_for(lambda: "pattern" not in gpu(app)["backends"], 5, "idle pattern@256 unloaded")

    r = post_session(app)
    assert r.status_code == 201, r.text
    still = r.json()
    assert still["mode"] == "still" and still["placement"]["code"] == "still_no_room"
    assert "no room for pattern" in still["placement"]["reason"]
    time.sleep(0.5)
    assert httpx.get(f"{app['base']}/v1/sessions/{still['session_id']}").json()["mode"] == "still"

    r = post_session(app, allow_still=False)
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "refused_no_room" and "no room for pattern" in r.json()["error"]
    assert int(r.headers["retry-after"]) == RETRY_AFTER_S
    snapshot = gpu(app)
    assert {"still_no_room", "refused_no_room"} <= set(codes(snapshot))
    assert snapshot["counters"]["denials"] >= 2
    assert snapshot["simulated"]["neighbour_oom_events"] == 0

    # The LLM restarts smaller: room appears, and the still session is upgraded.
    reset_llm(app)
    watch_until_mode(app, still["session_id"], "pattern")
    assert any(d.get("session_id") == still["session_id"] and d["code"] == "backend_ready"
               for d in gpu(app)["decisions"])
    close(app, still["session_id"])
    set_llm(app, 17 * GIB)  # the idle backend goes again, for the next test
    wait_for(lambda: "pattern" not in gpu(app)["backends"], 5, "idle pattern unloaded")


@pytest.mark.graph
def test_a_session_that_refuses_still_mode_is_queued_with_an_eta_until_its_backend_loads(app):
    reset_llm(app)
    assert "pattern" not in gpu(app)["backends"]
    t0 = time.time()
    r = post_session(app, allow_still=False, max_wait_s=30)
    assert r.status_code == 201, r.text
    session = r.json()
    queued = session["placement"]["queued"]
    assert queued["code"] == "queued" and queued["eta_s"] > 0 and "pattern" in queued["reason"]
    assert session["placement"]["code"] == "backend_ready" and session["placement"]["mode"] == "pattern"
    assert time.time() - t0 < 30
    watch_until_mode(app, session["session_id"], "pattern", timeout_s=10)
    close(app, session["session_id"])


@pytest.mark.graph
def test_a_neighbour_that_grows_under_a_live_session_sheds_it_to_still_and_room_brings_it_back(app):
    reset_llm(app)
    r = post_session(app)
    assert r.status_code == 201, r.text
    session = r.json()
    assert session["placement"]["code"] in ("admitted", "wait_for_load")

    async def main():
        async with await open_ws(app["base"], session["session_id"]) as ws:
            viewer = WsViewer(ws)
            await viewer.recv_until(lambda v: v.in_mode("pattern"), 30)
            # Budget 5 GiB < the 6 GiB held for a backend with a session: shed it.
            await app["controller"].set_neighbour.remote("llm", 17 * GIB)
            await viewer.recv_until(lambda v: v.in_mode("still"), 10)
            n = len(viewer.frames)
            await viewer.recv_until(lambda v: len(v.frames) >= n + 25, 5)  # keeps streaming
            # Room for the 256 px variant (3 GiB) once the 6 GiB are freed: back to the backend.
            await viewer.recv_until(lambda v: v.in_mode("pattern"), 30)
            return viewer

    viewer = asyncio.run(main())
    error = next(e for e in viewer.events if e["type"] == "error")
    assert error["code"] == "shed_over_budget" and "must be unloaded" in error["reason"]
    # From the shed on (the viewer may also have seen the session's first switch, at load).
    switches = [e for e in viewer.events[viewer.events.index(error):] if e["type"] == "mode_changed"]
    assert [e["mode"] for e in switches] == ["still", "pattern"]
    assert "shed_over_budget" in switches[0]["reason"]
    snapshot = gpu(app)
    assert {"shed_over_budget", "unload_confirmed"} <= set(codes(snapshot))
    mine = [d for d in snapshot["decisions"] if d.get("session_id") == session["session_id"]]
    assert mine[-1]["mode"] == "pattern" and mine[-1]["code"] in ("backend_ready", "upgraded"), mine[-1]
    assert snapshot["sessions"][session["session_id"]]["mode"] == "pattern"
    assert snapshot["backends"]["pattern"]["resolution_px"] == 256
    assert snapshot["ledger_bytes"] <= snapshot["budget_bytes"] == 5 * GIB
    assert snapshot["simulated"]["neighbour_oom_events"] == 0
    close(app, session["session_id"])


def kill_replica_of(deployment: str) -> None:
    """As a crash would: no __del__, so no clean shutdown; Serve starts a new replica."""
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if f"#{deployment}#" in a["name"]]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)


@pytest.mark.graph
def test_a_restarted_controller_resumes_and_the_session_keeps_its_backend(app):
    reset_llm(app)
    session_id = new_session_id(app)

    async def main():
        async with await open_ws(app["base"], session_id) as ws:
            viewer = WsViewer(ws)
            await viewer.recv_until(lambda v: v.in_mode("pattern"), 30)
            before = await asyncio.to_thread(gpu, app)
            assert before["resumed"] is False
            kill_replica_of("VramController")
            await asyncio.to_thread(wait_for, lambda: _resumed(app), 60, "a new controller replica resumed", 0.5)
            n = len(viewer.frames)
            await viewer.recv_until(lambda v: len(v.frames) >= n + 50, 10)  # 2 s more, still rendering
            return viewer, before

    viewer, before = asyncio.run(main())
    assert viewer.in_mode("pattern") and not any(e["type"] == "error" for e in viewer.events)
    after = gpu(app)
    assert after["sessions"][session_id]["mode"] == "pattern"
    assert after["backends"]["pattern"]["phase"] == "resident"
    assert after["backends"]["pattern"]["pid"] == before["backends"]["pattern"]["pid"]  # not reloaded
    assert after["desired_replicas"] == {"pattern": 1} and backend_replicas("pattern", "RUNNING") == 1
    assert after["now_s"] > before["now_s"]  # the policy clock went on
    assert after["budget_bytes"] == before["budget_bytes"] == 18 * GIB
    # The session's host keeps reporting to the new replica, and the end of the session reaches it.
    wait_for(lambda: gpu(app)["session_hosts"], 10, "a heartbeat reached the new controller", 0.25)
    close(app, session_id)
    wait_for(lambda: not gpu(app)["sessions"], 5, "the new controller saw the session end")


def _resumed(app) -> bool:
    try:
        return gpu(app)["resumed"]
    except (AssertionError, httpx.HTTPError):
        return False  # no controller replica yet: 5xx


@pytest.mark.graph
def test_a_session_its_host_no_longer_lists_is_ended_by_the_controller(app):
    """As if the host's `ended` call had been lost: its heartbeat no longer lists the session."""
    host = wait_for(lambda: gpu(app)["session_hosts"], 10, "a host heartbeat", 0.25)[0]
    ghost = f"{host}.ghost-session-000000"
    placement = app["controller"].place.remote({"session_id": ghost, "mode": "still"}, 1.0).result(timeout_s=10)
    assert placement.action == "assign" and ghost in gpu(app)["sessions"]  # a typed Placement
    wait_for(lambda: ghost not in gpu(app)["sessions"], 15, "the unlisted session ended", 0.25)


@pytest.mark.graph
def test_a_backend_that_crashes_is_lost_its_session_goes_still_and_a_new_one_reloads_it(app):
    session_id = new_session_id(app)

    async def main():
        async with await open_ws(app["base"], session_id) as ws:
            viewer = WsViewer(ws)
            await viewer.recv_until(lambda v: v.in_mode("pattern"), 30)
            kill_replica_of("Backend-pattern")  # as a CUDA crash would end it
            await viewer.recv_until(lambda v: v.in_mode("still"), 15)
            n = len(viewer.frames)
            await viewer.recv_until(lambda v: len(v.frames) >= n + 25, 5)  # keeps streaming
            return viewer

    viewer = asyncio.run(main())
    assert any(e["type"] == "error" for e in viewer.events)
    lost = wait_for(lambda: [d for d in gpu(app)["decisions"] if d["code"] == "backend_lost"], 10, "lost")
    assert lost[0]["mode"] == "pattern" and "left the GPU" in lost[0]["reason"]
    snapshot = gpu(app)
    assert snapshot["sessions"][session_id]["mode"] == "still"
    assert snapshot["simulated"]["neighbour_oom_events"] == 0
    # Nothing wants it now: Serve's restarted replica is stopped, and a new session loads it afresh.
    wait_for(lambda: "pattern" not in gpu(app)["backends"] and backend_replicas("pattern") == 0, 30,
             "no pattern replica left", 0.25)
    fresh = new_session_id(app)
    watch_until_mode(app, fresh, "pattern")
    assert gpu(app)["backends"]["pattern"]["phase"] == "resident"
    close(app, session_id)
    close(app, fresh)


@pytest.mark.graph
def test_with_the_controller_off_backends_scale_on_load_and_gpu_says_so(ray_serve, tmp_path):
    # Redeploys the app (last in this module): no controller, the pattern backend as before.
    base = deploy_app(ray_serve, {
        "data_dir": str(tmp_path), "enable_test_modes": True, "vram": {"probe": "off"},
        "backends": {"pattern": {"num_gpus": 0.1, "num_cpus": 0.1, "options": {"size": 64}}}})
    assert httpx.get(f"{base}/v1/gpu").json()["enabled"] is False
    assert "VramController" not in serve.status().applications[APP].deployments
    persona = create_persona(base)
    r = httpx.post(f"{base}/v1/sessions", json={"persona_id": persona, "mode": "pattern"})
    assert r.status_code == 201 and "placement" not in r.json()
    watch_until_mode({"base": base}, r.json()["session_id"], "pattern")
    close({"base": base}, r.json()["session_id"])
