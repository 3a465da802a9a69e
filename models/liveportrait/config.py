"""Typed configuration of the five LivePortrait networks.

Defaults are the official values (upstream `src/config/models.yaml`); the
official checkpoints only load into modules built from these defaults.
`LivePortraitConfig.tiny()` gives the same module classes at small widths for
unit tests: its parameter names follow the same pattern, but its shapes do not
match any official file.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AppearanceFeatureExtractorConfig:
    """F: image (B×3×256×256) -> 3-D appearance volume (B×C×D×64×64)."""

    image_channel: int = 3
    block_expansion: int = 64
    num_down_blocks: int = 2
    max_features: int = 512
    reshape_channel: int = 32  # C of the 3-D volume
    reshape_depth: int = 16  # D of the 3-D volume; reshape_channel·reshape_depth == max_features
    num_resblocks: int = 6


@dataclass(frozen=True)
class MotionExtractorConfig:
    """M: ConvNeXt-V2 backbone + linear heads for pose bins, translation, expression, scale, canonical keypoints."""

    num_kp: int = 21
    in_chans: int = 3
    depths: tuple[int, ...] = (3, 3, 9, 3)  # ConvNeXt-V2 "tiny"
    dims: tuple[int, ...] = (96, 192, 384, 768)
    num_bins: int = 66  # head-pose classification bins of 3 degrees


@dataclass(frozen=True)
class DenseMotionConfig:
    """The dense-motion sub-network of W: a 3-D hourglass predicting per-keypoint masks and occlusion."""

    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    reshape_depth: int = 16
    compress: int = 4
    mask_kernel_size: int = 7  # the mask conv dominates W's cost; tiny configs shrink it
    occlusion_kernel_size: int = 7


@dataclass(frozen=True)
class WarpingNetworkConfig:
    """W: warps F's volume by the keypoint motion and flattens it into a 2-D feature map."""

    num_kp: int = 21
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    reshape_channel: int = 32
    estimate_occlusion_map: bool = True
    dense_motion: DenseMotionConfig = field(default_factory=DenseMotionConfig)

    @property
    def out_channels(self) -> int:
        return self.block_expansion * 2**self.num_down_blocks


@dataclass(frozen=True)
class SPADEGeneratorConfig:
    """G: SPADE decoder from W's feature map (B×256×64×64) to an RGB image (B×3×512×512)."""

    upscale: int = 2
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    out_channels: int = 64  # channels before the final conv (upstream's default)
    spade_hidden: int = 128  # hidden width of each SPADE modulation MLP
    num_middle_blocks: int = 6

    @property
    def input_channels(self) -> int:
        return min(self.max_features, self.block_expansion * 2**self.num_down_blocks)


@dataclass(frozen=True)
class MLPConfig:
    input_size: int
    hidden_sizes: tuple[int, ...]
    output_size: int


@dataclass(frozen=True)
class StitchingRetargetingConfig:
    """S: the stitching MLP and the lip and eye retargeting MLPs."""

    stitching: MLPConfig = MLPConfig(126, (128, 128, 64), 65)
    lip: MLPConfig = MLPConfig(65, (128, 128, 64), 63)
    eye: MLPConfig = MLPConfig(66, (256, 256, 128, 128, 64), 63)


@dataclass(frozen=True)
class LivePortraitConfig:
    """All five networks; the defaults load the official KwaiVGI/LivePortrait files."""

    appearance: AppearanceFeatureExtractorConfig = field(default_factory=AppearanceFeatureExtractorConfig)
    motion: MotionExtractorConfig = field(default_factory=MotionExtractorConfig)
    warping: WarpingNetworkConfig = field(default_factory=WarpingNetworkConfig)
    spade: SPADEGeneratorConfig = field(default_factory=SPADEGeneratorConfig)
    stitching: StitchingRetargetingConfig = field(default_factory=StitchingRetargetingConfig)

    @classmethod
    def tiny(cls) -> "LivePortraitConfig":
        """Small widths, same structure and I/O contract: 256² in, 21 keypoints, 512² out.

        The 3-D volume keeps 64×64 but only 4 depth slices, and the dense-motion
        convs use 3×3 kernels, so a tiny frame costs well under a second on CPU;
        keypoint math (21 keypoints) and the warping grids work as in the real model.
        """
        return cls(
            appearance=AppearanceFeatureExtractorConfig(
                block_expansion=8, max_features=16, reshape_channel=4, reshape_depth=4, num_resblocks=1
            ),
            motion=MotionExtractorConfig(depths=(1, 1, 1, 1), dims=(8, 16, 16, 32)),
            warping=WarpingNetworkConfig(
                block_expansion=8,
                max_features=16,
                reshape_channel=4,
                dense_motion=DenseMotionConfig(
                    block_expansion=4, max_features=16, num_blocks=2, reshape_depth=4, compress=1,
                    mask_kernel_size=3, occlusion_kernel_size=3,
                ),
            ),
            spade=SPADEGeneratorConfig(
                block_expansion=8, max_features=64, out_channels=8, spade_hidden=8, num_middle_blocks=1
            ),
            stitching=StitchingRetargetingConfig(
                stitching=MLPConfig(126, (16, 16), 65),
                lip=MLPConfig(65, (16, 16), 63),
                eye=MLPConfig(66, (16, 16), 63),
            ),
        )
