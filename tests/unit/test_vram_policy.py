"""Unit tests of each rule of the VRAM policy (DESIGN section 5), one rule per test."""
from __future__ import annotations

import pytest

from deployments.vram.config import GIB, NeighbourSpec, PolicyConfig
from deployments.vram.data import (
    Action,
    Code,
    DeviceReading,
    LoadReport,
    PeakReport,
    ProcessReading,
    SessionEnded,
    SessionRequest,
)
from deployments.vram.eviction import EvictionCandidate, cheapest_set
from deployments.vram.neighbours import NeighbourTracker, matches
from deployments.vram.policy import Phase
from deployments.vram.testing import LLM_PORT, Rig, find, small_config


def _load_big(rig: Rig, at_s: float = 0.0, sid: str = "s1", peak: int = 6 * GIB) -> None:
    rig.step(at_s, SessionRequest(sid, "big"))
    rig.finish_load(at_s + 10, "big", peak, pid=900)


# ------------------------------------------------------------------ budget and neighbours


def test_budget_is_total_minus_reservations_minus_floor():
    rig = Rig(small_config(), llm_bytes=10 * GIB)
    rig.step(0.0)
    # 24 total - (10 high-water + 2 allowance) - 1 floor
    assert rig.controller.state.budget_bytes == 11 * GIB


def test_declared_cap_wins_until_the_high_water_mark_passes_it():
    config = small_config().model_copy(update={"neighbours": (
        NeighbourSpec(name="llm", port=LLM_PORT, declared_cap_bytes=15 * GIB),)})
    rig = Rig(config, llm_bytes=5 * GIB)
    rig.step(0.0)
    assert rig.controller.state.budget_bytes == (24 - 15 - 1) * GIB
    rig.llm_bytes = 14 * GIB
    rig.step(1.0)
    assert rig.controller.state.budget_bytes == (24 - 16 - 1) * GIB


def test_declared_neighbour_keeps_its_high_water_mark_after_it_exits():
    rig = Rig(small_config(), llm_bytes=10 * GIB)
    rig.step(0.0)
    rig.llm_bytes = 0
    rig.step(1.0)
    assert rig.controller.state.budget_bytes == 11 * GIB


def test_a_settled_neighbour_is_reserved_at_the_peak_of_its_current_run():
    rig = Rig(small_config(neighbour_settle_s=60.0), llm_bytes=10 * GIB)
    rig.step(0.0)
    rig.llm_bytes = 0
    rig.step(1.0)  # unloaded: its return is protected at the all-time peak
    assert rig.controller.state.budget_bytes == 11 * GIB
    rig.llm_bytes = 6 * GIB
    rig.step(2.0)  # back, loading: still the all-time peak
    assert rig.controller.state.budget_bytes == 11 * GIB
    rig.step(63.0)  # settled: the peak of this run plus the allowance
    assert rig.controller.state.budget_bytes == (24 - 8 - 1) * GIB


def test_an_absent_neighbour_is_reserved_at_its_load_size_not_its_kv_peak():
    rig = Rig(small_config(neighbour_settle_s=60.0), llm_bytes=10 * GIB)
    rig.step(0.0)
    rig.llm_bytes = 14 * GIB
    rig.step(200.0)  # KV cache grew after it settled
    assert rig.controller.state.budget_bytes == (24 - 16 - 1) * GIB
    rig.llm_bytes = 0
    rig.step(201.0)
    assert rig.controller.state.budget_bytes == (24 - 12 - 1) * GIB


def test_undeclared_process_is_reserved_while_alive_and_forgotten_after():
    rig = Rig(small_config(), others=[ProcessReading(77, 3 * GIB, "python")])
    rig.step(0.0)
    assert rig.controller.state.budget_bytes == (24 - 5 - 1) * GIB
    rig.others = []
    rig.step(1.0)
    assert rig.controller.state.budget_bytes == 23 * GIB


@pytest.mark.parametrize("spec", [
    NeighbourSpec(name="a", pid=42), NeighbourSpec(name="b", process_name="ollama"),
    NeighbourSpec(name="c", port=11441)])
def test_neighbours_match_by_pid_name_or_port(spec):
    process = ProcessReading(42, GIB, "ollama", (11441,))
    assert matches(spec, process)
    assert not matches(spec, ProcessReading(43, GIB, "other", (80,)))


def test_a_neighbour_needs_a_way_to_be_recognised():
    with pytest.raises(ValueError):
        NeighbourSpec(name="nobody")


