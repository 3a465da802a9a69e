"""Property-based tests of the VRAM policy over random traces on the simulated device.

After every step: the ledger never exceeds the budget, at most one load is in
flight, no backend is unloaded from under live sessions (unless they were shed,
with a reason, to protect a neighbour), and every decision has a code and a reason.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployments.vram.config import GIB
from deployments.vram.data import SHED_CODES, Action, Code, Decision, SessionRequest
from deployments.vram.policy import Controller, Phase
from deployments.vram.simulation import NeighbourScript, SessionScript, SimulatedDevice, run_trace
from deployments.vram.testing import LLM_PORT, small_config

TRACE_S = 400.0
MODES = ("big", "small", "still")

_neighbour = st.builds(
    lambda name, port, steps: NeighbourScript(name, tuple(sorted(steps)), port),
    name=st.sampled_from(["llama-server", "python", "vllm"]),
    port=st.sampled_from([(LLM_PORT,), ()]),
    steps=st.lists(st.tuples(st.floats(0, TRACE_S), st.integers(0, 14).map(lambda g: g * GIB)),
                   min_size=1, max_size=6),
)

_session = st.builds(
    lambda i, mode, start, length, prio, sub, low, still, wait: SessionScript(
        SessionRequest(f"s{i}", mode, priority=prio, allow_substitute=sub,
                       allow_lower_quality=low, allow_still=still, max_wait_s=wait),
        start, length),
    i=st.integers(0, 10**6), mode=st.sampled_from(MODES), start=st.floats(0, TRACE_S),
    length=st.floats(1, 300), prio=st.integers(0, 3), sub=st.booleans(), low=st.booleans(),
    still=st.booleans(), wait=st.floats(0, 60))


class InvariantChecker:
    """Called after each step with that step's decisions; remembers the step before."""

    def __init__(self) -> None:
        self._on_before: dict[str, set[str]] = {}

    def __call__(self, policy: Controller, decisions: list[Decision], now_s: float) -> list[str]:
        errors = []
        state = policy.state
        if policy.committed_bytes() > max(state.budget_bytes, 0):
            errors.append(f"t={now_s}: ledger {policy.committed_bytes()} > budget {state.budget_bytes}")
        loading = [b for b in state.backends.values() if b.phase == Phase.LOADING]
        if len(loading) > 1 or len([d for d in decisions if d.action == Action.LOAD]) > 1:
            errors.append(f"t={now_s}: more than one load at a time")
        for d in decisions:
            if not isinstance(d.code, Code) or not d.reason:
                errors.append(f"t={now_s}: decision without code or reason: {d}")
        errors += self._no_eviction_under_sessions(policy, decisions, now_s)
        self._on_before = {m: {sid for sid, x in state.sessions.items() if x.mode == m}
                           for m in state.backends}
        return errors

    def _no_eviction_under_sessions(self, policy: Controller, decisions: list[Decision],
                                    now_s: float) -> list[str]:
        errors = []
        for sid, session in policy.state.sessions.items():
            backend = policy.state.backends.get(session.mode)
            if session.mode in ("", "still"):
                continue
            if backend is None or backend.phase != Phase.RESIDENT:
                errors.append(f"t={now_s}: {sid} renders on {session.mode} which is not resident")
        moved = {d.session_id: d.code for d in decisions if d.action == Action.ASSIGN}
        for d in decisions:
            if d.action != Action.UNLOAD:
                continue
            for sid in self._on_before.get(d.mode, set()) & set(policy.state.sessions):
                code = moved.get(sid)
                if code is None:
                    errors.append(f"t={now_s}: {d.mode} unloaded under live session {sid}")
                elif code in SHED_CODES and d.code not in (Code.EVICT_OVER_BUDGET, Code.EVICT_EMERGENCY):
                    errors.append(f"t={now_s}: {sid} shed for a non-protective unload {d.code}")
        return errors


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(neighbours=st.lists(_neighbour, max_size=3), sessions=st.lists(_session, max_size=12),
       per_process=st.booleans(), total_gib=st.integers(12, 40))
def test_invariants_hold_over_random_traces(neighbours, sessions, per_process, total_gib):
    sessions = list({s.request.session_id: s for s in sessions}.values())
    config = small_config()
    device = SimulatedDevice(total_gib * GIB, neighbours, per_process_available=per_process)
    result = run_trace(Controller(config), device, config, sessions, TRACE_S, tick_s=1.0,
                       check=InvariantChecker())
    assert result.invariant_violations == []


@settings(max_examples=25, deadline=None)
@given(sessions=st.lists(_session, max_size=12))
def test_declared_neighbour_within_its_cap_is_never_pushed_out_of_memory(sessions):
    """A neighbour that stays within its declared cap is safe from us by construction."""
    sessions = list({s.request.session_id: s for s in sessions}.values())
    base = small_config()
    spec = base.neighbours[0].model_copy(update={"declared_cap_bytes": 12 * GIB})
    config = base.model_copy(update={"neighbours": (spec,)})
    llm = NeighbourScript("llama-server", ((50.0, 4 * GIB), (150.0, 12 * GIB), (300.0, 0),
                                           (320.0, 12 * GIB)), (LLM_PORT,))
    device = SimulatedDevice(24 * GIB, [llm])
    result = run_trace(Controller(config), device, config, sessions, TRACE_S)
    assert result.neighbour_ooms == []
