"""Control events, as the JSON objects the server takes (docs/api.md#control-events).

Each function returns the dict to send: over the WebSocket (`SessionStream.send_event`) or
as the body of `POST /v1/sessions/{id}/events` (`LockNBodClient.send_event`). The client does
not validate values: the server does, and answers `invalid_event` (a 422, or an `error`
event on the WebSocket) naming the field and its limit.
"""
from __future__ import annotations

from typing import Any, Literal

Event = dict[str, Any]
GazeTarget = Literal["camera", "away", "point"]


def emotion(value: str, intensity: float = 1.0) -> Event:
    """Change the emotion (`neutral`, `happy`, `sad`, `angry`, `surprised`, `thinking`, ...; 0 ≤ intensity ≤ 1)."""
    return {"type": "emotion", "value": value, "intensity": intensity}


def interrupt() -> Event:
    """Drop buffered speech and take back the frames not yet shown."""
    return {"type": "interrupt"}


def end_of_speech() -> Event:
    """The utterance is over: render what the backend's lookahead holds."""
    return {"type": "end_of_speech"}


def listening(active: bool) -> Event:
    """The user started (True) or stopped (False) talking: eye contact, calmer idle, nods."""
    return {"type": "listening", "active": bool(active)}


def gaze(target: GazeTarget, x: float | None = None, y: float | None = None) -> Event:
    """Where the eyes look: `camera`, `away`, or `point` with `x` (to the viewer's right) and `y` (up), −1 to 1."""
    event: Event = {"type": "gaze", "target": target}
    if x is not None:
        event["x"] = x
    if y is not None:
        event["y"] = y
    return event


def pose(yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> Event:
    """Turn the head from the portrait's pose (yaw ±30 to the viewer's right, pitch ±20 down, roll ±20); zeros: rest."""
    return {"type": "pose", "yaw_deg": yaw_deg, "pitch_deg": pitch_deg, "roll_deg": roll_deg}


def text(sentence: str) -> Event:
    """avatar3d: the sentence about to be spoken (refines the lip-sync cues)."""
    return {"type": "text", "text": sentence}


def words(words: list[str], wtimes: list[int], wdurations: list[int]) -> Event:
    """avatar3d: a TTS's word timings for the next utterance, ms from its first sample."""
    return {"type": "words", "words": list(words), "wtimes": list(wtimes), "wdurations": list(wdurations)}


def gesture(name: str, duration_s: float = 3.0, mirror: bool = False) -> Event:
    """avatar3d: a gesture (`handup`, `index`, `ok`, `thumbup`, `thumbdown`, `side`, `shrug`, `namaste`, `yes`, `no`)."""
    return {"type": "gesture", "name": name, "duration_s": duration_s, "mirror": mirror}
