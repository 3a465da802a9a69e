"""The typed wire protocol: REST bodies, the WebSocket's messages both ways, and the items a
SessionHost streams to a Router.

Every WebSocket message has a model here: a client's JSON text is a `ControlEvent`, the
server's is a `ServerEvent`, and binary messages are described by CLIENT_BINARY and
SERVER_BINARY. `GET /v1/protocol.json` serves their JSON Schema (`protocol_schema`), and
docs/api.md lists every `type` (tests/unit/test_protocol.py checks that the three agree).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from models.base import GAZE_AWAY, POSE_LIMITS_DEG

FRAME_MAGIC = b"BODF"
FRAME_HEADER = struct.Struct("<4sQ")  # magic, frame index (pts): 12 bytes, then a JPEG
AUDIO_MAGIC = b"BODA"  # avatar3d: the same header with the first sample's index, then PCM16LE 16 kHz
CLIENT_BINARY = ("PCM16LE mono audio at the session's `sample_rate_hz` (set when the session is created), "
                 "in messages of any size (whole samples)")
SERVER_BINARY = (f"one video frame: a {FRAME_HEADER.size}-byte little-endian header, struct format "
                 f"`{FRAME_HEADER.format}` (the magic `{FRAME_MAGIC.decode()}`, then the frame index `pts` "
                 "as a uint64), then a JPEG; in avatar3d mode, speech audio instead: the same header with "
                 f"the magic `{AUDIO_MAGIC.decode()}` and the index of the first sample on the 16 kHz output "
                 "clock (frame i = samples [640 i, 640 (i+1))), then PCM16LE mono at 16 kHz")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _type_first_and_required(schema: dict[str, Any]) -> None:
    """`type` has a default, so code can write `SpeechStarted(pts=3)`; every message still
    carries it, so the schema says it is required."""
    schema["required"] = ["type", *(name for name in schema.get("required", []) if name != "type")]


class Message(Strict):
    """A WebSocket JSON message: its `type` says which."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_type_first_and_required)


# ---- client -> server: WebSocket text, or the body of POST /v1/sessions/{id}/events ----
class EmotionEvent(Message):
    """Change the emotion from now on."""

    type: Literal["emotion"] = "emotion"
    value: str = Field(description="an emotion tag or a common synonym (docs/api.md#emotions)")
    intensity: float = Field(1.0, ge=0.0, le=1.0)


class InterruptEvent(Message):
    """Drop buffered audio and take back the frames not yet shown."""

    type: Literal["interrupt"] = "interrupt"


class EndOfSpeechEvent(Message):
    """The utterance is over: render what the backend's lookahead holds."""

    type: Literal["end_of_speech"] = "end_of_speech"


GESTURES = ("handup", "index", "ok", "thumbup", "thumbdown", "side", "shrug", "namaste", "yes", "no")
MAX_TEXT_CHARS = 2000
MAX_WORDS = 500


class TextEvent(Message):
    """avatar3d: the sentence being spoken, so that its forced alignment refines the lip-sync
    cues of the utterance not yet started (or the next one)."""

    type: Literal["text"] = "text"
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)


class WordsEvent(Message):
    """avatar3d: a TTS's word timings for the next utterance (ms from its first sample), passed
    through as a `words` event for TalkingHead's own word lip sync."""

    type: Literal["words"] = "words"
    words: list[Annotated[str, Field(max_length=100)]] = Field(max_length=MAX_WORDS)
    wtimes: list[Annotated[int, Field(ge=0)]] = Field(max_length=MAX_WORDS)
    wdurations: list[Annotated[int, Field(ge=0)]] = Field(max_length=MAX_WORDS)

    @model_validator(mode="after")
    def _same_lengths(self) -> "WordsEvent":
        if not len(self.words) == len(self.wtimes) == len(self.wdurations):
            raise ValueError("words, wtimes and wdurations must have the same length")
        return self


class GestureEvent(Message):
    """avatar3d: play a hand gesture or a nod."""

    type: Literal["gesture"] = "gesture"
    name: Literal[GESTURES]  # type: ignore[valid-type]
    duration_s: float = Field(3.0, gt=0.0, le=30.0)
    mirror: bool = False


class ListeningEvent(Message):
    """The user started (`active`: true) or stopped talking: the avatar listens (eye contact,
    calmer idle motion, a nod now and then), then eases back to idle."""

    type: Literal["listening"] = "listening"
    active: bool


GAZE_TARGETS = ("camera", "away", "point")


class GazeEvent(Message):
    """Where the eyes look: the camera, away (up and aside), or a point (`x`, `y`)."""

    type: Literal["gaze"] = "gaze"
    target: Literal[GAZE_TARGETS]  # type: ignore[valid-type]
    x: float | None = Field(None, ge=-1.0, le=1.0, description="`point`: to the viewer's right, −1 to 1 "
                                                                "(±1: the eyes' full turn)")
    y: float | None = Field(None, ge=-1.0, le=1.0, description="`point`: up, −1 to 1")

    @model_validator(mode="after")
    def _point_has_coordinates(self) -> "GazeEvent":
        if (self.target == "point") != (self.x is not None and self.y is not None):
            raise ValueError("`x` and `y` go with target `point`, and only with it")
        return self

    def point(self) -> tuple[float, float]:
        """The gaze as a point in [-1, 1]² ((0, 0): the camera)."""
        if self.target == "point":
            return self.x, self.y
        return GAZE_AWAY if self.target == "away" else (0.0, 0.0)


