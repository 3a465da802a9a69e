"""MuseTalk v1.5 as a LockN Bod pipeline (mode "musetalk"), see models/base.py.

prepare (once per persona, cached in `Persona.features`):
    frames (portrait, or a short video cycled forward then back)
      -> 68 face landmarks -> v1.5 face box (extra_margin) -> 256×256 crop
      -> reference latents: VAE posterior mean of the masked and the full crop  F×8×32×32
      -> blending mask per frame (face parser, 'jaw' mode, blurred)
render (per chunk of 640·N samples):
    audio -> streaming whisper prompts (lookahead 3 frames) -> batches of `batch_size` (8)
      -> UNet step + VAE decode -> 256×256 faces -> resize + paste-back into the frame

Batching: the speaking frames of one render call go through the UNet and the VAE
in batches of `batch_size`; sessions should send MuseTalk chunks of at least
8 frames (320 ms) so the GPU sees full batches (200 ms chunks work, in batches of 5).

Persona checks: a frame whose face keypoints score below `min_landmark_score`
raises PersonaError("no_face"); a face box under `min_face_px` raises
"face_too_small". DWPose runs on the whole frame (as upstream), so it reports
one face and cannot tell a second one: several faces are not detected.

Silence: upstream animates the mouth even on silent audio. A frame whose audio
(and its neighbours') is below `silence_rms` shows its reference frame unchanged,
so the mouth stays as the persona's media shows it (closed, for a usual portrait),
and the UNet is not run for it. Between silence and speech the generated frames
cross-fade from and to the reference over `crossfade_frames` frames (a generated
face differs from the reference even with the mouth closed: a cut would show a
pop in the lower face): a speaking frame d frames from the nearest silent one
shows d / (crossfade_frames + 1) of the generated face. The start and end of an
utterance (its first frame, the end of the audio at flush) count as silence
next to it. The stream's lookahead already holds the frames this looks ahead
at, so the fade adds no delay.

Construction: `MuseTalkPipeline(config="official" | "tiny" | {...}, device=..., seed=...)`,
the spelling of every mode's options (config.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..base import (
    SAMPLES_PER_FRAME,
    Carry,
    Controls,
    Persona,
    PersonaError,
    PersonaMedia,
    check_audio_chunk,
    empty_frames,
)
from ..compiled import compile_networks
from ..options import resolve_device
from . import vae as vae_ops
from .audio import AudioStream, StreamingPrompts, WhisperAudioEncoder
from .blending import blend, prepare_mask, resize_face
from .config import TINY_UNET, TINY_VAE, TINY_WHISPER, MuseTalkConfig, pipeline_config
from .face_box import crop_face, face_box, fallback_box
from .inference import MuseTalkNets, generate

# (frame BGR) -> (68×2 landmarks, confidence), optionally + a face detector box (x1, y1, x2, y2)
# that the v1.5 rule falls back to (upstream: S3FD); without one, the landmarks' own box.
LandmarkFn = Callable[[np.ndarray], tuple]


@dataclass
class MuseTalkCarry:
    """What a stream carries between chunks: audio context, frame cycle, loudness of recent frames.

    rms: per-frame RMS of frames [rms_start, rms_start + len(rms)).
    """

    audio: AudioStream = field(default_factory=AudioStream)
    cycle_index: int = 0
    rms: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    rms_start: int = 0
    utterance_start: int = 0  # frames before it count as silent (cross-fade in)


def frame_rms(audio16k: np.ndarray) -> np.ndarray:
    """(640·N,) -> N per-frame RMS values."""
    frames = audio16k.reshape(-1, SAMPLES_PER_FRAME).astype(np.float64)
    return np.sqrt((frames**2).mean(axis=1)).astype(np.float32)


def cycle_frame(cycle_index: int, n_frames: int) -> int:
    """Index into the media frames of position `cycle_index` in forward-then-back order."""
    if n_frames == 1:
        return 0
    i = cycle_index % (2 * n_frames)
    return i if i < n_frames else 2 * n_frames - 1 - i


class MuseTalkPipeline:
    """The `musetalk` mode: networks injected, or loaded with `from_pretrained`."""

    mode = "musetalk"

    def __init__(
        self,
        config: MuseTalkConfig | str | dict | None = None,
        device: str | None = None,
        seed: int = 0,
        *,
        nets: MuseTalkNets | None = None,
        audio_encoder: WhisperAudioEncoder | None = None,
        parser: Callable | None = None,
        landmarks: LandmarkFn | None = None,
        compile: str | None = None,
    ):
        """config: a config, or its JSON form (config.pipeline_config); device: "cuda", "cpu"
        or "auto"/None (the config's device, else CUDA when available); seed: the tiny
        preset's weights; compile: torch.compile of the UNet and VAE decoder (None: the
        config's, off by default; models/compiled.py). `nets`, `audio_encoder`, `parser` and
        `landmarks` are injected by tests; the others are loaded for the config's preset (`load_parts`)."""
        self.config = config = pipeline_config(config)
        self.config = config = config if compile is None else replace(config, compile=compile)
        target = resolve_device(device or config.device)
        given = {"nets": nets, "audio_encoder": audio_encoder, "parser": parser, "landmarks": landmarks}
        parts = {**load_parts(config, target, seed, [k for k, v in given.items() if v is None]),
                 **{k: v for k, v in given.items() if v is not None}}
        self.nets, self.parser, self.landmarks = parts["nets"], parts["parser"], parts["landmarks"]
        self.streamer = StreamingPrompts(parts["audio_encoder"], config.audio)
        self.lookahead_frames = config.audio.lookahead_frames
        self.to(target)
        self.compiled = compile_networks(self.nets, config.compile)  # off by default (models/compiled.py)

    @classmethod
    def from_pretrained(cls, config: MuseTalkConfig | None = None, landmarks: LandmarkFn | None = None):
        """The official networks from the local HF cache (WeightsMissingError names the fetch command)."""
        return cls(config, landmarks=landmarks)

    def to(self, device: str | torch.device) -> "MuseTalkPipeline":
        """Move the networks; fp16 on CUDA when `config.fp16` (the parser stays fp32: it runs once per persona)."""
        dtype = torch.float16 if (self.config.fp16 and str(device).startswith("cuda")) else torch.float32
        self.nets.to(device, dtype)
        self.streamer.encoder.encoder.to(device, dtype)
        if hasattr(self.parser, "net"):  # a FaceParser; test stand-ins are plain functions
            self.parser.net.to(device)
        return self

    # ------------------------------------------------------------ prepare

    def prepare(self, media: PersonaMedia, persona_id: str = "", posterior_eps: torch.Tensor | None = None) -> Persona:
        """posterior_eps: F×2×4×32×32 (masked, reference) noise to reproduce upstream's sampled
        latents in parity checks; None (production) uses the posterior mean."""
        frames_bgr = [np.ascontiguousarray(f[..., ::-1]) for f in media.frames]
        boxes = [self._face_box(f, i) for i, f in enumerate(frames_bgr)]
        crops = np.stack([crop_face(f, b) for f, b in zip(frames_bgr, boxes)])  # F×256×256×3 BGR
        latents = torch.cat([self._latents(crops, i, posterior_eps) for i in range(0, len(crops), self.config.batch_size)])
        masks = [
            prepare_mask(f, b, self.parser, self.config.parsing_mode, self.config.blur_fraction)
            for f, b in zip(frames_bgr, boxes)
        ]
        features = {
            "frames_bgr": frames_bgr,
            "boxes": boxes,
            "latents": latents,
            "masks": [m for m, _ in masks],
            "mask_boxes": [b for _, b in masks],
        }
        return Persona(persona_id, media, features)

    def _latents(self, crops: np.ndarray, start: int, eps: torch.Tensor | None) -> torch.Tensor:
        """B×8×32×32 float32 CPU latents of crops[start : start + batch]."""
        sl = slice(start, start + self.config.batch_size)
        eps_masked, eps_ref = (None, None) if eps is None else (eps[sl, 0], eps[sl, 1])
        return vae_ops.unet_input_latents(self.nets.vae, crops[sl], eps_masked, eps_ref).float().cpu()

    def _face_box(self, frame_bgr: np.ndarray, index: int) -> tuple[int, int, int, int]:
        found = self.landmarks(frame_bgr)
        landmarks, score = found[0], found[1]
        if score < self.config.min_landmark_score:
            raise PersonaError(f"no face found in frame {index}", code="no_face")
        hw = frame_bgr.shape[:2]
        detector = found[2] if len(found) > 2 else fallback_box(landmarks, hw)
        box = face_box(landmarks, detector, hw, self.config.extra_margin)
        x1, y1, x2, y2 = box
        if min(x2 - x1, y2 - y1) < self.config.min_face_px:
            raise PersonaError(f"face in frame {index} is too small ({x2 - x1}×{y2 - y1} px)", code="face_too_small")
        return box

    # ------------------------------------------------------------ stream

    def start(self, persona: Persona, controls: Controls) -> Carry:
        return MuseTalkCarry()

    def render(self, persona: Persona, carry: Carry, audio16k: np.ndarray, controls: Controls):
        return self.render_batch([(persona, carry, audio16k, controls)])[0]

    def flush(self, persona: Persona, carry: Carry, controls: Controls):
        first = carry.audio.frames_done
        prompts, stream = self.streamer.flush(carry.audio)
        end = first + len(prompts)  # the end of the audio: silence after it
        frames, carry = self._frames(persona, replace(carry, audio=stream), first, prompts, end=end)
        return frames, replace(carry, utterance_start=end)

    def interrupt(self, persona: Persona, carry: Carry, controls: Controls):
        """The held frames are skipped, not drawn; their audio stays as left context."""
        stream = self.streamer.skip(carry.audio)
        return replace(carry, audio=stream, utterance_start=stream.frames_done)

    def idle(self, persona: Persona, carry: Carry, n: int, controls: Controls):
        """No speech: the next n reference frames in cycle order (no UNet).

        The audio stream is left alone: silence pushed through it would sit in the
        lookahead and come out as the first frames of the next utterance, shifting
        video against audio by the lookahead.
        """
        if n == 0:
            return empty_frames(persona), carry
        frames_bgr = persona.features["frames_bgr"]
        idx = [cycle_frame(carry.cycle_index + k, len(frames_bgr)) for k in range(n)]
        frames = np.stack([frames_bgr[i][..., ::-1] for i in idx])  # n×H×W×3 RGB
        return frames, replace(carry, cycle_index=(carry.cycle_index + n) % (2 * len(frames_bgr)))

    def render_clip(self, persona: Persona, wav16k: np.ndarray, fps: float = 25.0) -> np.ndarray:
        """A finished clip the way upstream's scripts do it: whole-clip prompts, every frame
        generated (no silence rule), frame i from cycle position i. -> F×H×W×3 uint8 RGB."""
        prompts = self.streamer.encoder.prompts(wav16k, fps)
        carry = MuseTalkCarry(rms=np.full(len(prompts), np.inf, np.float32))
        frames, _ = self._frames(persona, carry, 0, prompts, fade=False)
        return frames

    def note_loudness(self, carry: MuseTalkCarry, audio16k: np.ndarray) -> MuseTalkCarry:
        """The carry with the chunk's per-frame loudness, which the silence rule reads."""
        return self._add_rms(carry, frame_rms(audio16k))

    def speech_weights(self, carry: MuseTalkCarry, first: int, n: int, end: int | None = None) -> list[float]:
        """How much of the generated face frames first … first+n-1 show (`_speech_weight`)."""
        return [self._speech_weight(carry, first + k, end) for k in range(n)]

    def _add_rms(self, carry: MuseTalkCarry, rms: np.ndarray) -> MuseTalkCarry:
        # Keep the frames before the next to emit that the silence rule and the fade look at.
        keep_from = max(carry.audio.frames_done - 1 - self._fade_frames(), carry.rms_start)
        kept = carry.rms[keep_from - carry.rms_start :]
        return replace(carry, rms=np.concatenate([kept, rms]), rms_start=keep_from)

    def _is_silent(self, carry: MuseTalkCarry, frame: int) -> bool:
        lo = max(frame - 1 - carry.rms_start, 0)
        hi = frame + 2 - carry.rms_start
        window = carry.rms[lo:hi]
        return window.size == 0 or float(window.max()) < self.config.silence_rms

    def _fade_frames(self) -> int:
        return max(0, min(self.config.crossfade_frames, self.lookahead_frames - 1))

    def _speech_weight(self, carry: MuseTalkCarry, frame: int, end: int | None) -> float:
        """How much of the generated face frame `frame` shows: 0 silent, 1 in speech,
        d / (fade + 1) d frames from the nearest silent frame (module docstring)."""
        def silent(f: int) -> bool:
            return f < carry.utterance_start or (end is not None and f >= end) or self._is_silent(carry, f)

        if silent(frame):
            return 0.0
        fade = self._fade_frames()
        for d in range(1, fade + 1):
            if silent(frame - d) or silent(frame + d):
                return d / (fade + 1)
        return 1.0

    def render_batch(self, jobs: list[tuple[Persona, Carry, np.ndarray, Controls]]) -> list[tuple[np.ndarray, Carry]]:
        """Several sessions' chunks at once (the backend's cross-session batching): each job's
        (persona, carry, audio16k, controls) gives what `render` would, and the speaking frames
        of every job go through the UNet and the VAE decoder together, `batch_size` at a time."""
        plans = []
        for persona, carry, audio16k, _ in jobs:
            check_audio_chunk(audio16k)
            carry = self.note_loudness(carry, audio16k)
            first = carry.audio.frames_done
            prompts, stream = self.streamer.push(carry.audio, audio16k)
            plans.append(self._plan(persona, replace(carry, audio=stream), first, prompts))
        self._draw(plans)
        return [self._finish(plan) for plan in plans]

    def _frames(self, persona: Persona, carry: MuseTalkCarry, first: int, prompts: torch.Tensor,
                end: int | None = None, fade: bool = True):
        plan = self._plan(persona, carry, first, prompts, end, fade)
        self._draw([plan])
        return self._finish(plan)

    def _plan(self, persona: Persona, carry: MuseTalkCarry, first: int, prompts: torch.Tensor,
              end: int | None = None, fade: bool = True) -> "FacePlan":
        """Which of the chunk's frames speak, from which reference frame, how strongly."""
        n_media = len(persona.features["frames_bgr"])
        media_idx = [cycle_frame(carry.cycle_index + k, n_media) for k in range(len(prompts))]
        weight = self.speech_weights(carry, first, len(prompts), end) if fade else [1.0] * len(prompts)
        return FacePlan(persona, carry, prompts, media_idx, weight,
                        frames=[persona.features["frames_bgr"][i] for i in media_idx])  # silent frames stay the reference

    def _draw(self, plans: list["FacePlan"]) -> None:
        """Generate every plan's speaking frames, `batch_size` at a time across plans, and put
        each face into its frame (pasted, cross-faded by its weight)."""
        speaking = [(plan, k) for plan in plans for k in range(len(plan.prompts)) if plan.weight[k] > 0]
        for start in range(0, len(speaking), self.config.batch_size):
            batch = speaking[start:start + self.config.batch_size]
            latents = torch.cat([plan.persona.features["latents"][[plan.media_idx[k]]] for plan, k in batch])
            prompts = torch.stack([plan.prompts[k] for plan, k in batch])
            faces = generate(self.nets, latents, prompts)  # B×256×256×3 BGR
            for (plan, k), face in zip(batch, faces):
                feats, media = plan.persona.features, plan.media_idx[k]
                plan.frames[k] = crossfade(plan.frames[k], self._paste(feats, media, face), plan.weight[k])

    @staticmethod
    def _finish(plan: "FacePlan") -> tuple[np.ndarray, MuseTalkCarry]:
        if not plan.frames:
            return empty_frames(plan.persona), plan.carry
        frames = np.stack([f[..., ::-1] for f in plan.frames])  # N×H×W×3 RGB
        n_media = len(plan.persona.features["frames_bgr"])
        return frames, replace(plan.carry, cycle_index=(plan.carry.cycle_index + len(plan.frames)) % (2 * n_media))

    @staticmethod
    def _paste(feats: dict, i: int, face_bgr_256: np.ndarray) -> np.ndarray:
        box = feats["boxes"][i]
        face = resize_face(face_bgr_256, box)
        return blend(feats["frames_bgr"][i], face, box, feats["masks"][i], feats["mask_boxes"][i])


@dataclass
class FacePlan:
    """One chunk's frames on their way: BGR frames (the references until faces are drawn into
    them), the whisper prompts (N×50×384), which reference frame each shows, how much of its
    generated face shows (0: silent, not generated), and the carry after the chunk."""

    persona: Persona
    carry: MuseTalkCarry
    prompts: torch.Tensor
    media_idx: list[int]
    weight: list[float]
    frames: list[np.ndarray]


def crossfade(reference: np.ndarray, generated: np.ndarray, weight: float) -> np.ndarray:
    """H×W×3 uint8: `weight` of the generated frame over the reference (1: the generated one)."""
    if weight >= 1.0:
        return generated
    mixed = reference.astype(np.float32) + weight * (generated.astype(np.float32) - reference)
    return np.rint(mixed).astype(np.uint8)


# ---- construction from options ------------------------------------------------------


def load_parts(config: MuseTalkConfig, device: torch.device, seed: int, names: list[str]) -> dict:
    """The parts of a pipeline named in `names` (nets, audio_encoder, parser, landmarks),
    for the config's preset. Tiny parts are built all at once: their seeded weights are
    drawn in one order, the same in every replica."""
    if not names:
        return {}
    if config.preset == "tiny":
        return tiny_parts(config, seed)
    return {name: OFFICIAL_PARTS[name](config, device) for name in names}


def tiny_parts(config: MuseTalkConfig, seed: int) -> dict:
    """Tiny networks with weights drawn from `seed`, and the file-free face stand-ins (config.py)."""
    from diffusers import AutoencoderKL
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    from .testing import all_skin_parser, ellipse_landmarks
    from .unet import PositionalEncoding, build_unet

    torch.manual_seed(seed)
    nets = MuseTalkNets(build_unet(TINY_UNET).eval(), AutoencoderKL(**TINY_VAE).eval(), PositionalEncoding(384))
    whisper = WhisperModel(WhisperConfig(**TINY_WHISPER)).encoder
    audio = WhisperAudioEncoder(whisper, WhisperFeatureExtractor(feature_size=80), config.audio)
    return {"nets": nets, "audio_encoder": audio, "parser": all_skin_parser, "landmarks": ellipse_landmarks}


def _official_nets(config: MuseTalkConfig, device: torch.device) -> MuseTalkNets:
    from . import weights as w
    from .unet import PositionalEncoding, load_unet

    w.resolve(w.VAE_CONFIG, w.MODE)  # a clear error before diffusers looks
    unet = load_unet(w.resolve(w.UNET_CONFIG, w.MODE), w.resolve(w.UNET_WEIGHTS, w.MODE))
    return MuseTalkNets(unet, vae_ops.load_vae(w.folder_of(w.VAE_WEIGHTS)), PositionalEncoding(384))


def _official_audio(config: MuseTalkConfig, device: torch.device) -> WhisperAudioEncoder:
    from . import weights as w

    for f in w.WHISPER_FILES:
        w.resolve(f, w.MODE)  # a clear error per missing file before transformers looks
    return WhisperAudioEncoder.from_pretrained(w.folder_of(w.WHISPER_FILES[0]), config.audio)


def _official_parser(config: MuseTalkConfig, device: torch.device) -> Callable:
    from . import weights as w
    from .face_parsing import FaceParser, MaskConfig, load_bisenet

    return FaceParser(load_bisenet(w.resolve(w.FACE_PARSER, w.MODE)), MaskConfig(cheek_width=config.cheek_width))


def _official_landmarks(config: MuseTalkConfig, device: torch.device) -> LandmarkFn:
    from . import weights as w
    from .face_box import DWPoseLandmarks

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else None
    return DWPoseLandmarks(w.resolve(w.LANDMARKS, w.MODE), providers=providers)


# In the order a missing file is reported (the first one raises WeightsMissingError).
OFFICIAL_PARTS = {"nets": _official_nets, "audio_encoder": _official_audio, "parser": _official_parser,
                  "landmarks": _official_landmarks}
