"""The typed wire protocol: REST bodies, WebSocket events, errors as values.

Errors travel inside the graph as `ServiceError` (code, reason, HTTP status)
and are mapped to an HTTP status or an `error` event only at the edge.
"""
from __future__ import annotations

import struct
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from models.base import PipelineError, WeightsMissingError


FRAME_MAGIC = b"BODF"
FRAME_HEADER = struct.Struct("<4sQ")  # magic, frame index (pts): 12 bytes, then a JPEG


def error_event(code: str, reason: str) -> dict:
    """An `error` event for a stream: the reason under `error` (as in HTTP error bodies)
    and under `reason` (as in every other event)."""
    return {"type": "error", "code": code, "error": reason, "reason": reason}


class ServiceError(Exception):
    """An error a client can act on; `status` is the HTTP status at the edge."""

    def __init__(self, status: int, code: str, reason: str, retry_after_s: float | None = None):
        super().__init__(reason)
        self.status, self.code, self.reason, self.retry_after_s = status, code, reason, retry_after_s

    def to_json(self) -> dict:
        return {"error": self.reason, "code": self.code}

    def to_event(self) -> dict:
        return error_event(self.code, self.reason)

    def __reduce__(self):  # picklable across Ray processes
        return ServiceError, (self.status, self.code, self.reason, self.retry_after_s)


# A pipeline's error (models.base.PipelineError) keeps its code end to end; its HTTP status is
# chosen here, at the edge: missing weights are a conflict with the server's state (409); any
# other (no_face, bad_media, ...) is media the mode cannot use, unprocessable (422).
# How deep to look through Ray's wrappers (a backend's error reaches the Router through the
# SessionHost: RayTaskError(RayTaskError(PersonaError))).
_MAX_WRAPPING = 6


def pipeline_error(err: BaseException | None) -> PipelineError | None:
    """The PipelineError inside `err`: itself, under Ray's `cause` or under a `raise ... from`."""
    for _ in range(_MAX_WRAPPING):
        if err is None:
            return None
        inner = getattr(err, "cause", None)  # Ray's task error: the original exception
        if isinstance(inner, BaseException):
            err = inner
        elif isinstance(err, PipelineError):
            return err
        else:
            err = err.__cause__
    return None


def pipeline_service_error(err: BaseException) -> ServiceError | None:
    """A pipeline's error as the ServiceError the edge answers with, or None if there is none."""
    found = pipeline_error(err)
    if found is None:
        return None
    return ServiceError(409 if isinstance(found, WeightsMissingError) else 422, found.code, str(found))


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
