"""The ditto mode: audio -> HuBERT features -> LMDM motion -> LivePortrait render -> paste-back.

Per render chunk:
    audio (640 N samples) -> StreamingFeatures -> MotionStream windows -> motion frames
    motion frame -> MotionStitch (source-relative, blinks, pose controls, stitching)
                 -> W + G (LivePortrait networks, Ditto's files) -> paste into the portrait

Built from JSON-able options (serve_config.yaml `backends.ditto.options`):

    DittoPipeline(config="official" | "tiny" | {"preset": ..., field: value, ...},
                  device="auto" | "cuda" | "cpu", seed=0, cache_dir="/path/to/hf-cache")

"official" loads every file of `DittoFiles` through models.weights; "tiny" is file-free
(models/ditto/testing.py: seeded tiny networks, HuBERT and face stand-ins) for tests.
On CUDA the renderer (F, M, W, G) runs under fp16 autocast and LMDM and the stitching
MLP in float32, as the reference's PyTorch path does.

Latency (overlap = frames each 80-frame LMDM window shares with the previous one).
A motion frame leaves once the window after it has blended it, so motion for audio
frame 0 needs 2 * (80 - overlap) frames of features; HuBERT emits features 5 frames
at a time and needs 2 frames + 80 samples of later audio, so the first frame is
possible after 285 + 200 * (ceil(2 * (80 - overlap) / 5) - 1) ms of audio:

    overlap   70     75     76     77     78
    delay    885    485    485    485    285 ms   (algorithmic, before compute)
    windows/s 2.5    5     6.25   8.3   12.5     (LMDM cost grows with it)

76 and 77 only add LMDM work (HuBERT's 5-frame hop hides their shorter window
hop) and 78 costs 2.5x the LMDM work of 75 with 2-frame seams between windows.
Default: 75, the top of the maintainers' online range (70-75): under 500 ms with
the largest seams and the least compute of the settings that make it. With the
session's 200 ms render chunks, the first frames leave with the third chunk
(600 ms of audio, 10 frames held), and the lookahead the pipeline declares is the
most frames it ever holds for any chunking: 12 at overlap 75
(`lookahead_frames_for`). Flush renders what it holds, cut to the frames of audio
received.

Between utterances (flush -> the next render) a new motion stream starts from the
silence buffer, conditioned on the pose the face shows, so the head does not jump.

Idle (no speech): no LMDM. The last frame's motion is held, its lips relax to the
rest shape (d0's), the head sways slowly (LivePortrait's idle sinusoids, eased in
and out so neither speech nor idle starts with a jump) and the official blink
clip keeps blinking. Cost: the renderer only. The emotion of the last utterance
stays on the face; a new emotion shows with the next speech, through LMDM.

Emotion: tag + intensity -> Ditto's 8-class vector (emotion.py), approached with a
time constant (`emotion_time_constant_s`) per feature row, from the next chunk on.
Head pose: Controls.head_*_deg are added to every frame (MotionStitch controls), a
change eased in with the same time constant.

Everything between chunks is in `DittoCarry` (plain data, picklable).

One-shot renders (`plan`): the whole clip is known, so its motion comes from the
reference's offline Audio2Motion instead (`MotionStream.whole`: whole-clip HuBERT
features, windows every 70 frames from frame 0, 50 DDIM steps, no clipping, the
whole sequence smoothed again), with the clip's emotion held constant; `render`
then draws the planned motion chunk by chunk. The stitcher's d0 is the clip's
first motion frame, as online. Fewer LMDM windows than online (one per 70 frames
against one per 5), each with 5x the steps.

Eyes: LMDM's eye condition (openness, gaze) comes from MediaPipe's 478-point face
mesh on the source crop (face_mesh.py, eyes.py; the `ditto-eyes` extra). Without it,
or without a face in the crop, the eyes are neutral defaults and `prepare` warns
(`neutral_eyes`); `prepare(eye_open=..., eye_ball=...)` overrides both.
"""
from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..compiled import compile_networks
from ..options import override_fields, resolve_device
from ..base import FPS, Controls, Persona, PersonaMedia, check_audio_chunk, empty_frames
from ..face.crop import SOURCE_CROP, CropParams, crop_image, network_input_256
from ..face.mask import ditto_mask
from ..face.paste_back import paste_back, warp_mask
from ..liveportrait.config import LivePortraitConfig
from ..liveportrait.decode import stack_sources, to_uint8, warp_decode
from ..liveportrait.loading import LivePortraitNetworks
from ..attention import AttentionConfig, AttentionState, attention_frames, start_attention
from ..liveportrait.expression import gaze_offsets, pose_offsets_deg
from ..liveportrait.motion import IdleMotionConfig, idle_head_deg
from ..liveportrait.pipeline import network_config
from ..liveportrait.source import autocast_for, image_to_tensor
from .audio import (
    CHUNK_FRAMES, CHUNK_SAMPLES, HOP_SAMPLES, ONLINE_PAD_SAMPLES, SAMPLES_PER_FRAME, Hubert,
    StreamingFeatures, wav2feat,
)
from .config import MODE, OFFLINE_STREAM, DittoFiles, StreamConfig, clip_from_cfg, read_cfg_pkl
from .emotion import controls_to_ditto, emotion_vector
from .eyes import eye_attributes
from .lmdm import LMDMConfig, MotionDecoder
from .motion import LIP_KP, Info, MotionStitch, transform_keypoint, vec_to_info
from .sampler import DDIMSampler, SeededNoise
from .stream import POSE_T_DIMS, MotionStream, SourceCond, StreamCarry

