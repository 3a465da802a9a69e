"""G, the SPADE generator: W's feature map to the animated 512×512 RGB image.

The feature map is both the input and the SPADE "segmentation map" that
modulates every normalisation. 6 residual blocks at 64², two upsampling
blocks to 256², then a conv to 12 channels and PixelShuffle(2) to 3×512².
The residual blocks' convs carry spectral norm. The official
`spade_generator.pth` stores them the way torch's old `spectral_norm` hook
does: `weight_orig`, `weight_u`, `weight_v`, and no `weight`.
`SpectralNormConv2d` keeps those names and folds
W = weight_orig / (u · (weight_orig_mat @ v)) with the STORED u and v, once
on load. This is what the reference does in eval mode (no power iteration).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import SPADEGeneratorConfig

LEAKY_SLOPE = 0.2


class SpectralNormConv2d(nn.Module):
    """Conv2d whose weight is weight_orig / σ, σ = u·(W_mat v) from the stored vectors.

    `weight` is a non-persistent buffer (not in the state dict), refolded after
    every load_state_dict, so the forward pass costs a plain convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, bias: bool = True):
        super().__init__()
        self.padding = padding
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.weight_orig = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight_orig, a=5**0.5)
        self.register_buffer("weight_u", torch.empty(out_channels))
        self.register_buffer("weight_v", torch.empty(in_channels * kernel_size * kernel_size))
        self.register_buffer("weight", torch.empty(shape), persistent=False)
        self._init_singular_vectors()
        self.register_load_state_dict_post_hook(SpectralNormConv2d._refold_after_load)

    @staticmethod
    def _refold_after_load(module: "SpectralNormConv2d", _incompatible_keys) -> None:
        # A static method, not a lambda, so the module stays picklable.
        module.refold()

    @torch.no_grad()
    def _init_singular_vectors(self, iterations: int = 5) -> None:
        # For fresh modules only: u, v ≈ top singular vectors, so σ ≈ the spectral norm.
        mat = self.weight_orig.reshape(self.weight_orig.shape[0], -1)
        v = F.normalize(torch.ones(mat.shape[1]), dim=0)
        for _ in range(iterations):
            u = F.normalize(mat @ v, dim=0)
            v = F.normalize(mat.t() @ u, dim=0)
        self.weight_u.copy_(u)
        self.weight_v.copy_(v)
        self.refold()

    def sigma(self) -> torch.Tensor:
        """σ = u · (W_mat v), in float32 whatever the module's dtype."""
        mat = self.weight_orig.float().reshape(self.weight_orig.shape[0], -1)
        return torch.dot(self.weight_u.float(), mat @ self.weight_v.float())

    @torch.no_grad()
    def refold(self) -> None:
        """Recompute `weight` from weight_orig, weight_u, weight_v."""
        self.weight = (self.weight_orig.float() / self.sigma()).to(self.weight_orig.dtype)

    def _apply(self, fn, recurse=True):
        # .to()/.half() convert `weight` too; refold from the converted originals for consistency.
        out = super()._apply(fn, recurse)
        self.refold()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=self.padding)


class SPADE(nn.Module):
    """InstanceNorm(x) · (1 + γ(seg)) + β(seg), γ and β from a small conv net on the segmap."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int):
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel_size=3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, kernel_size=3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        # x: B×C×H×W; segmap: B×256×64×64, resized (nearest) to x's size
        normalized = F.instance_norm(x, eps=1e-5)
        segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    """x_s + conv_1(lrelu(SPADE(conv_0(lrelu(SPADE(x)))))), with a learned shortcut when widths differ."""

    def __init__(self, fin: int, fout: int, label_nc: int, hidden: int):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = SpectralNormConv2d(fin, fmiddle, kernel_size=3, padding=1)
        self.conv_1 = SpectralNormConv2d(fmiddle, fout, kernel_size=3, padding=1)
        self.norm_0 = SPADE(fin, label_nc, hidden)
        self.norm_1 = SPADE(fmiddle, label_nc, hidden)
        if self.learned_shortcut:
            self.conv_s = SpectralNormConv2d(fin, fout, kernel_size=1, bias=False)
            self.norm_s = SPADE(fin, label_nc, hidden)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), LEAKY_SLOPE))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), LEAKY_SLOPE))
        return x_s + dx


class SPADEGenerator(nn.Module):
    def __init__(self, config: SPADEGeneratorConfig | None = None):
        super().__init__()
        self.config = config = config or SPADEGeneratorConfig()
        cin, hidden = config.input_channels, config.spade_hidden
        self.fc = nn.Conv2d(cin, 2 * cin, kernel_size=3, padding=1)
        for i in range(config.num_middle_blocks):
            # Official names G_middle_0..5 are attributes, not a ModuleList.
            self.add_module(f"G_middle_{i}", SPADEResnetBlock(2 * cin, 2 * cin, cin, hidden))
        self.up_0 = SPADEResnetBlock(2 * cin, cin, cin, hidden)
        self.up_1 = SPADEResnetBlock(cin, config.out_channels, cin, hidden)
        # 64 -> 3·upscale² channels, then PixelShuffle: the last 2× upsampling is sub-pixel.
        self.conv_img = nn.Sequential(
            nn.Conv2d(config.out_channels, 3 * config.upscale**2, kernel_size=3, padding=1),
            nn.PixelShuffle(config.upscale),
        )

    def middle_blocks(self) -> list[SPADEResnetBlock]:
        return [getattr(self, f"G_middle_{i}") for i in range(self.config.num_middle_blocks)]

    def spectral_convs(self) -> dict[str, SpectralNormConv2d]:
        """Name (as in the official file, without the suffix) -> spectral-normed conv."""
        return {name: m for name, m in self.named_modules() if isinstance(m, SpectralNormConv2d)}

    def forward_pre_sigmoid(self, feature: torch.Tensor) -> torch.Tensor:
        # feature: B×256×64×64 (W's out), also the SPADE segmap
        seg = feature
        x = self.fc(feature)  # B×512×64×64
        for block in self.middle_blocks():
            x = block(x, seg)
        x = self.up_0(F.interpolate(x, scale_factor=2), seg)  # B×256×128×128
        x = self.up_1(F.interpolate(x, scale_factor=2), seg)  # B×64×256×256
        return self.conv_img(F.leaky_relu(x, LEAKY_SLOPE))  # B×3×512×512

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        # -> B×3×512×512 RGB in (0,1)
        return torch.sigmoid(self.forward_pre_sigmoid(feature))
