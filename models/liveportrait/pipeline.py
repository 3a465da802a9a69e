"""The `liveportrait` mode: a portrait that speaks, blinks, moves and shows emotion.

prepare (once per persona):
    portrait -> face (detector, 106 points, 203 points) -> 512 crop -> 256 input
    -> F, M once: f_s, x_s, pose; eye and lip ratios of the source (203 points);
    the paste-back mask warped into the portrait once. Face warnings (several
    faces: the largest is used) go to `persona.features["warnings"]`.
render (per chunk of N frames, 640 samples each), per frame:
    expression controls (emotion preset, eased) and head angles (controls +
    idle motion) -> x_d from the source's canonical keypoints;
    + lip retargeting from the audio's lip level; + eye retargeting for blinks;
    stitching; then W+G for all N frames as one batch; paste-back at the
    portrait's own resolution.

The carry (`LivePortraitCarry`) is small: frame counter, smoothed lip level,
current control vector, blink state, seed. No lookahead: frame k of a chunk
shows audio samples [640k, 640(k+1)) of that chunk.

Built from JSON-able options (serve_config.yaml `backends.liveportrait.options`):

    LivePortraitPipeline(config="tiny" | "official" | {field: value, ...},
                         device="auto" | "cuda" | "cpu", seed=0, cache_dir="/path/to/hf-cache")

(the spelling of every mode's options: Ditto's and MuseTalk's too). "tiny" networks
are small widths of the same modules, loaded from files written for them (tests).

A config dict overrides `LivePortraitPipelineConfig`'s fields; nested configs
take nested dicts, and `networks` also takes "official", "tiny" or a dict with
a "preset" key (see `pipeline_config`). Weights and face models load through
models.weights from the standard Hugging Face cache, or from `cache_dir`.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..compiled import compile_networks
from ..options import override_fields, resolve_device
from ..base import (
    FPS, SAMPLES_PER_FRAME, Controls, Persona, PersonaMedia, check_audio_chunk, empty_frames,
)
from ..attention import AttentionConfig, AttentionState, attention_frames, start_attention
from ..face.analysis import FaceAnalysisConfig, FaceAnalyzer
from ..face.crop import SOURCE_CROP, CropParams, crop_image, network_input_256
from ..face.mask import liveportrait_mask_template
from ..face.paste_back import mask_box, paste_back, warp_mask
from . import expression, keypoints
from .config import LivePortraitConfig
from .decode import stack_sources, to_uint8, warp_decode
from .lip import LipConfig, lip_levels
from .loading import LivePortraitNetworks
from .motion import BlinkConfig, BlinkState, IdleMotionConfig, blink_closures, idle_head_deg, start_blinks
from .source import SourceMotion, extract_source

MODE = "liveportrait"
NUM_KEYPOINTS = 21


@dataclass(frozen=True)
class LivePortraitPipelineConfig:
    networks: LivePortraitConfig = field(default_factory=LivePortraitConfig)
    face: FaceAnalysisConfig = field(default_factory=FaceAnalysisConfig)
    crop: CropParams = SOURCE_CROP
    lip: LipConfig = field(default_factory=LipConfig)
    blink: BlinkConfig = field(default_factory=BlinkConfig)
    idle: IdleMotionConfig = field(default_factory=IdleMotionConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)  # listening and gaze
    # Lip close ratio (lip gap / mouth width) the lip MLP is asked for at full
    # openness; upstream's retargeting UI spans 0..0.8, speech rarely needs more than half.
    lip_open_ratio: float = 0.45
    # A source whose lip ratio is above this shows an open mouth: close it at rest
    # (upstream's `flag_normalize_lip` rule and threshold).
    open_source_lip_ratio: float = 0.03
    expression_time_constant_s: float = 0.3
    # Frames per W+G batch: a render chunk of up to this many frames (the graph sends 5) is one batch.
    max_batch: int = 8
    fp16: bool = True  # autocast on CUDA only
    seed: int = 0
    compile: str | None = None  # torch.compile of W, G and the MLPs (models/compiled.py); None: off


@dataclass
class PreparedSource:
    """Everything `render` needs from a persona, computed once by `prepare`."""

    motion: SourceMotion
    M_c2o: np.ndarray  # 3×3 float32 crop(512) -> portrait
    mask: np.ndarray  # H×W×3 float32 paste-back mask in portrait pixels
    mask_box: tuple[slice, slice]  # rows, columns where the mask is non-zero
    eye_ratio: torch.Tensor  # 1×2 source eye close ratios [left, right]
    lip_ratio: torch.Tensor  # 1×1 source lip close ratio
    eye_base: torch.Tensor  # 1×21×3 eye MLP output at the source's own openness
    lip_base: torch.Tensor  # 1×21×3 lip MLP output that `lip_delta` subtracts
    crop: np.ndarray | None = None  # 512×512×3 uint8 RGB: the face crop the networks saw (photoreal reads it)


@dataclass
class LivePortraitCarry:
    frame: int
    lip_level: float
    expression: np.ndarray  # (10,) current control vector (expression.CONTROL_NAMES)
    blink: BlinkState
    seed: int
    attention: AttentionState = field(default_factory=AttentionState)  # listening and gaze shown now


class LivePortraitPipeline:
    """models.base.Pipeline for the liveportrait mode."""

    mode = MODE
    lookahead_frames = 0
    idle_is_silence = True  # idle(n) renders n frames of silence: a backend may batch it as a render

    def __init__(
        self,
        config: LivePortraitPipelineConfig | str | dict | None = None,
        device: str | None = None,
        seed: int | None = None,
        cache_dir: str | Path | None = None,
        *,
        networks: LivePortraitNetworks | None = None,
        face: FaceAnalyzer | None = None,
        compile: str | None = None,
    ):
        """config: a config, or its JSON form (`pipeline_config`); device: "cuda", "cpu" or
        "auto"/None (CUDA when available); seed: of blinks and idle motion (None: the
        config's); cache_dir: a Hugging Face cache other than the standard one; compile:
        torch.compile of the per-frame networks (None: the config's, off by default;
        models/compiled.py). `networks` and `face` are injected by tests; otherwise loaded here."""
        config = pipeline_config(config)
        self.config = config = config if seed is None else replace(config, seed=seed)
        self.config = config = config if compile is None else replace(config, compile=compile)
        target = resolve_device(device)
        if networks is None:
            networks = LivePortraitNetworks.load(config.networks, device=target, cache_dir=cache_dir)
        self.networks = networks
        self.compiled = compile_networks(networks, config.compile)  # off by default (models/compiled.py)
        self.face = face or FaceAnalyzer.from_hf_cache(MODE, config.face, cache_dir=cache_dir,
                                                       prefer_cuda=target.type == "cuda")

    # ---- contract -------------------------------------------------------------------

    def prepare(self, media: PersonaMedia, persona_id: str = "") -> Persona:
        portrait = media.frames[0]
        face = self.face.analyse(portrait)
        crop = crop_image(portrait, face.points106, self.config.crop)
        motion = extract_source(self.networks, network_input_256(crop.image), self._fp16)
        motion = SourceMotion(motion.f_s, {k: v.cpu() for k, v in motion.info.items()}, motion.x_s.cpu(), motion.R_s.cpu())
        eye_ratio = torch.from_numpy(keypoints.eye_close_ratio(face.points203[None])).float()  # 1×2
        lip_ratio = torch.from_numpy(keypoints.lip_close_ratio(face.points203[None])).float()  # 1×1
        mask = warp_mask(liveportrait_mask_template(self.config.crop.dsize), crop.M_c2o, portrait.shape[:2])
        source = PreparedSource(
            motion=motion,
            M_c2o=crop.M_c2o,
            mask=mask,
            mask_box=mask_box(mask),
            eye_ratio=eye_ratio,
            lip_ratio=lip_ratio,
            eye_base=self._eye_mlp(motion.x_s, torch.cat([eye_ratio, eye_ratio.mean(dim=1, keepdim=True)], dim=1)),
            lip_base=self._lip_base(motion.x_s, lip_ratio),
            crop=crop.image,
        )
        # "warnings": what the caller should tell the user (e.g. several faces, the largest used).
        warnings = [{"code": w.code, "message": w.message} for w in face.warnings]
        return Persona(persona_id=persona_id, media=media, features={MODE: source, "warnings": warnings})

    def start(self, persona: Persona, controls: Controls) -> LivePortraitCarry:
        seed = (self.config.seed ^ zlib.crc32(persona.persona_id.encode())) & 0xFFFFFFFF
        return LivePortraitCarry(
            frame=0, lip_level=0.0, expression=target_vector(controls),
            blink=start_blinks(seed, FPS, self.config.blink), seed=seed,
            attention=start_attention(seed, FPS, self.config.attention),
        )

    def render(self, persona: Persona, carry: LivePortraitCarry, audio16k: np.ndarray, controls: Controls):
        return self.render_batch([(persona, carry, audio16k, controls)])[0]

    def render_batch(self, jobs: list[tuple[Persona, LivePortraitCarry, np.ndarray, Controls]]
                     ) -> list[tuple[np.ndarray, LivePortraitCarry]]:
        """Several sessions' chunks at once (the backend's cross-session batching): each job's
        (persona, carry, audio16k, controls) gives what `render` would, and every job's frames
        go through W+G together, in batches of `max_batch` frames, so N sessions cost about
        one session's network calls."""
        motions = []  # per job: (persona, stitched keypoints N_i×21×3, the advanced carry)
        for persona, carry, audio16k, controls in jobs:
            check_audio_chunk(audio16k)
            levels, lip_level = lip_levels(audio16k, carry.lip_level, self.config.lip)
            carry = replace(carry, lip_level=lip_level)
            if len(levels):
                stitched, carry = self.driving_keypoints(persona, carry, levels, controls)
            else:
                stitched = torch.zeros(0, NUM_KEYPOINTS, 3)
            motions.append((persona, stitched, carry))
        crops = self.draw_crops([(persona.features[MODE], stitched) for persona, stitched, _ in motions])
        return [(np.stack([self.paste(persona, crop) for crop in job_crops]) if len(job_crops)
                 else empty_frames(persona), carry)
                for (persona, _, carry), job_crops in zip(motions, crops)]

    def flush(self, persona: Persona, carry: LivePortraitCarry, controls: Controls):
        return empty_frames(persona), carry  # no lookahead: nothing held back

    def interrupt(self, persona: Persona, carry: LivePortraitCarry, controls: Controls):
        return carry  # nothing held back; the lips release from where they were

    def idle(self, persona: Persona, carry: LivePortraitCarry, n: int, controls: Controls):
        # Silence: the lip level keeps releasing from where speech left it.
        return self.render(persona, carry, np.zeros(n * SAMPLES_PER_FRAME, np.float32), controls)

    # ---- per-frame motion -----------------------------------------------------------

    def frame_keypoints(self, source: PreparedSource, carry: LivePortraitCarry, levels: np.ndarray,
                        controls: Controls) -> tuple[torch.Tensor, LivePortraitCarry]:
        """x_d before stitching, N×21×3, for N = len(levels) frames, and the advanced carry."""
        n = len(levels)
        cfg = self.config
        vectors = expression.approach(carry.expression, target_vector(controls), n, FPS,
                                      cfg.expression_time_constant_s)  # N×10
        closures, blink = blink_closures(carry.blink, n, carry.seed, FPS, cfg.blink)
        attention, attention_state = attention_frames(carry.attention, n, controls, carry.seed, FPS, cfg.attention)
        idle = idle_head_deg(carry.frame + np.arange(n), carry.seed, FPS, cfg.idle) * attention.idle_scale[:, None]
        head = expression.head_offsets_deg(vectors) + idle  # N×3 [pitch, yaw, roll]
        head[:, 0] += attention.nod_deg  # a listener's nod: pitch down
        exp = expression.expression_offsets(vectors) + expression.gaze_offsets(attention.gaze)  # N×21×3
        x_d = posed_keypoints(source.motion, exp, head)
        x_d = x_d + self.lip_delta(source, levels) + self.eye_delta(source, closures)
        new_carry = replace(carry, frame=carry.frame + n, expression=vectors[-1] if n else carry.expression, blink=blink,
                            attention=attention_state)
        return x_d, new_carry

    def lip_delta(self, source: PreparedSource, levels: np.ndarray) -> torch.Tensor:
        """N lip levels in [0, 1] -> N×21×3 keypoint offsets from the lip retargeting MLP."""
        target = torch.as_tensor(levels, dtype=torch.float32)[:, None] * self.config.lip_open_ratio  # N×1
        cond = torch.cat([source.lip_ratio.expand(len(levels), 1), target], dim=1)  # N×2
        delta = self._lip_mlp(source.motion.x_s, cond) - source.lip_base
        if float(source.lip_ratio) < self.config.open_source_lip_ratio:
            # Closed-mouth source in silence: exactly the source (not batch-size rounding noise).
            delta[torch.as_tensor(levels) == 0] = 0
        return delta

    def eye_delta(self, source: PreparedSource, closures: np.ndarray) -> torch.Tensor:
        """N eyelid closures in [0, 1] -> N×21×3 offsets; 0 closure gives exactly 0."""
        open_ratio = source.eye_ratio.mean(dim=1, keepdim=True)  # 1×1
        target = open_ratio * (1 - torch.as_tensor(closures, dtype=torch.float32)[:, None])  # N×1
        cond = torch.cat([source.eye_ratio.expand(len(closures), 2), target], dim=1)  # N×3
        delta = self._eye_mlp(source.motion.x_s, cond) - source.eye_base
        delta[torch.as_tensor(closures) == 0] = 0  # eyes open: exactly the source
        return delta

    # ---- internals ------------------------------------------------------------------

    @property
    def _fp16(self) -> bool:
        return self.config.fp16 and self.networks.device.type == "cuda"

    @torch.no_grad()
    def _run_mlp(self, fn, mlp, *tensors: torch.Tensor) -> torch.Tensor:
        """Call a keypoints.* MLP helper on the MLP's device and dtype; result float32 on CPU."""
        param = next(mlp.parameters())
        return fn(mlp, *(t.to(device=param.device, dtype=param.dtype) for t in tensors)).float().cpu()

    def _lip_mlp(self, x_s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # x_s: 1×21×3, cond: N×2 [c_s_lip, c_d_lip] -> N×21×3
        return self._run_mlp(keypoints.retarget_lip, self.networks.stitching.lip, x_s.expand(len(cond), -1, -1), cond)

    def _eye_mlp(self, x_s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # x_s: 1×21×3, cond: N×3 [c_s_left, c_s_right, c_d_eye] -> N×21×3
        return self._run_mlp(keypoints.retarget_eye, self.networks.stitching.eye, x_s.expand(len(cond), -1, -1), cond)

    def _lip_base(self, x_s: torch.Tensor, lip_ratio: torch.Tensor) -> torch.Tensor:
        """What `lip_delta` subtracts, 1×21×3.

        Closed-mouth source: the MLP's output for a closed mouth, so silence leaves
        the source as it is. Open-mouth source (upstream's normalize-lip rule): 0,
        so silence applies retarget(closed) and shuts the mouth.
        """
        if float(lip_ratio) >= self.config.open_source_lip_ratio:
            return torch.zeros(1, *x_s.shape[1:])
        return self._lip_mlp(x_s, torch.cat([lip_ratio, torch.zeros(1, 1)], dim=1))

    @torch.no_grad()
    def render_crops(self, persona: Persona, carry: LivePortraitCarry, levels: np.ndarray,
                     controls: Controls) -> tuple[np.ndarray, torch.Tensor, LivePortraitCarry]:
        """The animated face crops before paste-back, N×S×S×3 uint8 RGB (S: the generator's
        output side, 512 at the official widths), for N = len(levels) lip levels; the driving
        keypoints they were drawn from (N×21×3, stitched, on the CPU); and the advanced carry.
        (The photoreal mode redraws their lower face before `paste`.)"""
        stitched, carry = self.driving_keypoints(persona, carry, levels, controls)
        (crops,) = self.draw_crops([(persona.features[MODE], stitched)])
        return crops, stitched, carry

    @torch.no_grad()
    def draw_crops(self, jobs: list[tuple[PreparedSource, torch.Tensor]]) -> list[np.ndarray]:
        """W+G for every job's stitched keypoints (N_i×21×3), all jobs' frames in batches of
        `max_batch` (a batch may mix sessions: each frame carries its own source volume and
        keypoints) -> per job, N_i×S×S×3 uint8 RGB crops."""
        device = self.networks.device
        owners = [(source, i) for source, stitched in jobs for i in range(len(stitched))]  # per frame
        driving = torch.cat([stitched for _, stitched in jobs]) if owners else torch.zeros(0, NUM_KEYPOINTS, 3)
        drawn = []
        for start in range(0, len(owners), self.config.max_batch):
            sources = [source for source, _ in owners[start:start + self.config.max_batch]]
            f_s, x_s = stack_sources([s.motion.f_s for s in sources], [s.motion.x_s for s in sources])
            x_d = driving[start:start + len(sources)].to(device)  # B×21×3
            drawn.append(to_uint8(warp_decode(self.networks, f_s.to(device), x_s.to(device), x_d, self._fp16)["image"]))
        frames = np.concatenate(drawn) if drawn else np.zeros((0, 0, 0, 3), np.uint8)
        ends = np.cumsum([len(stitched) for _, stitched in jobs])
        return np.split(frames, ends[:-1]) if len(jobs) else []

    def driving_keypoints(self, persona: Persona, carry: LivePortraitCarry, levels: np.ndarray,
                          controls: Controls) -> tuple[torch.Tensor, LivePortraitCarry]:
        """The keypoints frames are drawn from, N×21×3 after stitching (CPU), and the advanced carry."""
        source: PreparedSource = persona.features[MODE]
        x_d, carry = self.frame_keypoints(source, carry, levels, controls)
        x_s = source.motion.x_s
        return self._run_mlp(keypoints.stitching, self.networks.stitching.stitching, x_s.expand(len(x_d), -1, -1),
                             x_d), carry

    @staticmethod
    def paste(persona: Persona, crop: np.ndarray) -> np.ndarray:
        """One animated crop (S×S×3 uint8 RGB) pasted back into the portrait: H×W×3 uint8 RGB."""
        source: PreparedSource = persona.features[MODE]
        return paste_back(crop, source.M_c2o, persona.portrait, source.mask, source.mask_box)


def target_vector(controls: Controls) -> np.ndarray:
    """(10,) control vector the session asks for: the emotion preset plus explicit head offsets."""
    v = expression.preset(controls.emotion, controls.intensity).to_vector()
    v[-3:] += expression.pose_offsets_deg(controls)
    return v


def posed_keypoints(source: SourceMotion, exp_offsets: np.ndarray, head_deg: np.ndarray) -> torch.Tensor:
    """The source's canonical keypoints with extra expression and head angles: N×21×3.

    exp_offsets: N×21×3 added to exp_s; head_deg: N×3 [pitch, yaw, roll] added to the source pose.
    """
    info = source.info
    n = len(exp_offsets)
    head = torch.as_tensor(head_deg, dtype=torch.float32)
    angles = [info[k].reshape(1, 1).expand(n, 1) + head[:, i:i + 1] for i, k in enumerate(("pitch", "yaw", "roll"))]
    driven = {
        "kp": info["kp"].expand(n, -1, -1),
        "exp": info["exp"] + torch.as_tensor(exp_offsets, dtype=torch.float32),
        "scale": info["scale"].expand(n, 1),
        "t": info["t"].expand(n, 3),
        "pitch": angles[0], "yaw": angles[1], "roll": angles[2],
    }
    return keypoints.transform_keypoint(driven)


# ---- options from JSON (serve_config.yaml) --------------------------------------------

NETWORK_PRESETS = {"official": LivePortraitConfig, "tiny": LivePortraitConfig.tiny}


def pipeline_config(value: LivePortraitPipelineConfig | str | dict | None) -> LivePortraitPipelineConfig:
    """A pipeline config from its JSON form.

    None or "official": the defaults (official networks); "tiny": tiny networks (tests);
    a dict overrides fields of the defaults, e.g.
    `{"networks": "tiny", "max_batch": 5, "idle": {"yaw": []}, "blink": {"mean_interval_s": 5}}`;
    `networks` takes a preset name or a dict such as `{"preset": "tiny", "spade": {"num_middle_blocks": 2}}`.
    Lists become tuples; unknown fields are a ValueError that lists the known ones.
    """
    if isinstance(value, LivePortraitPipelineConfig):
        return value
    if value is None or isinstance(value, str):
        return LivePortraitPipelineConfig(networks=network_config(value or "official"))
    if not isinstance(value, dict):
        raise ValueError(f"config must be a preset name or a dict of fields, got {type(value).__name__}")
    changes = dict(value)
    networks = network_config(changes.pop("networks", "official"))
    return override_fields(LivePortraitPipelineConfig(networks=networks), changes, "config")


def network_config(value: str | dict) -> LivePortraitConfig:
    """"official", "tiny", or a dict of LivePortraitConfig fields over `preset` (default "official")."""
    if isinstance(value, str):
        value = {"preset": value}
    if not isinstance(value, dict):
        raise ValueError(f"config.networks must be a preset name or a dict, got {type(value).__name__}")
    changes = dict(value)
    preset = changes.pop("preset", "official")
    if preset not in NETWORK_PRESETS:
        raise ValueError(f"unknown network preset {preset!r}; known: {', '.join(NETWORK_PRESETS)}")
    return override_fields(NETWORK_PRESETS[preset](), changes, "config.networks")
