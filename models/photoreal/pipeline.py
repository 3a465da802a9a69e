"""The `photoreal` mode: LivePortrait's emotion, blinks and head motion, MuseTalk's lips, in one frame.

It composes the two parity-checked pipelines rather than copying them:

prepare (once per persona):
    LivePortrait's preparation (face, 512² source crop, its motion, the paste-back mask);
    then MuseTalk's on that source crop: the face box and the blend (jaw) mask, in crop
    pixels. LivePortrait's output crops are aligned to the source crop, so the box and the
    mask are computed once here and used on every frame.
render (per chunk):
    audio -> MuseTalk's streaming whisper prompts: n frames whose lookahead is complete;
    LivePortrait draws those n face crops from the emotion, blinks and idle head motion,
    with the mouth at rest (lip level 0: its loudness-driven lips are not used);
    each speaking frame (MuseTalk's silence rule, with its cross-fade): the VAE latents of
    its masked and full face crop, one UNet step on its audio prompt, the decoded face
    blended into the crop with the jaw mask;
    every crop is pasted back into the portrait (LivePortrait's paste-back).
idle: LivePortrait's idle life, the mouth at rest; MuseTalk is not run (its silence rule).

The lookahead is MuseTalk's (its whisper window): frame i shows audio span i, emitted once
the lookahead frames after it have arrived; `flush` draws them at the end of an utterance.
Unlike MuseTalk alone, a frame's latents come from that frame (its face moves), not from
the persona's media: one VAE encode per speaking frame more.

The mouth region moves with the head: each frame's box and mask are the source crop's,
shifted by how far LivePortrait moved the mouth keypoints in that frame from where they
are at rest (`mouth_shift_px`).

Not yet done (docs/modes/photoreal.md): the backend deployment, VRAM profile and degrade ladder.

Construction: `PhotorealPipeline(config="official" | "tiny" | {"liveportrait": …, "musetalk": …},
device=…, seed=…, cache_dir=…)`, or with both pipelines injected (tests).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..base import Controls, Persona, PersonaMedia, check_audio_chunk, empty_frames
from ..liveportrait.pipeline import MODE as LIVEPORTRAIT
from ..liveportrait.pipeline import LivePortraitCarry, LivePortraitPipeline
from ..musetalk import vae as vae_ops
from ..musetalk.blending import blend, resize_face
from ..musetalk.face_box import crop_face
from ..musetalk.inference import generate
from ..musetalk.pipeline import MuseTalkCarry, MuseTalkPipeline, crossfade

MODE = "photoreal"
REST = Controls()  # neutral, no head offset


# LivePortrait's implicit keypoints that its mouth presets move (models/liveportrait/expression.py).
MOUTH_KEYPOINTS = (14, 17, 19, 20)


@dataclass(frozen=True)
class MouthRegion:
    """Where MuseTalk redraws the lower face, in the pixels of LivePortrait's 512² crop."""

    box: tuple[int, int, int, int]  # x1, y1, x2, y2: MuseTalk's v1.5 face box
    mask: np.ndarray  # its blend mask (face parser, jaw mode, blurred), relative to mask_box
    mask_box: tuple[int, int, int, int]  # x1, y1, x2, y2 of the (expanded) box the mask covers
    rest_keypoints: torch.Tensor  # 1×21×3: LivePortrait's driving keypoints at rest, where the box was found

    @property
    def centre(self) -> np.ndarray:
        x1, y1, x2, y2 = self.box
        return np.array([(x1 + x2) / 2, (y1 + y2) / 2])

    def shifted(self, dx: int, dy: int) -> "MouthRegion":
        """The same region moved by whole pixels (the mask is relative to its box: it moves along)."""
        def move(box):
            return (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)
        return replace(self, box=move(self.box), mask_box=move(self.mask_box))


def mouth_shift_px(rest_keypoints: torch.Tensor, driving_keypoints: torch.Tensor, side: int) -> np.ndarray:
    """How far the mouth moved in the crop, N×2 whole pixels (dx, dy): the mean displacement of
    the mouth keypoints (at rest 1×21×3, driving N×21×3), projected as LivePortrait's warping
    reads keypoints: x and y in [-1, 1] across the crop's `side` pixels, depth dropped."""
    moved = (driving_keypoints[:, MOUTH_KEYPOINTS, :2] - rest_keypoints[:, MOUTH_KEYPOINTS, :2]).mean(dim=1)
    return np.rint(moved.numpy() * side / 2).astype(int)


@dataclass(frozen=True)
class PhotorealCarry:
    liveportrait: LivePortraitCarry
    musetalk: MuseTalkCarry


