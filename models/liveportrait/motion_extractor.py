"""M, the motion extractor: ConvNeXt-V2 (tiny) backbone with seven linear heads.

From one 256×256 image it predicts the head pose as 66 bins per angle
(pitch, yaw, roll), a translation t, a per-keypoint expression offset, a
global scale and the canonical keypoints. The backbone is ConvNeXt-V2:
depthwise 7×7 conv, LayerNorm, an inverted-bottleneck MLP with Global
Response Normalisation (GRN). Parameter names equal the official
`motion_extractor.pth`, all under `detector.`.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import MotionExtractorConfig

LAYER_NORM_EPS = 1e-6


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel dimension of a B×C×H×W tensor."""

    def __init__(self, dim: int, eps: float = LAYER_NORM_EPS):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: B×C×H×W; normalise each pixel's C-vector (biased variance, as LayerNorm).
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GRN(nn.Module):
    """Global Response Normalisation on channels-last input.

    gamma and beta are stored as 1×1×1×C, the shape the official file holds.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: B×H×W×C. Per-channel L2 norm over space, divided by its mean over channels.
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    """dwconv 7×7 -> LayerNorm -> Linear 4× -> GELU -> GRN -> Linear, plus the residual."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: B×C×H×W
        out = self.dwconv(x).permute(0, 2, 3, 1)  # B×H×W×C
        out = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(out)))))
        return x + out.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    """Backbone plus heads; the official file's `detector` submodule."""

    def __init__(self, config: MotionExtractorConfig):
        super().__init__()
        dims = config.dims
        # Stem: 4×4 patchify conv then LayerNorm; later stages: LayerNorm then 2×2 stride-2 conv.
        stem = nn.Sequential(
            nn.Conv2d(config.in_chans, dims[0], kernel_size=4, stride=4), ChannelsFirstLayerNorm(dims[0])
        )
        downs = [stem]
        for cin, cout in zip(dims[:-1], dims[1:]):
            downs.append(nn.Sequential(ChannelsFirstLayerNorm(cin), nn.Conv2d(cin, cout, kernel_size=2, stride=2)))
        self.downsample_layers = nn.ModuleList(downs)
        self.stages = nn.ModuleList(
            nn.Sequential(*[ConvNeXtV2Block(dim) for _ in range(depth)]) for dim, depth in zip(dims, config.depths)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=LAYER_NORM_EPS)

        num_kp, width = config.num_kp, dims[-1]
        self.fc_kp = nn.Linear(width, 3 * num_kp)
        self.fc_scale = nn.Linear(width, 1)
        self.fc_pitch = nn.Linear(width, config.num_bins)
        self.fc_yaw = nn.Linear(width, config.num_bins)
        self.fc_roll = nn.Linear(width, config.num_bins)
        self.fc_t = nn.Linear(width, 3)
        self.fc_exp = nn.Linear(width, 3 * num_kp)

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        # x: B×3×256×256 -> [B×96×64×64, B×192×32×32, B×384×16×16, B×768×8×8]
        outs = []
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
            outs.append(x)
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # Global average pool of the last stage, then LayerNorm: B×768
        return self.norm(self.stage_outputs(x)[-1].mean(dim=(-2, -1)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.forward_features(x)
        return {
            "pitch": self.fc_pitch(feat),  # B×66 bin logits
            "yaw": self.fc_yaw(feat),  # B×66
            "roll": self.fc_roll(feat),  # B×66
            "t": self.fc_t(feat),  # B×3
            "exp": self.fc_exp(feat),  # B×63
            "scale": self.fc_scale(feat),  # B×1
            "kp": self.fc_kp(feat),  # B×63 canonical keypoints
        }


class MotionExtractor(nn.Module):
    """Raw head outputs; `keypoints.refine_kp_info` turns them into degrees and B×21×3."""

    def __init__(self, config: MotionExtractorConfig | None = None):
        super().__init__()
        self.config = config or MotionExtractorConfig()
        self.detector = ConvNeXtV2(self.config)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        # image: B×3×256×256 RGB in [0,1]
        return self.detector(image)
