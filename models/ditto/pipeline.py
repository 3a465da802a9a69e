"""The ditto mode: audio -> HuBERT features -> LMDM motion -> LivePortrait render -> paste-back.

Per render chunk:
    audio (640 N samples) -> StreamingFeatures -> MotionStream windows -> motion frames
    motion frame -> MotionStitch (source-relative, blinks, pose controls, stitching)
                 -> W + G (LivePortrait networks, Ditto's files) -> paste into the portrait

Everything between chunks is in `DittoCarry` (plain data, picklable).

Delay: a motion frame leaves once the window after it has blended it, so output
trails input by 2 * (80 - overlap) frames plus HuBERT's 2 frames + 80 samples; frames
come out in bursts of 80 - overlap. The default overlap 75 makes that 5 frames, one
200 ms render chunk, and 485 ms of algorithmic delay (see benchmarks/ditto.py).
Flush renders what the lookahead still holds, cut to the frames of audio received.

Not yet ours: Ditto's eye attributes (eye open / gaze from MediaPipe's 478 points)
feed the LMDM condition; until that runner exists `prepare` takes them as
arguments, with neutral defaults.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..base import Controls, Persona, PersonaMedia, check_audio_chunk, empty_frames
from ..face.crop import SOURCE_CROP, CropParams, crop_image, network_input_256
from ..face.mask import ditto_mask
from ..face.paste_back import paste_back, warp_mask
from ..liveportrait.decode import to_uint8, warp_decode
from ..liveportrait.loading import LivePortraitNetworks
from ..liveportrait.source import image_to_tensor
from .audio import Hubert, StreamingFeatures, wav2feat
from .config import MODE, DittoFiles, StreamConfig
from .emotion import controls_to_ditto
from .lmdm import MotionDecoder
from .motion import Info, MotionStitch, transform_keypoint, vec_to_info
from .sampler import DDIMSampler, SeededNoise
from .stream import MotionStream, SourceCond, StreamCarry, first_frame_delay_frames

DEFAULT_EYE_OPEN = (0.3, 0.3)  # TODO(eye runner): from the persona's 478 landmarks


@dataclass(frozen=True)
class DittoPipelineConfig:
    stream: StreamConfig = field(default_factory=lambda: StreamConfig(overlap=75))
    crop: CropParams = SOURCE_CROP
    clip: np.ndarray | None = None  # (2, 265) v_min/v_max from the official cfg, if read
    max_batch: int = 8


@dataclass
class DittoSource:
    """What `render` needs from a persona, computed once."""

    f_s: torch.Tensor  # 1 x 32 x 16 x 64 x 64 appearance volume
    x_s_info: Info  # raw motion of the source (angles as 66-bin logits), numpy
    cond: SourceCond
    M_c2o: np.ndarray  # 3 x 3 crop(512) -> portrait
    mask: np.ndarray  # H x W x 3 paste-back mask


@dataclass
class DittoCarry:
    features: object  # audio.FeatureCarry
    motion: StreamCarry
    stitch: MotionStitch
    frames_in: int = 0  # frames of real audio received
    frames_out: int = 0


class DittoPipeline:
    """models.base.Pipeline for the ditto mode; networks and HuBERT are injected."""

    mode = MODE

    def __init__(self, lmdm: MotionDecoder, networks: LivePortraitNetworks, hubert: Hubert, face,
                 config: DittoPipelineConfig | None = None, seed: int = 0):
        self.config = config = config or DittoPipelineConfig()
        self.lmdm, self.networks, self.hubert, self.face = lmdm, networks, hubert, face
        self.sampler = DDIMSampler(lmdm, config.stream.sampling_steps, SeededNoise(seed))
        self.features = StreamingFeatures(hubert)
        self.lookahead_frames = first_frame_delay_frames(config.stream.overlap, lmdm.cfg.seq_frames) + 3

    # ---- contract -------------------------------------------------------------------

    def prepare(self, media: PersonaMedia, persona_id: str = "", eye_open=DEFAULT_EYE_OPEN,
                eye_ball=(0.0,) * 6) -> Persona:
        portrait = media.frames[0]
        face = self.face.analyse(portrait)
        crop = crop_image(portrait, face.points106, self.config.crop)
        with torch.no_grad():
            x = image_to_tensor(network_input_256(crop.image), self.networks.device)
            f_s = self.networks.appearance(x)
            raw = self.networks.motion(x)
        info = {k: raw[k].float().cpu().numpy().reshape(1, -1) for k in ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")}
        source = DittoSource(
            f_s=f_s, x_s_info=info, cond=SourceCond.from_info(info, np.asarray(eye_open), np.asarray(eye_ball)),
            M_c2o=crop.M_c2o, mask=warp_mask(ditto_mask(self.config.crop.dsize), crop.M_c2o, portrait.shape[:2]),
        )
        return Persona(persona_id=persona_id, media=media, features={MODE: source})

    def start(self, persona: Persona, controls: Controls) -> DittoCarry:
        source: DittoSource = persona.features[MODE]
        emo, _ = controls_to_ditto(controls)
        silence = wav2feat(self.hubert, np.zeros(self.config.stream.overlap * 640, np.float32))
        return DittoCarry(
            features=self.features.start(),
            motion=self._stream(source).start(silence, emo),
            stitch=MotionStitch(source.x_s_info),
        )

    def render(self, persona: Persona, carry: DittoCarry, audio16k: np.ndarray, controls: Controls):
        carry.frames_in += check_audio_chunk(audio16k)
        feats, carry.features = self.features.feed(carry.features, audio16k)
        return self._advance(persona, carry, feats, controls, end=False)

    def flush(self, persona: Persona, carry: DittoCarry, controls: Controls):
        feats, carry.features = self.features.flush(carry.features)
        return self._advance(persona, carry, feats, controls, end=True)

    def idle(self, persona: Persona, carry: DittoCarry, n: int, controls: Controls):
        """No speech: silence drives LMDM, which still moves the head and blinks a little."""
        return self.render(persona, carry, np.zeros(n * 640, np.float32), controls)

    # ---- stages ---------------------------------------------------------------------

    def _stream(self, source: DittoSource) -> MotionStream:
        return MotionStream(self.sampler, self.config.stream, source.cond, self.config.clip)

    def motion_frames(self, persona: Persona, carry: DittoCarry, feats: np.ndarray, controls: Controls,
                      end: bool) -> tuple[np.ndarray, np.ndarray]:
        """New features -> (x_s 1x21x3, x_d n x 21 x 3) keypoints of the frames now ready."""
        source: DittoSource = persona.features[MODE]
        emo, pose = controls_to_ditto(controls)
        stream = self._stream(source)
        motion, carry.motion = stream.feed(carry.motion, feats, emo)
        if end:
            tail, carry.motion = stream.flush(carry.motion)
            motion = np.concatenate([motion, tail])
        motion = motion[: max(0, carry.frames_in - carry.frames_out)]  # drop padding past the audio
        carry.frames_out += len(motion)
        if carry.stitch.d0 is None and carry.motion.d0 is not None:
            # online, the reference makes the stream's first frame the stitcher's d0
            carry.stitch.d0 = vec_to_info(carry.motion.d0.copy())
        mlp = self.networks.stitching.stitching
        x_d = [carry.stitch(source.x_s_info, vec_to_info(row.copy()), mlp, **pose)[1] for row in motion]
        x_s = transform_keypoint(source.x_s_info).astype(np.float32)
        return x_s, (np.concatenate(x_d) if x_d else np.zeros((0, 21, 3))).astype(np.float32)

    def _advance(self, persona, carry, feats, controls, end):
        x_s, x_d = self.motion_frames(persona, carry, feats, controls, end)
        return self._render(persona, x_s, x_d), carry

    def _render(self, persona: Persona, x_s: np.ndarray, x_d: np.ndarray) -> np.ndarray:
        if len(x_d) == 0:
            return empty_frames(persona)
        source: DittoSource = persona.features[MODE]
        dev = self.networks.device
        out = []
        for s in range(0, len(x_d), self.config.max_batch):
            kp_d = torch.from_numpy(x_d[s : s + self.config.max_batch]).to(dev)
            crops = to_uint8(warp_decode(self.networks, source.f_s, torch.from_numpy(x_s).to(dev), kp_d)["image"])
            out += [paste_back(c, source.M_c2o, persona.portrait, source.mask) for c in crops]
        return np.stack(out)


def load_renderer(files: DittoFiles | None = None, device: str = "cpu") -> LivePortraitNetworks:
    """LivePortrait's networks loading Ditto's own renderer files (same keys and shapes).

    Ditto's stitch_network.pth holds only the stitching MLP ('retarget_shoulder');
    the lip and eye MLPs of the returned object stay unloaded: Ditto never uses them.
    """
    from ..liveportrait import loading as lp
    from ..liveportrait.stitching_retargeting import StitchingRetargeting

    files = files or DittoFiles()
    stitching = StitchingRetargeting()
    load_stitch_mlp(stitching.stitching, files)
    nets = LivePortraitNetworks(
        appearance=lp.load_appearance_feature_extractor(file=files.appearance_extractor, mode=MODE),
        motion=lp.load_motion_extractor(file=files.motion_extractor, mode=MODE),
        warping=lp.load_warping_network(file=files.warp_network, mode=MODE),
        generator=lp.load_spade_generator(file=files.decoder, mode=MODE),
        stitching=stitching,
    )
    return nets.to(device)


def load_stitch_mlp(mlp: torch.nn.Module, files: DittoFiles | None = None) -> torch.nn.Module:
    """Ditto's stitch_network.pth: `ckpt['retarget_shoulder']`, 'module.' removed, strict."""
    from ..liveportrait.stitching_retargeting import strip_ddp
    from ..weights import load_torch_state_dict, resolve

    ckpt = load_torch_state_dict(resolve((files or DittoFiles()).stitch_network, MODE))
    mlp.load_state_dict(strip_ddp(ckpt["retarget_shoulder"]), strict=True)
    return mlp.eval()
