"""The pipeline contract (DESIGN section 3).

Every mode is a plain Python object that tests can run on CPU:

    persona = pipeline.prepare(media)                # once per persona
    carry = pipeline.start(persona, controls)        # once per stream
    frames, carry = pipeline.render(persona, carry, audio16k, controls)
    frames, carry = pipeline.flush(persona, carry, controls)   # end of speech
    frames, carry = pipeline.idle(persona, carry, n, controls) # no speech
    carry = plan_clip(pipeline, persona, carry, audio16k, controls)  # one-shot renders

A one-shot render (POST /v1/render) has the whole clip before the first frame.
A pipeline that can use it (Ditto: the reference's offline Audio2Motion) has an
optional `plan(persona, carry, audio16k, controls) -> carry`; the render then
passes the same audio through `render` as usual, in chunks.

Clock: audio is mono float32 at 16 kHz, video 25 fps, so one frame spans
640 samples. `render` takes a whole number of frames of audio and returns as
many frames, possibly delayed by the pipeline's declared lookahead: the
frames it returns are always the next ones in order, so frame k of a stream
shows audio samples [640 k, 640 (k+1)) of that stream.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

SAMPLE_RATE_HZ = 16_000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE_HZ // FPS  # 640

# Emotion tags an LLM may emit: the session vocabulary plus Ditto's classes.
EMOTIONS = (
    "neutral", "happy", "sad", "angry", "surprised", "thinking",
    "disgust", "fear", "surprise", "contempt",
)


class PipelineError(Exception):
    """An error a client can act on. `code` is machine-readable."""

    code = "pipeline_error"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class PersonaError(PipelineError):
    """The media cannot become a persona: no face, several faces, too small."""

    code = "bad_persona"


class WeightsMissingError(PipelineError):
    """A weight file is absent; the message names the command that fetches it."""

    code = "weights_missing"


# How far a `pose` event may turn the head from the portrait's own pose, in degrees: beyond
# these the warp of one portrait tears (LivePortrait's own retargeting UI stays within them).
POSE_LIMITS_DEG = {"pitch": 20.0, "yaw": 30.0, "roll": 20.0}
# `gaze` targets are points in [-1, 1]²: x to the viewer's right, y up; ±1 is the eyes' full
# turn (models/gaze.py), (0, 0) the camera. "away" looks up and to the viewer's right.
GAZE_AWAY = (0.7, 0.45)


@dataclass(frozen=True)
class Controls:
    """What the session asks of the next render chunk.

    emotion: one of EMOTIONS; intensity in [0, 1].
    head_*_deg: extra head pose offsets where a backend supports them (a `pose` event),
      within POSE_LIMITS_DEG; backends ease toward them.
    listening: the user is talking: eye contact, calmer idle motion, a nod now and then.
    gaze_x, gaze_y: where the eyes look, in [-1, 1] (0, 0: the camera); backends ease toward it.
    """

    emotion: str = "neutral"
    intensity: float = 1.0
    head_pitch_deg: float = 0.0
    head_yaw_deg: float = 0.0
    head_roll_deg: float = 0.0
    listening: bool = False
    gaze_x: float = 0.0
    gaze_y: float = 0.0

    def __post_init__(self):
        if self.emotion not in EMOTIONS:
            raise ValueError(f"unknown emotion {self.emotion!r}; expected one of {', '.join(EMOTIONS)}")
        if not 0.0 <= self.intensity <= 1.0:
            raise ValueError(f"intensity must be in [0, 1], got {self.intensity}")
        for axis, limit in POSE_LIMITS_DEG.items():
            value = getattr(self, f"head_{axis}_deg")
            if not -limit <= value <= limit:
                raise ValueError(f"head {axis} must be within ±{limit:g}°, got {value}")
        if not (-1.0 <= self.gaze_x <= 1.0 and -1.0 <= self.gaze_y <= 1.0):
            raise ValueError(f"gaze must be within [-1, 1], got ({self.gaze_x}, {self.gaze_y})")


@dataclass
class PersonaMedia:
    """What a persona is made from: one portrait, or the frames of a short video.

    frames: list of H×W×3 uint8 RGB arrays, all the same size (a portrait is one frame).
    """

    frames: list[np.ndarray]
    fps: float = FPS

    def __post_init__(self):
        if not self.frames:
            raise PersonaError("persona media has no frames", code="empty_media")
        h, w = self.frames[0].shape[:2]
        for f in self.frames:
            if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
                raise PersonaError("frames must be H×W×3 uint8 RGB", code="bad_media")
            if f.shape[:2] != (h, w):
                raise PersonaError("all frames must have the same size", code="bad_media")

    @property
    def size_hw(self) -> tuple[int, int]:
        return self.frames[0].shape[:2]


@dataclass
class Persona:
    """A prepared persona: the media plus whatever a backend computed once.

    features: backend-specific prepared state (crops, latents, keypoints...).
    """

    persona_id: str
    media: PersonaMedia
    features: dict[str, Any] = field(default_factory=dict)

    @property
    def portrait(self) -> np.ndarray:
        """H×W×3 uint8 RGB: the first frame."""
        return self.media.frames[0]


# Carry is each pipeline's own small, picklable state (a dataclass or dict of
# numpy arrays and numbers). The session owns it and passes it back each call,
# so any replica can render a session's next chunk.
Carry = Any


def plan_clip(pipeline, persona: "Persona", carry: Any, audio16k: np.ndarray, controls: "Controls") -> Any:
    """The carry for a one-shot render of `audio16k`: planned by the pipeline if it can."""
    plan = getattr(pipeline, "plan", None)
    return carry if plan is None else plan(persona, carry, audio16k, controls)


@runtime_checkable
class Pipeline(Protocol):
    """The contract every mode implements (see the module docstring)."""

    mode: str
    # Frames of audio a pipeline holds back before it can emit (0 for most).
    lookahead_frames: int

    def prepare(self, media: PersonaMedia, persona_id: str = "") -> Persona: ...

    def start(self, persona: Persona, controls: Controls) -> Carry: ...

    def render(
        self, persona: Persona, carry: Carry, audio16k: np.ndarray, controls: Controls
    ) -> tuple[np.ndarray, Carry]:
        """audio16k: (640·N,) float32 -> frames: N'×H×W×3 uint8 (N' = N once warmed up)."""
        ...

    def flush(self, persona: Persona, carry: Carry, controls: Controls) -> tuple[np.ndarray, Carry]:
        """Emit what the lookahead still holds (end of speech)."""
        ...

    def interrupt(self, persona: Persona, carry: Carry, controls: Controls) -> Carry:
        """Drop what the lookahead holds without rendering it (the user cut the avatar
        off): the next render starts a new utterance, as after `flush`."""
        ...

    def idle(self, persona: Persona, carry: Carry, n: int, controls: Controls) -> tuple[np.ndarray, Carry]:
        """n frames with no speech (breathing, blinks, small head motion where supported)."""
        ...


def check_audio_chunk(audio16k: np.ndarray) -> int:
    """Validate a render chunk and return its number of frames."""
    if audio16k.ndim != 1 or audio16k.dtype != np.float32:
        raise ValueError(f"audio16k must be 1-D float32, got {audio16k.dtype} {audio16k.shape}")
    if len(audio16k) % SAMPLES_PER_FRAME:
        raise ValueError(f"audio16k length {len(audio16k)} is not a multiple of {SAMPLES_PER_FRAME}")
    return len(audio16k) // SAMPLES_PER_FRAME


def empty_frames(persona: Persona) -> np.ndarray:
    """0×H×W×3 uint8: what a pipeline returns when it has nothing to emit."""
    h, w = persona.media.size_hw
    return np.zeros((0, h, w, 3), np.uint8)