DEFAULT_EYE_OPEN = (0.3, 0.3)  # where no face mesh is available (see face_mesh.py)
DEFAULT_EYE_BALL = (0.0,) * 6  # looking straight ahead
DEFAULT_OVERLAP = 75
EXP_START = 1 + 3 * 66 + 3  # column of exp in a 265 motion row
LIP_COLS = np.array([EXP_START + 3 * k + a for k in LIP_KP for a in range(3)])  # exp dims of the lip keypoints


@dataclass(frozen=True)
class DittoIdleConfig:
    """Idle frames: the held last motion, lips relaxing, a slow sway."""

    lip_release: float = 0.7  # per frame, the lips' distance from rest is multiplied by this
    sway: IdleMotionConfig = field(default_factory=IdleMotionConfig)  # degrees, per axis
    sway_time_constant_s: float = 0.4  # sway eases in (idle) and out (speech) with this


@dataclass(frozen=True)
class DittoPipelineConfig:
    preset: str = "official"  # "official": the HF files; "tiny": seeded, file-free
    lmdm: LMDMConfig = field(default_factory=LMDMConfig)
    networks: LivePortraitConfig = field(default_factory=LivePortraitConfig)
    stream: StreamConfig = field(default_factory=lambda: StreamConfig(overlap=DEFAULT_OVERLAP))
    offline_stream: StreamConfig = OFFLINE_STREAM  # one-shot renders (`plan`)
    crop: CropParams = SOURCE_CROP
    idle: DittoIdleConfig = field(default_factory=DittoIdleConfig)
    emotion_time_constant_s: float = 0.3
    attention: AttentionConfig = field(default_factory=AttentionConfig)  # listening and gaze
    max_batch: int = 8  # frames per W + G batch
    fp16: bool = True  # renderer under autocast, on CUDA only
    compile: str | None = None  # torch.compile of W, G and the stitching MLP (models/compiled.py); None: off
    clip: np.ndarray | None = None  # (2, 265) v_min/v_max from the official cfg, if it has them
    blink_clip: np.ndarray | None = None  # (15, 63) exp deltas of one blink (official cfg)


@dataclass
class DittoSource:
    """What `render` needs from a persona, computed once."""

    f_s: torch.Tensor  # 1 x 32 x 16 x 64 x 64 appearance volume
    x_s_info: Info  # raw motion of the source (angles as 66-bin logits), numpy
    cond: SourceCond
    M_c2o: np.ndarray  # 3 x 3 crop(512) -> portrait
    mask: np.ndarray  # H x W x 3 paste-back mask
    seed: int  # of this persona's blinks and sway