class PhotorealPipeline:
    """models.base.Pipeline for the photoreal mode."""

    mode = MODE

    def __init__(self, config: str | dict | None = None, device: str | None = None, seed: int | None = None,
                 cache_dir: str | Path | None = None, *, liveportrait: LivePortraitPipeline | None = None,
                 musetalk: MuseTalkPipeline | None = None, compile: str | None = None):
        """config: "official", "tiny", or {"liveportrait": <its config>, "musetalk": <its config>};
        device, seed, cache_dir, compile: as each pipeline takes them. `liveportrait` and
        `musetalk` are injected by tests."""
        parts = config if isinstance(config, dict) else {"liveportrait": config, "musetalk": config}
        self.liveportrait = liveportrait or LivePortraitPipeline(parts.get("liveportrait"), device, seed, cache_dir,
                                                                 compile=compile)
        self.musetalk = musetalk or MuseTalkPipeline(parts.get("musetalk"), device, seed or 0, compile=compile)
        self.lookahead_frames = self.musetalk.lookahead_frames

    @property
    def compiled(self) -> tuple:
        """What `compile` did to each part (models/compiled.py: records_cuda_graphs reads it)."""
        return (self.liveportrait.compiled, self.musetalk.compiled)

    # ---- contract -------------------------------------------------------------------

    def prepare(self, media: PersonaMedia, persona_id: str = "") -> Persona:
        persona = self.liveportrait.prepare(media, persona_id)
        source_crop = persona.features[self.liveportrait.mode].crop  # 512×512×3 RGB
        on_crop = self.musetalk.prepare(PersonaMedia([source_crop]), persona_id).features
        # At rest (neutral, no head offset, eyes open) LivePortrait draws the source as it is:
        # the box found on the source crop is where the mouth is in those keypoints.
        rest, _ = self.liveportrait.driving_keypoints(persona, self.liveportrait.start(persona, REST), np.zeros(1),
                                                      REST)
        persona.features[MODE] = MouthRegion(on_crop["boxes"][0], on_crop["masks"][0], on_crop["mask_boxes"][0], rest)
        return persona

    def start(self, persona: Persona, controls: Controls) -> PhotorealCarry:
        return PhotorealCarry(self.liveportrait.start(persona, controls), self.musetalk.start(persona, controls))

    def render(self, persona: Persona, carry: PhotorealCarry, audio16k: np.ndarray, controls: Controls):
        check_audio_chunk(audio16k)
        mt = self.musetalk.note_loudness(carry.musetalk, audio16k)
        first = mt.audio.frames_done
        prompts, stream = self.musetalk.streamer.push(mt.audio, audio16k)
        return self._frames(persona, replace(carry, musetalk=replace(mt, audio=stream)), first, prompts, controls)

    def render_batch(self, jobs: list[tuple[Persona, PhotorealCarry, np.ndarray, Controls]]
                     ) -> list[tuple[np.ndarray, PhotorealCarry]]:
        """Several sessions' chunks at once (the backend's cross-session batching): each job's
        (persona, carry, audio16k, controls) gives what `render` would. Whisper, the silence
        rule and the keypoints run per session; LivePortrait's W+G, then MuseTalk's VAE encoder,
        UNet and decoder, run over every session's frames together."""
        plans = []  # per job: (persona, keypoints N×21×3, prompts, first, the carry after the chunk)
        for persona, carry, audio16k, controls in jobs:
            check_audio_chunk(audio16k)
            mt = self.musetalk.note_loudness(carry.musetalk, audio16k)
            first = mt.audio.frames_done
            prompts, stream = self.musetalk.streamer.push(mt.audio, audio16k)
            keypoints, lp = self.liveportrait.driving_keypoints(persona, carry.liveportrait,
                                                                np.zeros(len(prompts), np.float32), controls)
            plans.append((persona, keypoints, prompts, first,
                          replace(carry, musetalk=replace(mt, audio=stream), liveportrait=lp)))
        all_crops = self.liveportrait.draw_crops([(persona.features[LIVEPORTRAIT], keypoints)
                                                  for persona, keypoints, *_ in plans])
        redraws = [(self.mouth_regions(persona, keypoints, crops.shape[1]) if len(crops) else [], crops, prompts,
                    self.musetalk.speech_weights(carry.musetalk, first, len(prompts)))
                   for (persona, keypoints, prompts, first, carry), crops in zip(plans, all_crops)]
        redrawn = self.redraw_lower_faces_of(redraws)
        return [(self._pasted(persona, crops) if len(crops) else empty_frames(persona), carry)
                for (persona, *_, carry), crops in zip(plans, redrawn)]

    def flush(self, persona: Persona, carry: PhotorealCarry, controls: Controls):
        first = carry.musetalk.audio.frames_done
        prompts, stream = self.musetalk.streamer.flush(carry.musetalk.audio)
        end = first + len(prompts)  # the end of the audio: silence after it
        frames, carry = self._frames(persona, replace(carry, musetalk=replace(carry.musetalk, audio=stream)),
                                     first, prompts, controls, end=end)
        return frames, replace(carry, musetalk=replace(carry.musetalk, utterance_start=end))

    def interrupt(self, persona: Persona, carry: PhotorealCarry, controls: Controls):
        return replace(carry, musetalk=self.musetalk.interrupt(persona, carry.musetalk, controls))

    def idle(self, persona: Persona, carry: PhotorealCarry, n: int, controls: Controls):
        """LivePortrait's idle life with the mouth at rest; MuseTalk's audio stream is left
        alone (as in MuseTalk's own idle: silence in its lookahead would shift the next
        utterance)."""
        if n == 0:
            return empty_frames(persona), carry
        crops, _, lp = self.liveportrait.render_crops(persona, carry.liveportrait, np.zeros(n, np.float32), controls)
        return self._pasted(persona, crops), replace(carry, liveportrait=lp)

    # ---- inside ---------------------------------------------------------------------

    def _frames(self, persona: Persona, carry: PhotorealCarry, first: int, prompts: torch.Tensor,
                controls: Controls, end: int | None = None):
        """The n = len(prompts) frames from `first` on: LivePortrait's crops, lower faces redrawn."""
        n = len(prompts)
        if n == 0:
            return empty_frames(persona), carry
        crops, keypoints, lp = self.liveportrait.render_crops(persona, carry.liveportrait, np.zeros(n, np.float32),
                                                              controls)
        weights = self.musetalk.speech_weights(carry.musetalk, first, n, end)
        regions = self.mouth_regions(persona, keypoints, crops.shape[1])
        crops = self.redraw_lower_faces(regions, crops, prompts, weights)
        return self._pasted(persona, crops), replace(carry, liveportrait=lp)

    def mouth_regions(self, persona: Persona, keypoints: torch.Tensor, side: int) -> list[MouthRegion]:
        """The region found on the source crop, moved with the mouth in each frame (keypoints:
        N×21×3 driving keypoints of LivePortrait's frames)."""
        region: MouthRegion = persona.features[MODE]
        return [region.shifted(int(dx), int(dy)) for dx, dy in mouth_shift_px(region.rest_keypoints, keypoints, side)]

    def redraw_lower_faces(self, regions: list[MouthRegion], crops: np.ndarray, prompts: torch.Tensor,
                           weights: list[float]) -> np.ndarray:
        """MuseTalk on LivePortrait's crops (N×S×S×3 uint8 RGB): each crop with weight > 0
        gets its lower face generated from its own latents and audio prompt (prompts: N×50×384),
        blended with its region's mask and cross-faded by its weight. -> N×S×S×3 uint8 RGB."""
        return self.redraw_lower_faces_of([(regions, crops, prompts, weights)])[0]

    def redraw_lower_faces_of(self, jobs: list[tuple[list[MouthRegion], np.ndarray, torch.Tensor, list[float]]]
                              ) -> list[np.ndarray]:
        """`redraw_lower_faces` for several sessions' (regions, crops, prompts, weights), their
        speaking frames through MuseTalk together, `batch_size` at a time."""
        outs = [[np.ascontiguousarray(crop[..., ::-1]) for crop in crops] for _, crops, _, _ in jobs]  # BGR
        speaking = [(j, k) for j, (_, _, _, weights) in enumerate(jobs) for k, w in enumerate(weights) if w > 0]
        for start in range(0, len(speaking), self.musetalk.config.batch_size):
            batch = speaking[start:start + self.musetalk.config.batch_size]
            faces_256 = np.stack([crop_face(outs[j][k], jobs[j][0][k].box) for j, k in batch])  # B×256×256×3 BGR
            latents = vae_ops.unet_input_latents(self.musetalk.nets.vae, faces_256).float().cpu()  # B×8×32×32
            prompts = torch.stack([jobs[j][2][k] for j, k in batch])
            for (j, k), face in zip(batch, generate(self.musetalk.nets, latents, prompts)):
                r = jobs[j][0][k]
                drawn = blend(outs[j][k], resize_face(face, r.box), r.box, r.mask, r.mask_box)
                outs[j][k] = crossfade(outs[j][k], drawn, jobs[j][3][k])
        return [np.stack([frame[..., ::-1] for frame in out]) if out else crops
                for out, (_, crops, _, _) in zip(outs, jobs)]

    def _pasted(self, persona: Persona, crops: np.ndarray) -> np.ndarray:
        return np.stack([self.liveportrait.paste(persona, crop) for crop in crops])


def weight_files(config: str | dict | None = None, cache_dir: str | Path | None = None, **options) -> list:
    """Every official file the mode needs (models.modes' hook): LivePortrait's and MuseTalk's,
    none for the tiny preset."""
    from ..liveportrait.loading import weight_files as liveportrait_files
    from ..musetalk.config import weight_files as musetalk_files

    parts = config if isinstance(config, dict) else {"liveportrait": config, "musetalk": config}
    files = [] if parts.get("liveportrait") == "tiny" else liveportrait_files(cache_dir=cache_dir)
    files += musetalk_files(parts.get("musetalk"))
    return list(dict.fromkeys(files))  # each once, in order
