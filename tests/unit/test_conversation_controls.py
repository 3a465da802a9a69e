"""The `listening`, `gaze` and `pose` control events at the edge and in the session manager
(docs/api.md#listening-gaze-and-pose): validation with limits, per-mode capabilities, the
state a session reports."""
from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from deployments.api.edge import HTTP_STATUS, first_error
from deployments.api.errors import ServiceError
from deployments.api.protocol import CONTROL_EVENT, GazeEvent, ListeningEvent, PoseEvent
from deployments.config import AppArgs
from deployments.rendering.local import LocalBackend
from deployments.session.manager import SessionManager
from models.base import GAZE_AWAY, POSE_LIMITS_DEG, Controls
from models.modes import MODES, mode_status, supports_control
from models.still import StillPipeline


def refusal(text: str) -> str:
    """The `invalid_event` reason a client gets for this WebSocket text."""
    with pytest.raises(ValidationError) as err:
        CONTROL_EVENT.validate_json(text)
    return first_error(err.value)


def test_the_three_events_parse():
    assert CONTROL_EVENT.validate_json('{"type": "listening", "active": true}') == ListeningEvent(active=True)
    assert CONTROL_EVENT.validate_json('{"type": "gaze", "target": "point", "x": 0.5, "y": -1}').point() == (0.5, -1)
    assert CONTROL_EVENT.validate_json('{"type": "gaze", "target": "away"}').point() == GAZE_AWAY
    assert CONTROL_EVENT.validate_json('{"type": "gaze", "target": "camera"}').point() == (0.0, 0.0)
    pose = CONTROL_EVENT.validate_json('{"type": "pose", "yaw_deg": -30, "pitch_deg": 20}')
    assert (pose.yaw_deg, pose.pitch_deg, pose.roll_deg) == (-30, 20, 0)


@pytest.mark.parametrize("text,names", [
    ('{"type": "pose", "yaw_deg": 31}', ("yaw_deg", "30")),
    ('{"type": "pose", "pitch_deg": -20.5}', ("pitch_deg", "-20")),
    ('{"type": "pose", "roll_deg": 90}', ("roll_deg", "20")),
    ('{"type": "gaze", "target": "point", "x": 1.5, "y": 0}', ("x", "1")),
    ('{"type": "gaze", "target": "point", "x": 0.5}', ("`x` and `y` go with target `point`",)),
    ('{"type": "gaze", "target": "camera", "x": 0.5, "y": 0}', ("only with it",)),
    ('{"type": "gaze", "target": "left"}', ("target", "camera")),
    ('{"type": "listening"}', ("active",)),
    ('{"type": "listening", "active": "maybe"}', ("active",)),
])
def test_values_beyond_their_limits_are_refused_with_the_field_and_the_limit(text, names):
    reason = refusal(text)
    assert all(name in reason for name in names), reason


def test_limits_agree_with_the_controls_the_backends_get():
    for axis, limit in POSE_LIMITS_DEG.items():
        Controls(**{f"head_{axis}_deg": limit})
        with pytest.raises(ValueError):
            Controls(**{f"head_{axis}_deg": limit + 0.1})
    with pytest.raises(ValueError):
        Controls(gaze_x=-1.01)


def test_modes_say_what_they_do_with_each_control():
    for name in ("liveportrait", "ditto", "photoreal", "avatar3d"):
        status = mode_status(MODES[name])
        assert status.listening and status.gaze and status.pose, name
    for name in ("still", "musetalk"):
        status = mode_status(MODES[name])
        assert not (status.listening or status.gaze or status.pose), name
    assert not supports_control("no-such-mode", "gaze")
    assert HTTP_STATUS["control_not_supported"] == 409


def test_a_still_session_takes_listening_and_refuses_gaze_and_pose(store):
    async def main():
        manager = SessionManager(AppArgs(), store, host_id="h", still=LocalBackend(StillPipeline(), store, inline=True))
        info = await manager.create_session(store.record.persona_id, "still", 16000, Controls())
        session_id = info["session_id"]
        try:
            await manager.control(session_id, ListeningEvent(active=True))
            assert manager.get(session_id).info().listening is True  # accepted, and ignored by the frames
            for event in (GazeEvent(target="away"), PoseEvent(yaw_deg=10)):
                with pytest.raises(ServiceError) as err:
                    await manager.control(session_id, event)
                assert err.value.code == "control_not_supported" and "/v1/modes" in str(err.value)
            state = manager.get(session_id).info()
            assert state.gaze == (0.0, 0.0) and state.pose_deg == {"pitch": 0.0, "yaw": 0.0, "roll": 0.0}
        finally:
            await manager.shutdown()

    asyncio.run(main())


def test_a_session_reports_what_was_asked_last(store):
    """By the mode asked for: a session whose backend is still loading takes gaze and pose
    (the session object is the same for every video mode; the manager checks the mode)."""
    async def main():
        manager = SessionManager(AppArgs(), store, host_id="h", still=LocalBackend(StillPipeline(), store, inline=True))
        info = await manager.create_session(store.record.persona_id, "still", 16000, Controls(emotion="happy"))
        session = manager.get(info["session_id"])
        session.requested_mode = "liveportrait"  # as if its backend were loading
        try:
            await manager.control(info["session_id"], GazeEvent(target="point", x=0.25, y=-0.5))
            await manager.control(info["session_id"], PoseEvent(yaw_deg=12, roll_deg=-3))
            await manager.control(info["session_id"], ListeningEvent(active=True))
            state = session.info()
            assert state.listening and state.gaze == (0.25, -0.5)
            assert state.pose_deg == {"pitch": 0.0, "yaw": 12.0, "roll": -3.0}
            assert session.controls.emotion == "happy"  # the other controls stay as they were
            assert session.controls == Controls(emotion="happy", listening=True, gaze_x=0.25, gaze_y=-0.5,
                                                head_yaw_deg=12, head_roll_deg=-3)
        finally:
            await manager.shutdown()

    asyncio.run(main())