def test_without_per_process_numbers_used_minus_ours_is_unattributed():
    tracker = NeighbourTracker((), PolicyConfig(growth_allowance_bytes=GIB))
    reading = DeviceReading(0, 24 * GIB, 10 * GIB, 14 * GIB, per_process_available=False)
    tracker.observe(reading, own_pids=set(), own_bytes=4 * GIB, now_s=0.0)
    assert tracker.total_reservation_bytes() == 7 * GIB


def test_controller_says_when_per_process_numbers_are_missing():
    rig = Rig(small_config(), llm_bytes=4 * GIB, per_process=False)
    decisions = rig.step(0.0)
    assert find(decisions, Action.NOTE, Code.NO_PER_PROCESS_NUMBERS)
    assert rig.controller.state.budget_bytes == (24 - 6 - 1) * GIB


# ------------------------------------------------------------------ admission


def test_a_session_starts_in_still_and_switches_when_its_backend_is_loaded():
    rig = Rig(small_config())
    first = rig.step(0.0, SessionRequest("s1", "big"))
    still = find(first, Action.ASSIGN, Code.WAIT_FOR_LOAD, "s1")
    assert still and still[0].mode == "still" and still[0].eta_s == pytest.approx(10.0)
    load = find(first, Action.LOAD)
    assert len(load) == 1 and load[0].mode == "big" and load[0].cap_bytes == 6 * GIB
    ready = rig.finish_load(10.0, "big", 5 * GIB, pid=900)
    assert find(ready, Action.ASSIGN, Code.BACKEND_READY, "s1")[0].mode == "big"


def test_one_load_at_a_time_per_gpu():
    rig = Rig(small_config())
    first = rig.step(0.0, SessionRequest("s1", "big"), SessionRequest("s2", "small",
                                                                       allow_substitute=False))
    assert len(find(first, Action.LOAD)) == 1
    assert not find(rig.step(1.0), Action.LOAD)
    after = rig.finish_load(10.0, "big", 6 * GIB, pid=900)
    assert [d.mode for d in find(after, Action.LOAD)] == ["small"]


def test_no_load_when_live_free_memory_is_short_even_if_the_ledger_has_room():
    # The neighbour is declared small but something undeclared-yet-invisible eats memory:
    # here a process without per-process numbers, so only the device total shows it.
    rig = Rig(small_config(), total_bytes=24 * GIB)
    rig.others = [ProcessReading(77, 18 * GIB, "python")]  # free 6 < 6 + 1 floor
    rig.step(0.0)
    rig.controller.state.neighbours.states.clear()  # forget it: the ledger now says 23 GiB
    rig.controller.state.neighbours.specs = ()
    decisions = rig.controller.step(1.0, _reading_without_processes(rig), [SessionRequest("s1", "big")])
    assert not find(decisions, Action.LOAD)


def _reading_without_processes(rig: Rig) -> DeviceReading:
    r = rig.reading()
    return DeviceReading(0, r.total_bytes, r.used_bytes, r.free_bytes, ())


def test_measured_peak_replaces_the_guess_and_live_peaks_raise_it():
    rig = Rig(small_config())
    _load_big(rig, peak=5 * GIB)
    assert rig.controller.committed_bytes() == 5 * GIB
    rig.ours["big"] = (900, 7 * GIB)
    decisions = rig.step(12.0)
    assert find(decisions, Action.NOTE, Code.PROFILE_UPDATED)
    assert rig.controller.committed_bytes() == 7 * GIB
    decisions = rig.step(13.0, PeakReport("big", 8 * GIB))
    assert rig.controller.committed_bytes() == 8 * GIB


def test_a_failed_load_is_unloaded_and_its_sessions_try_again():
    rig = Rig(small_config())
    rig.step(0.0, SessionRequest("s1", "big"))
    decisions = rig.step(3.0, LoadReport("big", ok=False, error="CUDA out of memory"))
    assert find(decisions, Action.UNLOAD, Code.LOAD_FAILED)


def test_a_load_that_never_reports_times_out():
    rig = Rig(small_config(load_timeout_s=30.0))
    rig.step(0.0, SessionRequest("s1", "big"))
    assert find(rig.step(31.0), Action.UNLOAD, Code.LOAD_TIMEOUT)


