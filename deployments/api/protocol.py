"""The typed wire protocol: REST bodies and WebSocket messages."""
from __future__ import annotations

import struct
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

FRAME_MAGIC = b"BODF"
FRAME_HEADER = struct.Struct("<4sQ")  # magic, frame index (pts): 12 bytes, then a JPEG


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- client -> server control events (WebSocket text or POST /events) ----
class EmotionEvent(Strict):
    type: Literal["emotion"]
    value: str
    intensity: float = Field(1.0, ge=0.0, le=1.0)


class InterruptEvent(Strict):
    type: Literal["interrupt"]


class EndOfSpeechEvent(Strict):
    type: Literal["end_of_speech"]


ControlEvent = Annotated[Union[EmotionEvent, InterruptEvent, EndOfSpeechEvent], Field(discriminator="type")]
CONTROL_EVENT = TypeAdapter(ControlEvent)


# ---- REST bodies ----
class CreateSession(Strict):
    persona_id: str
    mode: str = "still"
    emotion: str = "neutral"
    intensity: float = Field(1.0, ge=0.0, le=1.0)
    sample_rate_hz: int = Field(16000, ge=8000, le=192000)


class SessionInfo(BaseModel):
    session_id: str
    persona_id: str
    mode: str  # what is streaming now
    requested_mode: str
    sample_rate_hz: int
    emotion: str
    intensity: float
    viewers: int
    frames_out: int
    buffered_audio_s: float
    speaking: bool
    created_at: float
    urls: dict[str, str] = {}


def session_urls(session_id: str) -> dict[str, str]:
    base = f"/v1/sessions/{session_id}"
    return {
        "self": base,
        "websocket": f"{base}/ws",
        "mjpeg": f"{base}/mjpeg",
        "audio": f"{base}/audio",
        "events": f"{base}/events",
    }
