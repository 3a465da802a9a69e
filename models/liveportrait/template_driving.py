"""Drive a source with recorded motion (upstream's motion-template layout): the reference path.

This is what upstream LivePortrait's `execute` does for an image source and a
video (or motion-template) driving, and what the oracle fixtures
`fixture_pipeline_{A,B,C}` check end to end. With `TemplateOptions()` (the CLI
defaults, fixture A):

1. relative motion: the source moves the way the driving moved since its frame 0;
2. expression-friendly: motion relative to frame 0, rescaled by the ratio of the
   keypoint hulls' sizes (computed once, on frame 0), added to x_s;
3. stitching on; 4. driving multiplier (1.0 by default).

`driving_option="pose-friendly"` skips step 2; `normalize_lip` closes the source's
mouth first (a lip-retargeting offset to lip ratio 0 added after stitching, where the
source's lip ratio reaches the threshold) -- together the InferenceConfig defaults,
fixture B. `eye_retargeting` / `lip_retargeting` replace the driving motion by the
retargeting MLPs' offsets towards the template's per-frame eye and lip ratios
(`x_d = x_s + Δeyes + Δlip`, then stitching) -- fixture C.

A template frame is a dict of tensors: R 1×3×3, exp 1×21×3, scale 1×1, t 1×3, and for
retargeting c_eyes (1×2 or 2,) and c_lip (1×1 or 1,) -- upstream uses their first value.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from . import keypoints
from .loading import LivePortraitNetworks
from .source import SourceMotion


@dataclass
class DrivenFrame:
    """Keypoints of one driven frame, 1×21×3 each: before stitching, after it, and given to W."""

    stitch_in: torch.Tensor
    stitch_out: torch.Tensor
    x_d: torch.Tensor


@dataclass(frozen=True)
class TemplateOptions:
    """The InferenceConfig fields that change template driving (defaults: upstream's CLI)."""

    driving_option: Literal["expression-friendly", "pose-friendly"] = "expression-friendly"
    normalize_lip: bool = False
    lip_normalize_threshold: float = 0.03
    eye_retargeting: bool = False
    lip_retargeting: bool = False
    driving_multiplier: float = 1.0

    @property
    def retargeting(self) -> bool:
        return self.eye_retargeting or self.lip_retargeting


@torch.no_grad()
def drive_with_template(
    nets: LivePortraitNetworks,
    source: SourceMotion,
    template: list[dict[str, torch.Tensor]],
    options: TemplateOptions = TemplateOptions(),
    eye_ratio: torch.Tensor | None = None,
    lip_ratio: torch.Tensor | None = None,
) -> tuple[list[DrivenFrame], float | None]:
    """Driven keypoints per template frame, and the expression-friendly motion multiplier
    (None when pose-friendly). eye_ratio 1×2 and lip_ratio 1×1 are the source's own eye
    and lip close ratios (from its 203 landmarks), needed for retargeting and normalize_lip."""
    reference = template[0]
    x_s = source.x_s
    x_d_ref = keypoints.relative_motion(source.info, source.R_s, reference, reference)
    expression_friendly = options.driving_option == "expression-friendly"
    multiplier = keypoints.motion_multiplier(x_s, x_d_ref) if expression_friendly else None
    lip_before = _lip_delta_before_animation(nets, x_s, options, lip_ratio)
    frames = []
    for motion in template:
        x_d = keypoints.relative_motion(source.info, source.R_s, motion, reference)
        if multiplier is not None:
            x_d = keypoints.expression_friendly(x_d, x_d_ref, x_s, multiplier)
        if options.retargeting:  # the template's eye and lip ratios replace its motion
            x_d = _retargeted(nets, x_s, motion, options, eye_ratio, lip_ratio)
        stitched = keypoints.stitching(nets.stitching.stitching, x_s, x_d)
        final = stitched + lip_before if lip_before is not None and not options.retargeting else stitched
        final = keypoints.apply_driving_multiplier(x_s, final, options.driving_multiplier)
        frames.append(DrivenFrame(stitch_in=x_d, stitch_out=stitched, x_d=final))
    return frames, multiplier


def _first(value) -> torch.Tensor:
    """Upstream reads a template's per-frame ratio as its first value: 1×1."""
    return torch.as_tensor(value, dtype=torch.float32).reshape(-1)[:1].reshape(1, 1)


def _lip_delta_before_animation(nets, x_s, options: TemplateOptions, lip_ratio) -> torch.Tensor | None:
    """normalize_lip: the offset that closes the source's mouth (lip ratio 0), where it is open
    at least the threshold; None otherwise."""
    if not options.normalize_lip:
        return None
    if lip_ratio is None:
        raise ValueError("normalize_lip needs the source's lip ratio")
    if float(lip_ratio.reshape(-1)[0]) < options.lip_normalize_threshold:
        return None
    condition = torch.cat([lip_ratio.reshape(1, 1).float(), torch.zeros(1, 1)], dim=1)  # [c_s_lip, 0]
    return keypoints.retarget_lip(nets.stitching.lip, x_s, condition)


def _retargeted(nets, x_s, motion, options: TemplateOptions, eye_ratio, lip_ratio) -> torch.Tensor:
    """x_s + Δeyes + Δlip towards the frame's c_eyes / c_lip (each only where its flag is on)."""
    if eye_ratio is None or lip_ratio is None:
        raise ValueError("retargeting needs the source's eye and lip ratios")
    x_d = x_s
    if options.eye_retargeting:
        condition = torch.cat([eye_ratio.reshape(1, 2).float(), _first(motion["c_eyes"])], dim=1)  # 1×3
        x_d = x_d + keypoints.retarget_eye(nets.stitching.eye, x_s, condition)
    if options.lip_retargeting:
        condition = torch.cat([lip_ratio.reshape(1, 1).float(), _first(motion["c_lip"])], dim=1)  # 1×2
        x_d = x_d + keypoints.retarget_lip(nets.stitching.lip, x_s, condition)
    return x_d