def test_the_loading_backend_pid_is_adopted_not_taken_for_a_neighbour():
    rig = Rig(small_config())
    rig.step(0.0, SessionRequest("s1", "big"))
    rig.others = [ProcessReading(900, 6 * GIB, "ray::ServeRepli")]
    rig.step(2.0)
    assert rig.controller.state.backends["big"].pid == 900
    assert rig.controller.state.budget_bytes == 23 * GIB


# ------------------------------------------------------------------ eviction


def test_cheapest_set_frees_enough_at_the_lowest_cost():
    cands = [EvictionCandidate("a", 4, 10.0), EvictionCandidate("b", 3, 2.0),
             EvictionCandidate("c", 3, 3.0)]
    assert {c.mode for c in cheapest_set(cands, 5)} == {"b", "c"}
    assert [c.mode for c in cheapest_set(cands, 3)] == ["b"]
    assert cheapest_set(cands, 11) is None
    assert cheapest_set(cands, 0) == []


def test_idle_backend_is_unloaded_after_the_ttl_but_not_while_busy():
    rig = Rig(small_config(idle_ttl_s=100.0))
    _load_big(rig)
    assert not find(rig.step(200.0), Action.UNLOAD)  # s1 is live
    rig.step(201.0, SessionEnded("s1"))
    assert not find(rig.step(250.0), Action.UNLOAD)
    assert find(rig.step(302.0), Action.UNLOAD, Code.EVICT_IDLE_TTL)


def test_idle_backend_makes_room_only_after_minimum_residency():
    rig = Rig(small_config(min_residency_s=60.0), total_bytes=8 * GIB)  # budget 7
    _load_big(rig)  # resident from t=10
    rig.step(11.0, SessionEnded("s1"))
    early = rig.step(12.0, SessionRequest("s2", "small"))
    assert find(early, Action.ASSIGN, Code.STILL_NO_ROOM, "s2")
    assert not find(early + rig.step(69.0), Action.UNLOAD)
    late = rig.step(71.0)
    assert [d.mode for d in find(late, Action.UNLOAD, Code.EVICT_FOR_ROOM)] == ["big"]


def test_eviction_for_room_never_touches_a_backend_with_sessions():
    rig = Rig(small_config(min_residency_s=0.0), total_bytes=8 * GIB)  # budget 7
    _load_big(rig)  # s1 on big: 6
    decisions = rig.step(11.0, SessionRequest("s2", "small", allow_substitute=False))
    decisions += rig.step(12.0, SessionRequest("s3", "big", resolution_px=256,
                                               allow_substitute=False))
    assert not find(decisions, Action.UNLOAD)


def test_eviction_for_room_picks_the_idle_backend_and_waits_for_confirmation():
    rig = Rig(small_config(min_residency_s=0.0), total_bytes=8 * GIB)  # budget 7
    _load_big(rig)
    rig.step(11.0, SessionEnded("s1"))
    decisions = rig.step(12.0, SessionRequest("s2", "small", allow_substitute=False))
    decisions += rig.step(13.0)
    assert [d.mode for d in find(decisions, Action.UNLOAD, Code.EVICT_FOR_ROOM)] == ["big"]
    assert not find(decisions, Action.LOAD)  # not before NVML confirms
    rig.free_unloaded(decisions)
    decisions = rig.step(14.0)
    assert find(decisions, Action.NOTE, Code.UNLOAD_CONFIRMED)
    assert [d.mode for d in find(decisions, Action.LOAD)] == ["small"]


# ------------------------------------------------------------------ degrade ladder


def test_ladder_substitutes_a_smaller_mode_when_the_requested_one_does_not_fit():
    rig = Rig(small_config(), llm_bytes=16 * GIB)  # budget 24-18-1 = 5
    decisions = rig.step(0.0, SessionRequest("s1", "big"))
    assert find(decisions, Action.LOAD)[0].mode == "small"
    ready = rig.finish_load(5.0, "small", 2 * GIB, pid=901)
    switched = find(ready, Action.ASSIGN, Code.BACKEND_READY, "s1")
    assert switched[0].mode == "small"


def test_ladder_lowers_quality_when_substitutes_are_not_accepted():
    rig = Rig(small_config(), llm_bytes=16 * GIB)  # budget 5: big@256 (3) fits
    decisions = rig.step(0.0, SessionRequest("s1", "big", allow_substitute=False))
    load = find(decisions, Action.LOAD)[0]
    assert (load.mode, load.resolution_px) == ("big", 256)