@dataclass
class DittoCarry:
    features: object  # audio.FeatureCarry
    motion: StreamCarry | None  # None between utterances
    stitch: MotionStitch
    emotion: np.ndarray  # (8,) condition of the last feature row
    last: np.ndarray  # (265,) motion of the last frame shown (output format, before sway)
    d0_from_stream: bool = False  # stitch.d0 is the first stream's first frame (else the source)
    frames_in: int = 0  # frames of real audio received in this utterance
    frames_out: int = 0  # ... and emitted
    idle_clock: int = 0  # idle frames so far (phase of the sway)
    sway_deg: np.ndarray = field(default_factory=lambda: np.zeros(3))  # sway of the last frame
    head_deg: np.ndarray = field(default_factory=lambda: np.zeros(3))  # Controls.head_* offsets shown, eased
    planned: np.ndarray | None = None  # (n, 265) a one-shot render's motion not yet drawn (`plan`)
    attention: AttentionState = field(default_factory=AttentionState)  # listening and gaze shown now


def _frames_of_features(audio_frames: int) -> int:
    """Features HuBERT has delivered after `audio_frames` frames of audio (5 per chunk; the
    first chunk completes after CHUNK_SAMPLES - ONLINE_PAD_SAMPLES = 4560 samples)."""
    first = CHUNK_SAMPLES - ONLINE_PAD_SAMPLES
    return CHUNK_FRAMES[1] * max(0, (audio_frames * SAMPLES_PER_FRAME - first) // HOP_SAMPLES + 1)


def lookahead_frames_for(overlap: int, seq_frames: int = 80) -> int:
    """The most frames the stream holds back, over every way of chunking the audio
    (all windows but the last have been emitted)."""
    valid = seq_frames - overlap
    held = [f - max(0, (_frames_of_features(f) // valid - 1) * valid) for f in range(1, 10 * (valid + 5))]
    return max(held)


def first_frame_audio_ms(overlap: int, seq_frames: int = 80) -> float:
    """Audio (ms) needed before motion for frame 0 can leave: 2 windows' new frames of
    features, which HuBERT delivers 5 at a time, 2 frames + 80 samples late."""
    need = 2 * (seq_frames - overlap)
    samples = CHUNK_SAMPLES - ONLINE_PAD_SAMPLES + (math.ceil(need / CHUNK_FRAMES[1]) - 1) * HOP_SAMPLES
    return samples / 16.0


class DittoPipeline:
    """models.base.Pipeline for the ditto mode; see the module docstring."""

    mode = MODE

    def __init__(self, config: DittoPipelineConfig | str | dict | None = None, device: str | None = None,
                 seed: int = 0, cache_dir: str | Path | None = None, *, lmdm: MotionDecoder | None = None,
                 networks: LivePortraitNetworks | None = None, hubert: Hubert | None = None, face=None,
                 face_mesh=None, compile: str | None = None):
        """`lmdm`, `networks`, `hubert`, `face`, `face_mesh` are injected by tests; the rest
        is loaded from the config's preset (see `load_parts`). compile: torch.compile of the
        renderer (None: the config's, off by default; models/compiled.py)."""
        config = pipeline_config(config)
        config = config if compile is None else replace(config, compile=compile)
        target = resolve_device(device)
        if lmdm is None or networks is None or hubert is None or face is None:
            parts, config = load_parts(config, target, seed, cache_dir)
            lmdm, networks = lmdm or parts["lmdm"], networks or parts["networks"]
            hubert, face = hubert or parts["hubert"], face or parts["face"]
            face_mesh = face_mesh or parts.get("face_mesh")
        self.face_mesh = face_mesh  # None: neutral eyes for every persona
        self.config, self.seed = config, seed
        self.lmdm, self.networks, self.hubert, self.face = lmdm.to(target).eval(), networks.to(target), hubert, face
        self.compiled = compile_networks(self.networks, config.compile)  # off by default (models/compiled.py)
        self.sampler = DDIMSampler(self.lmdm, config.stream.sampling_steps, SeededNoise(seed))
        self.offline_sampler = DDIMSampler(self.lmdm, config.offline_stream.sampling_steps, SeededNoise(seed))
        self.features = StreamingFeatures(hubert)
        self.lookahead_frames = lookahead_frames_for(config.stream.overlap, lmdm.cfg.seq_frames)
        self._silence: np.ndarray | None = None

    # ---- contract -------------------------------------------------------------------

    def prepare(self, media: PersonaMedia, persona_id: str = "", eye_open=None, eye_ball=None) -> Persona:
        """`eye_open` (2,) and `eye_ball` (6,) override what the face mesh measures."""
        portrait = media.frames[0]
        face = self.face.analyse(portrait)
        crop = crop_image(portrait, face.points203, self.config.crop)  # the reference crops on 203 points
        warnings = [{"code": w.code, "message": w.message} for w in face.warnings]
        if eye_open is None or eye_ball is None:
            measured_open, measured_ball, warning = self._source_eyes(crop.image)
            eye_open = measured_open if eye_open is None else eye_open
            eye_ball = measured_ball if eye_ball is None else eye_ball
            warnings += [warning] if warning else []
        with torch.no_grad(), autocast_for(self.networks, self.config.fp16):
            x = image_to_tensor(network_input_256(crop.image), self.networks.device)
            f_s = self.networks.appearance(x)
            raw = self.networks.motion(x)
        info = {k: raw[k].float().cpu().numpy().reshape(1, -1) for k in ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")}
        source = DittoSource(
            f_s=f_s, x_s_info=info, cond=SourceCond.from_info(info, np.asarray(eye_open), np.asarray(eye_ball)),
            M_c2o=crop.M_c2o, mask=warp_mask(ditto_mask(self.config.crop.dsize), crop.M_c2o, portrait.shape[:2]),
            seed=(self.seed ^ zlib.crc32(persona_id.encode())) & 0xFFFFFFFF,
        )
        return Persona(persona_id=persona_id, media=media, features={MODE: source, "warnings": warnings})

    def _source_eyes(self, crop_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict | None]:
        """LMDM's eye condition from the source crop's face mesh: (open (2,), ball (6,), warning)."""
        points = self.face_mesh.points(crop_rgb) if self.face_mesh is not None else None
        if points is None:
            why = "no face mesh runner (install lockn-bod[ditto-eyes])" if self.face_mesh is None \
                else "the face mesh found no face in the crop"
            return np.array(DEFAULT_EYE_OPEN), np.array(DEFAULT_EYE_BALL), {
                "code": "neutral_eyes", "message": f"{why}: eye openness and gaze are neutral defaults"}
        openness, ball = eye_attributes(points)
        return openness[0], ball[0], None

    def start(self, persona: Persona, controls: Controls) -> DittoCarry:
        source: DittoSource = persona.features[MODE]
        rest = source.cond.motion.copy()
        rest[0] += 1  # LMDM space -> output format (scale itself)
        stitch = MotionStitch(source.x_s_info, blink_clip=self.config.blink_clip, blink_open_n=0,
                              rng=random.Random(source.seed))
        stitch.d0 = vec_to_info(rest.copy())  # until the first stream's first frame replaces it
        return DittoCarry(features=self.features.start(), motion=None, stitch=stitch,
                          emotion=emotion_vector(controls.emotion, controls.intensity), last=rest,
                          attention=start_attention(source.seed, FPS, self.config.attention))

    def plan(self, persona: Persona, carry: DittoCarry, audio16k: np.ndarray, controls: Controls) -> DittoCarry:
        """A one-shot render's whole clip: its motion, from the offline scheme (module docstring)."""
        source: DittoSource = persona.features[MODE]
        check_audio_chunk(audio16k)
        feats = wav2feat(self.hubert, np.asarray(audio16k, np.float32))  # (n, 1024)
        emotion, _ = controls_to_ditto(controls)
        stream = MotionStream(self.offline_sampler, self.config.offline_stream, source.cond)  # no clipping
        carry.planned = stream.whole(feats, emotion)  # (n, 265) output format
        if len(carry.planned):
            carry.stitch.d0 = vec_to_info(carry.planned[0].copy())
            carry.d0_from_stream = True
        return carry

    def render(self, persona: Persona, carry: DittoCarry, audio16k: np.ndarray, controls: Controls):
        if carry.planned is not None:
            return self._draw_planned(persona, carry, check_audio_chunk(audio16k), controls)
        carry.frames_in += check_audio_chunk(audio16k)
        feats, carry.features = self.features.feed(carry.features, audio16k)
        return self._advance(persona, carry, feats, controls, end=False)

    def render_batch(self, jobs: list[tuple[Persona, DittoCarry, np.ndarray, Controls]]
                     ) -> list[tuple[np.ndarray, DittoCarry]]:
        """Several sessions' chunks at once (the backend's cross-session batching): each job's
        (persona, carry, audio16k, controls) gives what `render` would. Audio features and the
        motion model run per session; every session's frames go through W+G together."""
        keypoints = []  # per job: (x_s 1x21x3, x_d n x 21 x 3)
        for persona, carry, audio16k, controls in jobs:
            n = check_audio_chunk(audio16k)
            if carry.planned is not None:
                keypoints.append(self._planned_keypoints(persona, carry, n, controls))
                continue
            carry.frames_in += n
            feats, carry.features = self.features.feed(carry.features, audio16k)
            keypoints.append(self.motion_frames(persona, carry, feats, controls, end=False))
        drawn = self._render_many([(persona, x_s, x_d) for (persona, *_), (x_s, x_d) in zip(jobs, keypoints)])
        return [(frames, carry) for frames, (_, carry, *_) in zip(drawn, jobs)]

    def flush(self, persona: Persona, carry: DittoCarry, controls: Controls):
        if carry.planned is not None:  # a one-shot render: what is left of its plan
            frames, carry = self._draw_planned(persona, carry, len(carry.planned), controls)
            return frames, self._new_utterance(carry)
        if carry.motion is None and carry.frames_in == 0:
            return empty_frames(persona), carry  # no utterance in progress
        feats, carry.features = self.features.flush(carry.features)
        frames, carry = self._advance(persona, carry, feats, controls, end=True)
        return frames, self._new_utterance(carry)

    def interrupt(self, persona: Persona, carry: DittoCarry, controls: Controls):
        """Up to the lookahead's 12 frames and their LMDM windows are dropped, not drawn;
        the head holds the last drawn motion and relaxes from there."""
        return self._new_utterance(carry)

    def _new_utterance(self, carry: DittoCarry) -> DittoCarry:
        carry.features, carry.motion, carry.planned = self.features.start(), None, None
        carry.frames_in = carry.frames_out = 0
        return carry

    def idle(self, persona: Persona, carry: DittoCarry, n: int, controls: Controls):
        """n frames without LMDM: the held motion, lips relaxing, sway and blinks. The
        speech stream is left alone (the session may call this while it fills)."""
        if n <= 0:
            return empty_frames(persona), carry
        x_s, x_d = self.idle_keypoints(persona, carry, n, controls)
        return self._render(persona, x_s, x_d), carry

    def idle_keypoints(self, persona: Persona, carry: DittoCarry, n: int,
                       controls: Controls) -> tuple[np.ndarray, np.ndarray]:
        """The keypoints of n idle frames, (x_s 1x21x3, x_d n x 21 x 3); advances the carry."""
        source: DittoSource = persona.features[MODE]
        rows, sway = [], []
        rest_lips = carry.stitch.d0["exp"].reshape(-1)[LIP_COLS - EXP_START]
        carry.last = carry.last.copy()  # a carry from Ray's object store is read-only
        for _ in range(n):
            carry.last[LIP_COLS] = rest_lips + (carry.last[LIP_COLS] - rest_lips) * self.config.idle.lip_release
            target = idle_head_deg(np.array([carry.idle_clock]), source.seed, FPS, self.config.idle.sway)[0]
            carry.sway_deg = self._ease(carry.sway_deg, target)
            carry.idle_clock += 1
            rows.append(carry.last.copy())
            sway.append(carry.sway_deg.copy())
        return self._keypoints(source, carry, np.stack(rows), np.stack(sway), controls)

    # ---- stages ---------------------------------------------------------------------

    def _stream(self, source: DittoSource) -> MotionStream:
        return MotionStream(self.sampler, self.config.stream, source.cond, self.config.clip)

    def silence_features(self) -> np.ndarray:
        """(overlap, 1024): features of silence, the buffer every stream starts with (computed once)."""
        if self._silence is None:
            self._silence = wav2feat(self.hubert, np.zeros(self.config.stream.overlap * SAMPLES_PER_FRAME, np.float32))
        return self._silence

    def _start_stream(self, source: DittoSource, carry: DittoCarry) -> StreamCarry:
        """A new utterance: the silence buffer, conditioned on the pose shown now (dims
        [0, 202): scale, angles, t; the rest from the source, as fix_kp_cond does)."""
        stream = self._stream(source).start(self.silence_features(), carry.emotion)
        shown = carry.last - np.eye(1, len(carry.last), 0)[0]  # output format -> LMDM space
        stream.kp_cond[:POSE_T_DIMS] = shown[:POSE_T_DIMS]
        return stream

    def _emotion_rows(self, carry: DittoCarry, controls: Controls, n: int) -> np.ndarray:
        """(n, 8): the emotion condition of n new feature rows, approaching the controls'."""
        target, _ = controls_to_ditto(controls)
        keep = math.exp(-1.0 / (self.config.emotion_time_constant_s * FPS))
        rows = []
        for _ in range(n):
            carry.emotion = (target + (carry.emotion - target) * keep).astype(np.float32)
            rows.append(carry.emotion)
        return np.stack(rows) if rows else np.zeros((0, 8), np.float32)

    def motion_frames(self, persona: Persona, carry: DittoCarry, feats: np.ndarray, controls: Controls,
                      end: bool) -> tuple[np.ndarray, np.ndarray]:
        """New features -> (x_s 1x21x3, x_d n x 21 x 3) keypoints of the frames now ready."""
        source: DittoSource = persona.features[MODE]
        if carry.motion is None:
            carry.motion = self._start_stream(source, carry)
        stream = self._stream(source)
        motion, carry.motion = stream.feed(carry.motion, feats, self._emotion_rows(carry, controls, len(feats)))
        if end:
            tail, carry.motion = stream.flush(carry.motion)
            motion = np.concatenate([motion, tail])
        motion = motion[: max(0, carry.frames_in - carry.frames_out)]  # drop padding past the audio
        carry.frames_out += len(motion)
        if not carry.d0_from_stream and carry.motion.d0 is not None:
            # online, the reference makes the stream's first frame the stitcher's d0
            carry.stitch.d0 = vec_to_info(carry.motion.d0.copy())
            carry.d0_from_stream = True
        return self._speech_keypoints(persona, carry, motion, controls)

    def _draw_planned(self, persona: Persona, carry: DittoCarry, n: int, controls: Controls):
        """The next n frames of the planned motion (the audio passed to `render` only counts them)."""
        return self._render(persona, *self._planned_keypoints(persona, carry, n, controls)), carry

    def _planned_keypoints(self, persona: Persona, carry: DittoCarry, n: int,
                           controls: Controls) -> tuple[np.ndarray, np.ndarray]:
        """The keypoints of the planned motion's next n frames (a one-shot render)."""
        motion, carry.planned = carry.planned[:n], carry.planned[n:]
        return self._speech_keypoints(persona, carry, motion, controls)

    def _speech_keypoints(self, persona: Persona, carry: DittoCarry, motion: np.ndarray,
                          controls: Controls) -> tuple[np.ndarray, np.ndarray]:
        """Speech motion (n, 265) -> keypoints, the idle sway easing out under it."""
        sway = []
        for _ in motion:
            carry.sway_deg = self._ease(carry.sway_deg, np.zeros(3))
            sway.append(carry.sway_deg.copy())
        if len(motion):
            carry.last = motion[-1].copy()
        return self._keypoints(persona.features[MODE], carry, motion, np.array(sway).reshape(-1, 3), controls)

    def _ease(self, current: np.ndarray, target: np.ndarray) -> np.ndarray:
        keep = math.exp(-1.0 / (self.config.idle.sway_time_constant_s * FPS))
        return target + (current - target) * keep

    def _keypoints(self, source: DittoSource, carry: DittoCarry, motion: np.ndarray, sway_deg: np.ndarray,
                   controls: Controls) -> tuple[np.ndarray, np.ndarray]:
        """motion: (n, 265) output format; sway_deg: (n, 3) -> (x_s 1x21x3, x_d n x 21 x 3)."""
        mlp = self.networks.stitching.stitching
        target = pose_offsets_deg(controls)  # (3,) [pitch, yaw, roll], LivePortrait's angles
        keep = math.exp(-1.0 / (self.config.emotion_time_constant_s * FPS))
        attention, carry.attention = attention_frames(carry.attention, len(motion), controls, source.seed, FPS,
                                                      self.config.attention)
        gaze_exp = gaze_offsets(attention.gaze).reshape(len(motion), 1, 63)  # (n, 1, 63)
        x_d = []
        for i, (row, sway) in enumerate(zip(motion, sway_deg)):
            carry.head_deg = target + (carry.head_deg - target) * keep  # a new offset is eased in, as emotion
            pitch, yaw, roll = carry.head_deg + sway * attention.idle_scale[i]
            pitch += attention.nod_deg[i]  # a listener's nod: pitch down
            pose = {k: v for k, v in (("delta_pitch", pitch), ("delta_yaw", yaw), ("delta_roll", roll)) if v}
            if attention.gaze[i].any():
                pose["delta_exp"] = gaze_exp[i]
            x_d.append(carry.stitch(source.x_s_info, vec_to_info(row.astype(np.float32).copy()), mlp, **pose)[1])
        x_s = transform_keypoint(source.x_s_info).astype(np.float32)
        return x_s, (np.concatenate(x_d) if x_d else np.zeros((0, 21, 3))).astype(np.float32)

    def _advance(self, persona, carry, feats, controls, end):
        x_s, x_d = self.motion_frames(persona, carry, feats, controls, end)
        return self._render(persona, x_s, x_d), carry

    def _render(self, persona: Persona, x_s: np.ndarray, x_d: np.ndarray) -> np.ndarray:
        return self._render_many([(persona, x_s, x_d)])[0]

    def _render_many(self, jobs: list[tuple[Persona, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """W+G and paste-back for each job's keypoints (x_s 1x21x3, x_d n x 21 x 3), all jobs'
        frames in batches of `max_batch` (a batch may mix sessions: each frame carries its own
        source volume and keypoints) -> per job, n x H x W x 3 uint8 frames."""
        owners = [(persona, x_s) for persona, x_s, x_d in jobs for _ in range(len(x_d))]  # per frame
        driving = np.concatenate([x_d for _, _, x_d in jobs]) if owners else np.zeros((0, 21, 3), np.float32)
        dev, out = self.networks.device, []
        for start in range(0, len(owners), self.config.max_batch):
            batch = owners[start:start + self.config.max_batch]
            f_s, x_s = stack_sources([persona.features[MODE].f_s for persona, _ in batch],
                                     [torch.from_numpy(x_s) for _, x_s in batch])  # x_s: 1x21x3 each
            f_s, x_s = f_s.to(dev), x_s.to(dev)
            kp_d = torch.from_numpy(driving[start:start + len(batch)]).to(dev)
            images = to_uint8(warp_decode(self.networks, f_s, x_s, kp_d, self.config.fp16)["image"])
            out += [paste_back(crop, persona.features[MODE].M_c2o, persona.portrait, persona.features[MODE].mask)
                    for crop, (persona, _) in zip(images, batch)]
        ends = np.cumsum([len(x_d) for _, _, x_d in jobs])
        return [np.stack(out[end - len(x_d):end]) if len(x_d) else empty_frames(persona)
                for (persona, _, x_d), end in zip(jobs, ends)]


# ---- construction from options ------------------------------------------------------


def pipeline_config(value: DittoPipelineConfig | str | dict | None) -> DittoPipelineConfig:
    """A config from its JSON form: None / "official", "tiny", or a dict of fields over a
    "preset" (default "official"), e.g. {"preset": "tiny", "stream": {"overlap": 70},
    "networks": {"preset": "tiny", "spade": {...}}, "max_batch": 5}. `networks` takes
    LivePortrait's network forms (models.liveportrait.pipeline.network_config)."""
    if isinstance(value, DittoPipelineConfig):
        return value
    value = {"preset": value or "official"} if value is None or isinstance(value, str) else dict(value)
    preset = value.pop("preset", "official")
    if preset not in ("official", "tiny"):
        raise ValueError(f"unknown ditto preset {preset!r}; known: official, tiny")
    tiny = preset == "tiny"
    base = DittoPipelineConfig(preset=preset, lmdm=LMDMConfig.tiny() if tiny else LMDMConfig(),
                               networks=network_config("tiny" if tiny else "official"))
    if "networks" in value:
        base = replace(base, networks=network_config(value.pop("networks")))
    return override_fields(base, value, "config")


def load_parts(config: DittoPipelineConfig, device: torch.device, seed: int,
               cache_dir: str | Path | None) -> tuple[dict, DittoPipelineConfig]:
    """The networks, HuBERT and face analyser of a preset, and the config completed with
    what the official cfg pickle holds (clip rows, blink clip)."""
    if config.preset == "tiny":
        from .testing import CentredFace, SeededHubert

        torch.manual_seed(seed)  # seeded tiny weights: the same in every replica
        lmdm = MotionDecoder(config.lmdm).eval()
        networks = LivePortraitNetworks.random(config.networks)
        return {"lmdm": lmdm, "networks": networks, "hubert": SeededHubert(seed), "face": CentredFace()}, config
    from ..face.analysis import FaceAnalyzer
    from ..face.onnx_session import open_session
    from ..weights import resolve
    from .audio import OnnxHubert
    from .face_mesh import load_face_mesh
    from .lmdm import load_lmdm

    files = DittoFiles()
    path = lambda f: resolve(f, MODE, cache_dir)  # noqa: E731
    cuda = device.type == "cuda"
    face = FaceAnalyzer(*(open_session(path(f), prefer_cuda=cuda) for f in (files.face_det, files.landmark106, files.landmark203)))
    hubert = OnnxHubert(path(files.hubert), ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else None)
    cfg = read_cfg_pkl(path(files.cfg_pkl))
    blink = cfg.get("default_kwargs", {}).get("delta_eye_arr")
    config = replace(config, clip=clip_from_cfg(cfg),
                     blink_clip=None if blink is None else np.asarray(blink, np.float32).reshape(-1, 63))
    parts = {"lmdm": load_lmdm(path(files.lmdm), config.lmdm), "networks": load_renderer(files, "cpu", cache_dir),
             "hubert": hubert, "face": face, "face_mesh": load_face_mesh(path(files.landmark478))}
    return parts, config


def load_renderer(files: DittoFiles | None = None, device: str = "cpu",
                  cache_dir: str | Path | None = None) -> LivePortraitNetworks:
    """LivePortrait's networks loading Ditto's own renderer files (same keys and shapes).

    Ditto's stitch_network.pth holds only the stitching MLP ('retarget_shoulder');
    the lip and eye MLPs of the returned object stay unloaded: Ditto never uses them.
    """
    from ..liveportrait import loading as lp
    from ..liveportrait.stitching_retargeting import StitchingRetargeting

    files = files or DittoFiles()
    stitching = StitchingRetargeting()
    load_stitch_mlp(stitching.stitching, files, cache_dir)
    kw = dict(mode=MODE, cache_dir=cache_dir)
    nets = LivePortraitNetworks(
        appearance=lp.load_appearance_feature_extractor(file=files.appearance_extractor, **kw),
        motion=lp.load_motion_extractor(file=files.motion_extractor, **kw),
        warping=lp.load_warping_network(file=files.warp_network, **kw),
        generator=lp.load_spade_generator(file=files.decoder, **kw),
        stitching=stitching,
    )
    return nets.to(device)


def load_stitch_mlp(mlp: torch.nn.Module, files: DittoFiles | None = None,
                    cache_dir: str | Path | None = None) -> torch.nn.Module:
    """Ditto's stitch_network.pth: `ckpt['retarget_shoulder']`, 'module.' removed, strict."""
    from ..liveportrait.stitching_retargeting import strip_ddp
    from ..weights import load_torch_state_dict, resolve

    ckpt = load_torch_state_dict(resolve((files or DittoFiles()).stitch_network, MODE, cache_dir))
    mlp.load_state_dict(strip_ddp(ckpt["retarget_shoulder"]), strict=True)
    return mlp.eval()