class PoseEvent(Message):
    """Turn the head by these angles from the portrait's own pose (eased); zeros: back to rest."""

    type: Literal["pose"] = "pose"
    yaw_deg: float = Field(0.0, ge=-POSE_LIMITS_DEG["yaw"], le=POSE_LIMITS_DEG["yaw"],
                           description="to the viewer's right is positive")
    pitch_deg: float = Field(0.0, ge=-POSE_LIMITS_DEG["pitch"], le=POSE_LIMITS_DEG["pitch"],
                             description="down is positive")
    roll_deg: float = Field(0.0, ge=-POSE_LIMITS_DEG["roll"], le=POSE_LIMITS_DEG["roll"])


ControlEvent = Annotated[Union[EmotionEvent, InterruptEvent, EndOfSpeechEvent, TextEvent, WordsEvent,
                               GestureEvent, ListeningEvent, GazeEvent, PoseEvent], Field(discriminator="type")]
CONTROL_EVENT = TypeAdapter(ControlEvent)


# ---- server -> client: WebSocket text ----
class ServerEvent(Message):
    """A JSON text message to a client. Fields that are None are left out of it."""

    def wire(self) -> dict[str, Any]:
        """The JSON object sent: None fields (a `pts` or `reason` not given) left out."""
        return self.model_dump(mode="json", exclude_none=True)

    def wire_text(self) -> str:
        return json.dumps(self.wire())


class SessionReady(ServerEvent):
    """First on every stream: what the session streams now."""

    type: Literal["session_ready"] = "session_ready"
    session_id: str
    mode: str = Field(description="the mode streaming now (still while a neural backend loads)")
    requested_mode: str
    fps: int
    sample_rate_hz: int = Field(description="the rate of the PCM the client sends")
    placement: dict[str, Any] | None = Field(None, description="where the VRAM controller placed the session")
    provenance: bool | None = Field(None, description="frames carry the session's invisible mark (false: the "
                                                      "operator turned provenance off)")
    avatar_url: str | None = Field(None, description="avatar3d: the GLB the page loads")
    output_sample_rate_hz: int | None = Field(None, description="avatar3d: the rate of the audio sent (16000)")


class ClockEvent(ServerEvent):
    """Client pacing only, first: frame `pts` is due at `t0 + pts / fps` (server wall clock, s)."""

    type: Literal["clock"] = "clock"
    t0: float
    fps: int


class ModeChanged(ServerEvent):
    """The mode streaming changes: its backend is ready, or the session falls back to still."""

    type: Literal["mode_changed"] = "mode_changed"
    mode: str
    reason: str
    pts: int | None = Field(None, description="the first frame in the new mode")


class SpeechStarted(ServerEvent):
    """Speech starts at frame `pts` (server pacing: sent when that frame is due)."""

    type: Literal["speech_started"] = "speech_started"
    pts: int | None = Field(None, description="the first frame of speech")
    sample: int | None = Field(None, description="avatar3d: the utterance's first sample on the 16 kHz clock")


class SpeechEnded(ServerEvent):
    """Speech ends: the pause rule, `end_of_speech`, or an interrupt."""

    type: Literal["speech_ended"] = "speech_ended"
    reason: str | None = Field(None, description="`interrupted` when an interrupt ended it")
    pts: int | None = Field(None, description="the first frame after speech")


class RetractEvent(ServerEvent):
    """Client pacing only: frames from `from_pts` on are taken back; new ones with those pts follow."""

    type: Literal["retract"] = "retract"
    from_pts: int
    sample: int | None = Field(None, description="avatar3d: audio and cues from this sample on are void")


class VisemesEvent(ServerEvent):
    """avatar3d: lip-sync cues in TalkingHead's shape, always before the audio they cover;
    times in ms from the utterance's first sample (`sample`)."""

    type: Literal["visemes"] = "visemes"
    sample: int
    visemes: list[str]
    vtimes: list[int]
    vdurations: list[int]


class WordsCue(ServerEvent):
    """avatar3d: a TTS's word timings (the client's `words`), for TalkingHead's word mode."""

    type: Literal["words"] = "words"
    sample: int
    words: list[str]
    wtimes: list[int]
    wdurations: list[int]


class MoodEvent(ServerEvent):
    """avatar3d: the emotion as TalkingHead shows it: a mood scaled by intensity, and an
    expression animation (an emoji) to play between utterances where no mood fits."""

    type: Literal["mood"] = "mood"
    emotion: str
    intensity: float
    mood: str
    expression: str | None = None
    speaking: bool = False


class GestureCue(ServerEvent):
    """avatar3d: play a gesture (the client's `gesture`)."""

    type: Literal["gesture"] = "gesture"
    name: str
    duration_s: float
    mirror: bool


