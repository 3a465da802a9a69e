"""Drive a source with recorded motion (upstream's motion-template layout): the reference path.

This is what upstream LivePortrait's `execute` does for an image source and a
video (or motion-template) driving with its CLI defaults, and what the oracle
fixture `fixture_pipeline_A` checks end to end:

1. relative motion: the source moves the way the driving moved since its frame 0;
2. expression-friendly: motion relative to frame 0, rescaled by the ratio of the
   keypoint hulls' sizes (computed once, on frame 0), added to x_s;
3. stitching on; 4. driving multiplier (1.0 by default).

A template frame is a dict of tensors: R 1×3×3, exp 1×21×3, scale 1×1, t 1×3.
"""
from __future__ import annotations

from dataclasses import dataclass

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


@torch.no_grad()
def drive_with_template(
    nets: LivePortraitNetworks,
    source: SourceMotion,
    template: list[dict[str, torch.Tensor]],
    driving_multiplier: float = 1.0,
) -> tuple[list[DrivenFrame], float]:
    """Driven keypoints per template frame, and the expression-friendly motion multiplier."""
    reference = template[0]
    x_d_ref = keypoints.relative_motion(source.info, source.R_s, reference, reference)
    multiplier = keypoints.motion_multiplier(source.x_s, x_d_ref)
    frames = []
    for motion in template:
        x_d = keypoints.relative_motion(source.info, source.R_s, motion, reference)
        x_d = keypoints.expression_friendly(x_d, x_d_ref, source.x_s, multiplier)
        stitched = keypoints.stitching(nets.stitching.stitching, source.x_s, x_d)
        final = keypoints.apply_driving_multiplier(source.x_s, stitched, driving_multiplier)
        frames.append(DrivenFrame(stitch_in=x_d, stitch_out=stitched, x_d=final))
    return frames, multiplier