def test_ladder_ends_in_still_with_a_reason_when_nothing_fits():
    rig = Rig(small_config(), llm_bytes=20 * GIB)  # budget 1
    decisions = rig.step(0.0, SessionRequest("s1", "big"))
    still = find(decisions, Action.ASSIGN, Code.STILL_NO_ROOM, "s1")
    assert still[0].mode == "still" and "no room" in still[0].reason


def test_without_still_a_session_is_refused_with_retry_after():
    rig = Rig(small_config(retry_after_s=45.0), llm_bytes=20 * GIB)
    decisions = rig.step(0.0, SessionRequest("s1", "big", allow_still=False))
    refusal = find(decisions, Action.REFUSE, Code.REFUSED_NO_ROOM, "s1")
    assert refusal[0].retry_after_s == 45.0


def test_without_still_a_session_queues_with_an_eta_for_its_load():
    rig = Rig(small_config())
    decisions = rig.step(0.0, SessionRequest("s1", "big", allow_still=False))
    queued = find(decisions, Action.QUEUE, Code.QUEUED, "s1")
    assert queued[0].eta_s == pytest.approx(10.0)
    assert find(rig.finish_load(10.0, "big", 6 * GIB, 900), Action.ASSIGN, Code.BACKEND_READY, "s1")


def test_queue_ends_in_a_503_after_the_sessions_patience():
    rig = Rig(small_config(min_residency_s=30.0), total_bytes=8 * GIB)  # budget 7
    _load_big(rig)
    rig.step(11.0, SessionEnded("s1"))  # idle but young: room in ~30s
    request = SessionRequest("s2", "small", allow_substitute=False, allow_still=False, max_wait_s=60.0)
    decisions = rig.step(12.0, request)
    assert find(decisions, Action.QUEUE, Code.QUEUED, "s2")
    rig2 = Rig(small_config(min_residency_s=300.0), total_bytes=8 * GIB)
    _load_big(rig2)
    rig2.step(11.0, SessionEnded("s1"))
    impatient = SessionRequest("s2", "small", allow_substitute=False, allow_still=False, max_wait_s=5.0)
    assert find(rig2.step(12.0, impatient), Action.REFUSE, Code.REFUSED_NO_ROOM, "s2")


def test_a_degraded_session_is_upgraded_when_room_appears():
    rig = Rig(small_config(), others=[ProcessReading(77, 20 * GIB, "python")])
    rig.step(0.0, SessionRequest("s1", "small"))  # still: no room
    rig.others = []  # the undeclared process exits
    decisions = rig.step(1.0)
    assert find(decisions, Action.LOAD)[0].mode == "small"


def test_unknown_mode_is_refused_with_a_reason():
    rig = Rig(small_config())
    assert find(rig.step(0.0, SessionRequest("s1", "hologram")), Action.REFUSE, Code.UNKNOWN_MODE)


# ------------------------------------------------------------------ protection


def test_neighbour_growth_unloads_idle_backends_first():
    rig = Rig(small_config(), llm_bytes=4 * GIB)  # budget 17
    _load_big(rig)
    rig.step(11.0, SessionRequest("s2", "small", allow_substitute=False))
    rig.finish_load(16.0, "small", 2 * GIB, pid=901)
    rig.step(17.0, SessionEnded("s2"))  # small idle, big busy
    rig.llm_bytes = 14 * GIB  # budget 7 < ledger 8
    decisions = rig.step(18.0)
    assert [d.mode for d in find(decisions, Action.UNLOAD, Code.EVICT_OVER_BUDGET)] == ["small"]
    assert not find(decisions, Action.ASSIGN, Code.SHED_OVER_BUDGET)


def test_neighbour_growth_sheds_sessions_when_no_idle_backend_is_left():
    rig = Rig(small_config(), llm_bytes=4 * GIB)
    _load_big(rig)
    rig.llm_bytes = 16 * GIB  # budget 5 < 6
    decisions = rig.step(11.0)
    shed = find(decisions, Action.ASSIGN, Code.SHED_OVER_BUDGET, "s1")
    assert shed[0].mode == "still" and "neighbour" in shed[0].reason
    assert find(decisions, Action.UNLOAD, Code.EVICT_OVER_BUDGET)[0].mode == "big"


def test_lowest_priority_sessions_are_shed_first():
    rig = Rig(small_config(), llm_bytes=4 * GIB)
    rig.step(0.0, SessionRequest("vip", "big", priority=5))
    rig.finish_load(10.0, "big", 6 * GIB, pid=900)
    rig.step(11.0, SessionRequest("low", "small", allow_substitute=False))
    rig.finish_load(16.0, "small", 2 * GIB, pid=901)
    rig.llm_bytes = 14 * GIB  # budget 24-16-1 = 7 < ledger 8
    decisions = rig.step(17.0)
    assert [d.session_id for d in find(decisions, Action.ASSIGN, Code.SHED_OVER_BUDGET)] == ["low"]