class ListeningCue(ServerEvent):
    """avatar3d: the client's `listening`, for the page (eye contact and nods)."""

    type: Literal["listening"] = "listening"
    active: bool


class GazeCue(ServerEvent):
    """avatar3d: the client's `gaze`, resolved to a point (`x`, `y` in [-1, 1]; 0, 0: the camera)."""

    type: Literal["gaze"] = "gaze"
    target: str
    x: float
    y: float


class PoseCue(ServerEvent):
    """avatar3d: the client's `pose`: head angles from rest, in degrees."""

    type: Literal["pose"] = "pose"
    yaw_deg: float
    pitch_deg: float
    roll_deg: float


class ErrorEvent(ServerEvent):
    """A message was refused, or the session failed or was shed (it goes on in still mode)."""

    type: Literal["error"] = "error"
    code: str = Field(description="the machine code, as in HTTP error bodies")
    error: str = Field(description="the reason, under the key HTTP error bodies use")
    reason: str = Field(description="the reason, under the key every other event uses")


class WarningEvent(ServerEvent):
    """Advice about the persona, e.g. several faces (the largest used)."""

    type: Literal["warning"] = "warning"
    code: str
    reason: str


class SessionClosed(ServerEvent):
    """The last message: the session ended."""

    type: Literal["session_closed"] = "session_closed"
    reason: str


ServerMessage = Annotated[
    Union[SessionReady, ClockEvent, ModeChanged, SpeechStarted, SpeechEnded, RetractEvent, ErrorEvent,
          WarningEvent, SessionClosed, VisemesEvent, WordsCue, MoodEvent, GestureCue, ListeningCue, GazeCue,
          PoseCue],
    Field(discriminator="type")]
SERVER_EVENT = TypeAdapter(ServerMessage)


def protocol_schema() -> dict[str, Any]:
    """The JSON Schema of the WebSocket protocol, both ways (GET /v1/protocol.json)."""
    client = CONTROL_EVENT.json_schema()
    server = SERVER_EVENT.json_schema(mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "LockN Bod WebSocket protocol: /v1/sessions/{id}/ws",
        "description": "Text messages are JSON objects; `type` says which. Binary messages are media. "
                       "The server relays frames when due (`?pacing=server`, the default) or as rendered "
                       "(`?pacing=client`: a `clock` event first, `retract` events, every event with its `pts`).",
        "$defs": client.pop("$defs") | server.pop("$defs"),
        "client_to_server": {"text": client, "binary": {"description": CLIENT_BINARY}},
        "server_to_client": {"text": server, "binary": {"description": SERVER_BINARY,
                                                       "x-struct": FRAME_HEADER.format,
                                                       "x-magic": FRAME_MAGIC.decode()}},
    }


# ---- SessionHost -> Router: what a viewer's stream carries (pickled across Ray) ----
@dataclass
class FramesItem:
    """Frames rendered ahead: frame `pts[i]` is due at `t0 + pts[i] / FPS`."""

    t0: float
    pts: list[int]
    jpegs: list[bytes]
    audio: np.ndarray | None = None  # N×640 float32 output audio, for viewers that asked for it
    frames: np.ndarray | None = None  # N×H×W×3 uint8 RGB, only for viewers in the host's process


@dataclass
class EventItem:
    """An event for the client, sent just before the frame it applies at (its `pts`), or at once."""

    event: ServerEvent
    t0: float | None = None  # the session clock's origin; None where the sender does not know it

    @property
    def pts(self) -> int | None:
        return getattr(self.event, "pts", None)


@dataclass
class AudioItem:
    """avatar3d: speech audio from `sample` on (16 kHz output clock), sent ahead of time."""

    sample: int
    pcm16: bytes  # PCM16LE mono 16 kHz

    def wire(self) -> bytes:
        """The WebSocket message: `<4sQ` header (BODA, first sample) then the PCM."""
        return FRAME_HEADER.pack(AUDIO_MAGIC, self.sample) + self.pcm16


@dataclass
class RetractItem:
    """An interrupt (or speech starting) took back the frames from `from_pts` on."""

    from_pts: int


@dataclass
class EndItem:
    """The session closed: the stream's last item."""

    reason: str = "closed"


HostItem = Union[FramesItem, AudioItem, EventItem, RetractItem, EndItem]


# ---- REST bodies ----
class CreateSession(Strict):
    persona_id: str | None = Field(None, description="the portrait; every mode but avatar3d needs one")
    avatar_id: str | None = Field(None, description="avatar3d: an uploaded avatar; the default one when absent")
    mode: str = "still"
    emotion: str = "neutral"
    intensity: float = Field(1.0, ge=0.0, le=1.0)
    sample_rate_hz: int = Field(16000, ge=8000, le=192000)


class SessionInfo(BaseModel):
    session_id: str
    persona_id: str  # avatar3d: the avatar's id (`default` for the built-in one)
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
    listening: bool = False
    gaze: tuple[float, float] = (0.0, 0.0)  # where the eyes are asked to look, x right, y up
    pose_deg: dict[str, float] = {}  # the head offsets asked for: pitch, yaw, roll
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
