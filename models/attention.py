"""Where the avatar's attention is: listening to the user, and where its eyes look.

A conversation's avatar does more than speak and idle. While the user talks (the agent's
`listening` control) it holds eye contact, calms its idle head motion and nods now and
then; a `gaze` control turns its eyes toward a point. This module turns those controls into
per-frame numbers that any mode moving a LivePortrait-style face (liveportrait, photoreal,
ditto) adds to its own motion:

- `listen`, 0..1 per frame: how far into listening the avatar is. It eases toward 1 when
  listening starts and back to 0 when it stops (first-order lag, `ease_s`), so neither
  change is a jump.
- `idle_scale` per frame: what share of the idle head motion to keep (1 idle, 0.25 at full
  listening).
- `nod_deg` per frame: a nod's extra head pitch (down is positive). Nods are pulses like
  blinks (models/liveportrait/motion.py), on their own seeded schedule: at least 2 s apart,
  4 s on average; they show only as far as the avatar is listening.
- `gaze` (N, 2): where the eyes look, x to the viewer's right and y up in [-1, 1] ((0, 0):
  the camera, i.e. the portrait's own gaze). It eases toward the `gaze` control, or toward
  the camera while listening (eye contact wins).

All of it is a pure function of the carry (`AttentionState`: a few numbers and the nod
schedule's integers) and the controls, so a stream replays identically.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .base import Controls
from .liveportrait.expression import approach
from .liveportrait.motion import BlinkConfig, BlinkState, blink_closures, start_blinks

# A nod is a pulse: 7 frames down, 2 held, 9 back up (0.72 s at 25 fps).
NOD_PULSE = BlinkConfig(mean_interval_s=4.0, min_interval_s=2.0, close_frames=7, hold_frames=2, open_frames=9)
NOD_SEED_SALT = 0x40D5  # nods draw from their own random stream, not the blinks'


@dataclass(frozen=True)
class AttentionConfig:
    listen_ease_s: float = 0.4  # time constant of easing into and out of listening
    idle_scale_listening: float = 0.25  # share of the idle head motion kept while listening
    nod_deg: float = 3.0  # a nod's depth (head pitch, down)
    nod: BlinkConfig = NOD_PULSE
    gaze_ease_s: float = 0.15  # time constant of the eyes' turn (a saccade is faster; this reads as deliberate)


@dataclass(frozen=True)
class AttentionState:
    """Carry: how far into listening (0..1), the gaze shown (x, y), the nod schedule."""

    listen: float = 0.0
    gaze: tuple[float, float] = (0.0, 0.0)
    nods: BlinkState = field(default_factory=lambda: BlinkState(frames_to_next=1))


@dataclass(frozen=True)
class AttentionFrames:
    """Per frame of a chunk: listen (N,), idle_scale (N,), nod_deg (N,), gaze (N, 2)."""

    listen: np.ndarray
    idle_scale: np.ndarray
    nod_deg: np.ndarray
    gaze: np.ndarray


def start_attention(seed: int, fps: float, config: AttentionConfig = AttentionConfig()) -> AttentionState:
    return AttentionState(nods=start_blinks(seed ^ NOD_SEED_SALT, fps, config.nod))


def gaze_target(controls: Controls) -> np.ndarray:
    """(2,) where the eyes should go: the camera while listening, else the gaze control."""
    return np.zeros(2) if controls.listening else np.array([controls.gaze_x, controls.gaze_y])


def attention_frames(state: AttentionState, n: int, controls: Controls, seed: int, fps: float,
                     config: AttentionConfig = AttentionConfig()) -> tuple[AttentionFrames, AttentionState]:
    """The next n frames of attention, and the advanced state."""
    listen = approach(np.array([state.listen]), np.array([float(controls.listening)]), n, fps,
                      config.listen_ease_s)[:, 0]  # (n,)
    gaze = approach(np.array(state.gaze), gaze_target(controls), n, fps, config.gaze_ease_s)  # (n, 2)
    pulses, nods = blink_closures(state.nods, n, seed ^ NOD_SEED_SALT, fps, config.nod)  # (n,) in [0, 1]
    frames = AttentionFrames(
        listen=listen,
        idle_scale=1.0 - (1.0 - config.idle_scale_listening) * listen,
        nod_deg=config.nod_deg * pulses * listen,
        gaze=gaze,
    )
    if n == 0:
        return frames, state
    return frames, AttentionState(listen=float(listen[-1]), gaze=(float(gaze[-1, 0]), float(gaze[-1, 1])), nods=nods)
