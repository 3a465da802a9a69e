"""W, the warping network: moves F's 3-D feature volume by the keypoint motion.

The dense-motion sub-network turns the source and driving keypoints into one
backward flow per voxel: each keypoint k proposes the flow `g − kp_d[k] +
kp_s[k]` (index 0: no motion), and a 3-D hourglass, fed with Gaussian
heatmap differences and the volume warped by each proposal, predicts a
softmax mask that blends the proposals, plus a 2-D occlusion map. The volume
is then sampled along the blended flow with a 5-D grid_sample, flattened to
2-D and projected to the SPADE generator's input. Parameter names equal the
official `warping_module.pth`.

Conventions kept from the reference (see oracle README section 5): the
identity grid is `2·i/(n−1) − 1` in (x=w, y=h, z=d) order, but grid_sample
uses align_corners=False, so the grid does not hit voxel centres.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .appearance_feature_extractor import SameBlock2d
from .config import DenseMotionConfig, WarpingNetworkConfig

KP_VARIANCE = 0.01


def make_coordinate_grid(spatial_size: tuple[int, int, int], ref: torch.Tensor) -> torch.Tensor:
    """D×H×W×3 grid of (x, y, z) in [-1, 1], in ref's dtype and device."""
    d, h, w = spatial_size

    def axis(n: int) -> torch.Tensor:
        return 2 * (torch.arange(n, device=ref.device).to(ref.dtype) / (n - 1)) - 1

    z, y, x = torch.meshgrid(axis(d), axis(h), axis(w), indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def kp_to_gaussian(kp: torch.Tensor, spatial_size: tuple[int, int, int]) -> torch.Tensor:
    """kp: B×K×3 -> B×K×D×H×W Gaussian bumps of variance KP_VARIANCE at each keypoint."""
    grid = make_coordinate_grid(spatial_size, kp)  # D×H×W×3
    diff = grid[None, None] - kp[:, :, None, None, None, :]
    return torch.exp(-0.5 * diff.pow(2).sum(-1) / KP_VARIANCE)


class DownBlock3d(nn.Module):
    """conv 3×3×3 -> BatchNorm -> ReLU -> average pool over (1, 2, 2): depth kept."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(F.relu(self.norm(self.conv(x))), kernel_size=(1, 2, 2))


class UpBlock3d(nn.Module):
    """nearest upsampling by (1, 2, 2) -> conv 3×3×3 -> BatchNorm -> ReLU."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1, 2, 2))
        return F.relu(self.norm(self.conv(x)))


class Encoder(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        widths = [in_features] + [min(max_features, block_expansion * 2 ** (i + 1)) for i in range(num_blocks)]
        self.down_blocks = nn.ModuleList(DownBlock3d(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs  # input first, deepest last


class Decoder(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            # The deepest block takes the bottleneck alone; later ones take [up, skip].
            fan_in = (1 if i == num_blocks - 1 else 2) * min(max_features, block_expansion * 2 ** (i + 1))
            blocks.append(UpBlock3d(fan_in, min(max_features, block_expansion * 2**i)))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_filters)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        skips = list(skips)
        out = skips.pop()
        for block in self.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return F.relu(self.norm(self.conv(out)))


class Hourglass(nn.Module):
    """3-D U-Net: depth is never pooled, height and width halve per level."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class DenseMotionNetwork(nn.Module):
    def __init__(self, config: DenseMotionConfig, num_kp: int, feature_channel: int, estimate_occlusion_map: bool):
        super().__init__()
        self.num_kp = num_kp
        in_features = (num_kp + 1) * (config.compress + 1)  # per proposal: heatmap + compressed features
        self.hourglass = Hourglass(config.block_expansion, in_features, config.num_blocks, config.max_features)
        k = config.mask_kernel_size
        self.mask = nn.Conv3d(self.hourglass.out_filters, num_kp + 1, kernel_size=k, padding=k // 2)
        self.compress = nn.Conv3d(feature_channel, config.compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(config.compress)
        if estimate_occlusion_map:
            k = config.occlusion_kernel_size
            flat_channels = self.hourglass.out_filters * config.reshape_depth
            self.occlusion = nn.Conv2d(flat_channels, 1, kernel_size=k, padding=k // 2)
        else:
            self.occlusion = None

    def sparse_motions(
        self, spatial_size: tuple[int, int, int], kp_driving: torch.Tensor, kp_source: torch.Tensor
    ) -> torch.Tensor:
        # -> B×(K+1)×D×H×W×3 backward flows; proposal 0 is the identity.
        b = kp_source.shape[0]
        identity = make_coordinate_grid(spatial_size, kp_source)[None, None]  # 1×1×D×H×W×3
        # Same operation order as the reference: (grid − kp_d) + kp_s.
        per_kp = identity - kp_driving[:, :, None, None, None, :] + kp_source[:, :, None, None, None, :]
        return torch.cat([identity.expand(b, 1, *identity.shape[2:]), per_kp], dim=1)

    def deformed_features(self, feature: torch.Tensor, motions: torch.Tensor) -> torch.Tensor:
        # feature: B×C×D×H×W, motions: B×(K+1)×D×H×W×3 -> B×(K+1)×C×D×H×W
        b, c, d, h, w = feature.shape
        k1 = motions.shape[1]
        repeated = feature[:, None].expand(b, k1, c, d, h, w).reshape(b * k1, c, d, h, w)
        # Sample in the flows' precision: half-precision coordinates would be off by ~¼ voxel.
        repeated = repeated.to(motions.dtype)
        warped = F.grid_sample(repeated, motions.reshape(b * k1, d, h, w, 3), align_corners=False)
        return warped.view(b, k1, c, d, h, w)

    def heatmaps(
        self, spatial_size: tuple[int, int, int], kp_driving: torch.Tensor, kp_source: torch.Tensor
    ) -> torch.Tensor:
        # -> B×(K+1)×1×D×H×W: Gaussian(driving) − Gaussian(source), zeros for the identity proposal
        heat = kp_to_gaussian(kp_driving, spatial_size) - kp_to_gaussian(kp_source, spatial_size)
        zeros = torch.zeros_like(heat[:, :1])
        return torch.cat([zeros, heat], dim=1)[:, :, None]

    def forward(
        self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        # feature: B×32×16×64×64; kp_*: B×K×3
        b, _, d, h, w = feature.shape
        feature = F.relu(self.norm(self.compress(feature)))  # B×4×D×H×W
        motions = self.sparse_motions((d, h, w), kp_driving, kp_source)
        deformed = self.deformed_features(feature, motions)  # B×(K+1)×4×D×H×W
        heat = self.heatmaps((d, h, w), kp_driving, kp_source).to(deformed.dtype)
        # Per proposal [heatmap, 4 features], proposals concatenated: B×(K+1)·5×D×H×W
        hourglass_in = torch.cat([heat, deformed], dim=2).view(b, -1, d, h, w)
        prediction = self.hourglass(hourglass_in)  # B×142×D×H×W
        mask = torch.softmax(self.mask(prediction), dim=1)  # B×(K+1)×D×H×W
        # Blend the proposals: Σ_k mask_k · flow_k -> B×D×H×W×3
        deformation = (motions * mask[..., None].to(motions.dtype)).sum(dim=1)
        out = {"mask": mask, "deformation": deformation, "prediction": prediction}
        if self.occlusion is not None:
            # Depth folded into channels, channel-major: B×(142·16)×H×W -> B×1×H×W
            out["occlusion_map"] = torch.sigmoid(self.occlusion(prediction.reshape(b, -1, h, w)))
        return out


class WarpingNetwork(nn.Module):
    def __init__(self, config: WarpingNetworkConfig | None = None):
        super().__init__()
        self.config = config = config or WarpingNetworkConfig()
        self.dense_motion_network = DenseMotionNetwork(
            config.dense_motion, config.num_kp, config.reshape_channel, config.estimate_occlusion_map
        )
        self.third = SameBlock2d(config.max_features, config.out_channels, lrelu=True)
        self.fourth = nn.Conv2d(config.out_channels, config.out_channels, kernel_size=1)

    def forward(
        self, feature_3d: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor,
        return_intermediates: bool = False,
    ) -> dict[str, torch.Tensor]:
        """feature_3d: B×32×16×64×64 (F's output); kp_*: B×21×3 posed keypoints.

        Returns out B×256×64×64 (G's input), deformation B×16×64×64×3 and
        occlusion_map B×1×64×64 (None without occlusion). With
        return_intermediates also the dense-motion mask B×22×16×64×64, the
        hourglass output B×142×16×64×64 and the warped volume B×32×16×64×64
        (kept off by default: they are large).
        """
        dense = self.dense_motion_network(feature_3d, kp_driving, kp_source)
        deformation = dense["deformation"]
        # 5-D grid_sample: ONNX has it from opset 20 (export.py); TensorRT may need a plugin. It
        # samples in the flow's precision (float32 under autocast).
        warped = F.grid_sample(feature_3d.to(deformation.dtype), deformation, align_corners=False)
        b, c, d, h, w = warped.shape
        out = self.fourth(self.third(warped.view(b, c * d, h, w)))  # B×256×64×64
        occlusion = dense.get("occlusion_map")
        if occlusion is not None:
            out = out * occlusion
        result = {"out": out, "deformation": deformation, "occlusion_map": occlusion}
        if return_intermediates:
            result.update(mask=dense["mask"], hourglass=dense["prediction"], warped=warped)
        return result
