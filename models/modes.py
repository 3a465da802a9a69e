"""The modes a session can ask for, and whether each can run here.

A mode names a pipeline factory and the official files it needs, both as
import paths, so listing modes imports no network code.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from .emotion import supports_emotion
from .weights import WeightFile, fetch_command, missing


@dataclass(frozen=True)
class ModeSpec:
    name: str
    description: str
    needs_gpu: bool
    # "module:callable" -> Pipeline, called with the keyword options of serve_config.yaml,
    # the same for every mode: config="official" | "tiny" | {...}, device=, seed=.
    pipeline: str
    weight_files: str | None = None  # "module:callable" -> list[WeightFile]
    test_only: bool = False
    video: bool = True  # False: the server sends audio and cues; the browser draws the avatar
    # Which conversation controls move the avatar: "listening", "gaze", "pose". Every mode
    # accepts `listening` (agents send it blindly) and ignores it where it is not listed;
    # `gaze` and `pose` are refused (409 control_not_supported) where not listed.
    controls: tuple[str, ...] = ()


MOVES_HEAD = ("listening", "gaze", "pose")


MODES: dict[str, ModeSpec] = {
    spec.name: spec
    for spec in (
        # No frames: what "renders" avatar3d on the server is the viseme tracker the session runs.
        ModeSpec("avatar3d", "a 3D avatar drawn in the browser (TalkingHead), lip-synced from the audio "
                             "(no GPU, no weights)", False, "models.visemes.tracker:VisemeTracker", video=False,
                 controls=MOVES_HEAD),
        ModeSpec("still", "the portrait, unanimated, audio passed through (no GPU)", False,
                 "models.still:StillPipeline"),
        ModeSpec("liveportrait", "expression and pose from emotion tags, lips from audio", True,
                 "models.liveportrait.pipeline:LivePortraitPipeline",
                 "models.liveportrait.loading:weight_files", controls=MOVES_HEAD),
        ModeSpec("musetalk", "lip sync on a portrait or short video (MuseTalk 1.5)", True,
                 "models.musetalk.pipeline:MuseTalkPipeline",
                 "models.musetalk.config:weight_files"),
        ModeSpec("photoreal", "LivePortrait's emotion, blinks and head motion with MuseTalk's lips, in one frame",
                 True, "models.photoreal.pipeline:PhotorealPipeline", "models.photoreal.pipeline:weight_files",
                 controls=MOVES_HEAD),
        ModeSpec("ditto", "audio-driven head motion with emotion control (Ditto)", True,
                 "models.ditto.pipeline:DittoPipeline",
                 "models.ditto.config:weight_files", controls=MOVES_HEAD),
        ModeSpec("pattern", "test pattern whose frames encode their audio span", False,
                 "models.testing:PatternPipeline", test_only=True, controls=MOVES_HEAD),
    )
}


@dataclass(frozen=True)
class ModeStatus:
    name: str
    available: bool
    needs_gpu: bool
    description: str
    video: bool = True
    emotion: bool = False
    listening: bool = False  # `listening` moves the avatar (else accepted and ignored)
    gaze: bool = False
    pose: bool = False
    reason: str | None = None
    fetch_command: str | None = None
    missing_files: tuple[str, ...] = ()


def load_ref(ref: str) -> Any:
    """Import "module:attr"."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def mode_files(spec: ModeSpec, options: dict | None = None) -> list[WeightFile]:
    """The files a mode needs; a hook that takes **options may need fewer (seeded test configs)."""
    if not spec.weight_files:
        return []
    hook = load_ref(spec.weight_files)
    takes_options = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(hook).parameters.values())
    return list(hook(**(options or {})) if takes_options else hook())


def mode_status(spec: ModeSpec, options: dict | None = None) -> ModeStatus:
    """Available when its code is built and the files its options need are in the local cache."""
    base = dict(name=spec.name, needs_gpu=spec.needs_gpu, description=spec.description, video=spec.video,
                emotion=supports_emotion(spec.name), **{control: control in spec.controls for control in MOVES_HEAD})
    try:
        load_ref(spec.pipeline)
        files = mode_files(spec, options)
    except (ImportError, AttributeError) as err:
        return ModeStatus(**base, available=False, reason=f"backend not built in this version ({err})")
    absent = missing(files)
    if absent:
        return ModeStatus(
            **base, available=False,
            reason=f"{len(absent)} weight file(s) missing; run `{fetch_command(spec.name)}`",
            fetch_command=fetch_command(spec.name),
            missing_files=tuple(f"{f.repo_id}:{f.filename}" for f in absent),
        )
    return ModeStatus(**base, available=True)


def supports_control(mode: str, control: str) -> bool:
    """Whether `control` ("listening", "gaze", "pose") moves the avatar in `mode`."""
    spec = MODES.get(mode)
    return spec is not None and control in spec.controls


def build_pipeline(mode: str, **options):
    """The mode's pipeline from its options: the factory graph.py gives backend deployments
    (a mode with video only)."""
    return load_ref(MODES[mode].pipeline)(**options)