def test_emergency_below_the_floor_stops_loads_and_evicts_idle():
    rig = Rig(small_config(), llm_bytes=4 * GIB)
    _load_big(rig)
    rig.step(11.0, SessionEnded("s1"))
    # Something the policy could not foresee takes nearly everything.
    rig.others = [ProcessReading(77, 13 * GIB + 512 * 1024**2, "python")]
    decisions = rig.step(12.0, SessionRequest("s2", "small"))
    assert find(decisions, Action.NOTE, Code.EMERGENCY_ENTER)
    assert find(decisions, Action.UNLOAD, Code.EVICT_EMERGENCY) or find(
        decisions, Action.UNLOAD, Code.EVICT_OVER_BUDGET)
    assert not find(decisions, Action.LOAD)
    rig.free_unloaded(decisions)
    rig.others = []
    decisions = rig.step(14.0)
    assert find(decisions, Action.NOTE, Code.EMERGENCY_EXIT)


def test_unload_without_per_process_numbers_is_confirmed_by_the_device_total():
    rig = Rig(small_config(), per_process=False)
    _load_big(rig)
    rig.step(11.0, SessionEnded("s1"))
    decisions = rig.step(200.0)
    assert find(decisions, Action.UNLOAD, Code.EVICT_IDLE_TTL)
    assert not find(rig.step(201.0), Action.NOTE, Code.UNLOAD_CONFIRMED)
    rig.free_unloaded(decisions)
    assert find(rig.step(202.0), Action.NOTE, Code.UNLOAD_CONFIRMED)


def test_unload_without_any_sign_is_assumed_after_a_timeout_and_says_so():
    rig = Rig(small_config(unload_confirm_timeout_s=30.0), per_process=False)
    _load_big(rig)
    rig.step(11.0, SessionEnded("s1"))
    rig.step(200.0)  # unload issued; the rig never frees it
    assert not find(rig.step(220.0), Action.NOTE, Code.UNLOAD_ASSUMED)
    assert find(rig.step(231.0), Action.NOTE, Code.UNLOAD_ASSUMED)


def test_every_decision_has_a_code_and_a_reason():
    rig = Rig(small_config(), llm_bytes=10 * GIB)
    decisions = rig.step(0.0, SessionRequest("a", "big"), SessionRequest("b", "small"),
                         SessionRequest("c", "still"), SessionRequest("d", "big", allow_still=False))
    decisions += rig.finish_load(10.0, "big", 6 * GIB, 900)
    assert decisions and all(isinstance(d.code, Code) and d.reason for d in decisions)


def test_snapshot_is_plain_json():
    import json

    rig = Rig(small_config(), llm_bytes=10 * GIB)
    _load_big(rig)
    snap = rig.controller.snapshot()
    assert json.loads(json.dumps(snap))["backends"]["big"]["phase"] == "resident"


def test_desired_replicas_follow_loads_and_unloads():
    rig = Rig(small_config())
    assert rig.controller.desired_replicas() == {"big": 0, "small": 0}
    _load_big(rig)
    assert rig.controller.desired_replicas() == {"big": 1, "small": 0}
    rig.step(11.0, SessionEnded("s1"))
    rig.step(300.0)  # idle TTL
    assert rig.controller.desired_replicas()["big"] == 0
    assert rig.controller.metrics()["backend_bytes:big"] == 6 * GIB  # until NVML confirms


def test_profiles_round_trip_through_the_configured_file(tmp_path):
    from deployments.vram.policy import Controller

    config = small_config().model_copy(update={"profile_path": tmp_path / "p.json"})
    rig = Rig(config)
    rig.controller = Controller.from_config(config)
    _load_big(rig, peak=5 * GIB)
    rig.controller.save_profiles()
    again = Controller.from_config(config)
    decisions = Rig(config, controller=again).step(0.0, SessionRequest("s", "big"))
    assert find(decisions, Action.LOAD)[0].cap_bytes == 5 * GIB


