"""F, the appearance feature extractor: a source image to a 3-D feature volume.

A small 2-D conv encoder (conv+BN+ReLU, two downsampling blocks, a 1×1 conv)
whose 512 output channels are read as 32 channels × 16 depth slices, refined
by pre-activation 3-D residual blocks. Parameter names equal the official
`appearance_feature_extractor.pth`.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import AppearanceFeatureExtractorConfig


class SameBlock2d(nn.Module):
    """conv 3×3 -> BatchNorm -> ReLU (or LeakyReLU 0.01), resolution kept."""

    def __init__(self, in_features: int, out_features: int, lrelu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_features)
        self.lrelu = lrelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return F.leaky_relu(x) if self.lrelu else F.relu(x)


class DownBlock2d(nn.Module):
    """conv 3×3 -> BatchNorm -> ReLU -> 2×2 average pool."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), kernel_size=2)


class ResBlock3d(nn.Module):
    """Pre-activation residual block: x + conv(relu(bn(conv(relu(bn(x))))))."""

    def __init__(self, features: int):
        super().__init__()
        self.norm1 = nn.BatchNorm3d(features)
        self.conv1 = nn.Conv3d(features, features, kernel_size=3, padding=1)
        self.norm2 = nn.BatchNorm3d(features)
        self.conv2 = nn.Conv3d(features, features, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


class AppearanceFeatureExtractor(nn.Module):
    def __init__(self, config: AppearanceFeatureExtractorConfig | None = None):
        super().__init__()
        self.config = config = config or AppearanceFeatureExtractorConfig()
        self.first = SameBlock2d(config.image_channel, config.block_expansion)
        blocks = []
        for i in range(config.num_down_blocks):
            cin = min(config.max_features, config.block_expansion * 2**i)
            cout = min(config.max_features, config.block_expansion * 2 ** (i + 1))
            blocks.append(DownBlock2d(cin, cout))
        self.down_blocks = nn.ModuleList(blocks)
        encoder_out = min(config.max_features, config.block_expansion * 2**config.num_down_blocks)
        self.second = nn.Conv2d(encoder_out, config.max_features, kernel_size=1)
        # Upstream names the residual blocks "3dr0".."3dr5" inside a Sequential.
        self.resblocks_3d = nn.Sequential()
        for i in range(config.num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(config.reshape_channel))

    def encode_2d(self, image: torch.Tensor) -> torch.Tensor:
        # image: B×3×256×256 in [0,1] -> B×512×64×64
        out = self.first(image)
        for block in self.down_blocks:
            out = block(out)
        return self.second(out)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # image: B×3×256×256 RGB in [0,1] (no mean/std normalisation)
        out = self.encode_2d(image)
        b, _, h, w = out.shape
        # The 512 channels are channel-major: 32 feature channels × 16 depth slices.
        volume = out.view(b, self.config.reshape_channel, self.config.reshape_depth, h, w)
        return self.resblocks_3d(volume)  # B×32×16×64×64