def test_a_load_waits_for_unloads_in_flight_to_be_confirmed():
    rig = Rig(small_config(growth_allowance_bytes=6 * GIB), llm_bytes=8 * GIB)  # budget 9
    _load_big(rig)
    rig.llm_bytes = 12 * GIB  # budget 24-18-1 = 5 < 6: big is shed; small (2) fits the plan
    decisions = rig.step(11.0)
    assert find(decisions, Action.UNLOAD, Code.EVICT_OVER_BUDGET)
    assert not find(decisions, Action.LOAD)  # live free (6) allows it, the ledger does not yet
    rig.free_unloaded(decisions)
    assert [d.mode for d in find(rig.step(13.0), Action.LOAD)] == ["small"]


def test_a_load_longer_than_the_sessions_patience_is_a_503_with_its_eta():
    rig = Rig(small_config())
    impatient = SessionRequest("s1", "big", allow_substitute=False, allow_still=False, max_wait_s=5.0)
    refusal = find(rig.step(0.0, impatient), Action.REFUSE, Code.REFUSED_NO_ROOM, "s1")
    assert refusal[0].retry_after_s == pytest.approx(10.0)


def test_emergency_sheds_the_lowest_priority_sessions_when_nothing_is_idle():
    rig = Rig(small_config())
    _load_big(rig)  # s1 renders on big
    rig.others = [ProcessReading(77, 17 * GIB + 512 * 1024**2, "python")]  # free 0.5 < floor 1
    decisions = rig.step(11.0)
    shed = find(decisions, Action.ASSIGN, Code.SHED_EMERGENCY, "s1")
    assert shed and shed[0].mode == "still" and "below the floor" in shed[0].reason
    assert find(decisions, Action.UNLOAD, Code.EVICT_EMERGENCY)[0].mode == "big"


# ------------------------------------------------------------------ a backend that crashes


def test_a_backend_whose_process_vanishes_is_lost_and_its_sessions_go_to_still():
    rig = Rig(small_config())
    _load_big(rig)
    rig.step(11.0)  # its PID is on the device
    del rig.ours["big"]  # the replica crashed: the driver freed its memory
    assert not find(rig.step(12.0), Action.NOTE, Code.BACKEND_LOST)  # one reading may race an exit
    decisions = rig.step(12.5)
    lost = find(decisions, Action.NOTE, Code.BACKEND_LOST)
    assert len(lost) == 1 and lost[0].mode == "big" and "900" in lost[0].reason
    moved = find(decisions, Action.ASSIGN, Code.BACKEND_LOST, "s1")
    assert moved and moved[0].mode == "still"
    assert not find(decisions, Action.UNLOAD)  # nothing to unload: the memory is already free
    assert "big" not in rig.controller.state.backends and rig.controller.desired_replicas()["big"] == 0
    assert not find(rig.step(13.0), Action.LOAD)  # not for s1: it stays still (no crash loop)
    assert find(rig.step(14.0, SessionRequest("s2", "big")), Action.LOAD)  # a new session loads it afresh


def test_a_backend_pid_the_device_never_showed_is_never_called_lost():
    # NVML in a container reports host PIDs: our own PID may never appear in a reading.
    rig = Rig(small_config())
    rig.step(0.0, SessionRequest("s1", "big"))
    rig.ours["big"] = (12345, 6 * GIB)  # what NVML shows
    rig.step(10.0, LoadReport("big", ok=True, pid=900, peak_bytes=6 * GIB))  # what the replica says
    for t in (11.0, 12.0, 13.0):
        assert not find(rig.step(t), Action.NOTE, Code.BACKEND_LOST)
    assert rig.controller.state.backends["big"].phase == Phase.RESIDENT


def test_photoreal_falls_back_to_liveportrait_then_to_its_lower_fps_variant():
    """The shipped ladder for photoreal (deployments/vram/config.py): either pipeline alone, or
    photoreal at 20 fps when substitutes are refused."""
    from deployments.vram.config import MIB, default_config

    config = default_config().model_copy(update={"policy": small_config().policy,
                                                 "neighbours": small_config().neighbours})
    rig = Rig(config, llm_bytes=14 * GIB + 512 * MIB)  # budget 6.5 GiB: photoreal needs 7 at 25 fps
    load = find(rig.step(0.0, SessionRequest("s1", "photoreal")), Action.LOAD)[0]
    assert load.mode == "liveportrait"
    rig = Rig(config, llm_bytes=14 * GIB + 512 * MIB)
    load = find(rig.step(0.0, SessionRequest("s1", "photoreal", allow_substitute=False)), Action.LOAD)[0]
    assert (load.mode, load.fps) == ("photoreal", 20)
