"""BiSeNet face parser (19 CelebAMask-HQ classes) and MuseTalk's blending masks.

Network: our own code with the parameter names of zllrunning/face-parsing.PyTorch,
so `79999_iter.pth` (191 tensors incl. BatchNorm `num_batches_tracked`) loads
unchanged and strictly. A ResNet-18 context path (1/8, 1/16, 1/32 features),
attention refinement, feature fusion, three heads upsampled to the input size;
the first head is the prediction.

Masks from the label map (class ids: 1 skin, 10 nose, 11 mouth, 12/13 lips, 14 neck):
  raw  = {1, 11, 12, 13}
  neck = raw + {14}
  jaw  = skin dilated with a cone kernel; inside the cheek columns eroded twice
         with a flat 35×3 ellipse (keeps the jaw line tight at the cheeks); minus
         the nose; plus mouth and lips.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, ks: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block; `downsample` (1×1 conv + BN) where shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def _layer(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))


class Resnet18(nn.Module):
    """x: B×3×H×W -> features at 1/8 (128 ch), 1/16 (256), 1/32 (512)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _layer(64, 64, 1)
        self.layer2 = _layer(64, 128, 2)
        self.layer3 = _layer(128, 256, 2)
        self.layer4 = _layer(256, 512, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinement(nn.Module):
    """Re-weights channels by a sigmoid of their global average."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean((2, 3), keepdim=True))))
        return feat * atten


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = Resnet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(feat32.mean((2, 3), keepdim=True))
        feat32_sum = self.arm32(feat32) + F.interpolate(avg, feat32.shape[2:], mode="nearest")
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, feat16.shape[2:], mode="nearest"))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, feat8.shape[2:], mode="nearest"))
        return feat8, feat16_up, feat32_up  # 1/8 spatial, context at 1/8 and 1/16


class FeatureFusion(nn.Module):
    def __init__(self, cin: int = 256, cout: int = 256):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, ks=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean((2, 3), keepdim=True)))))
        return feat * atten + feat


class OutputHead(nn.Module):
    def __init__(self, cin: int, mid: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """x: B×3×H×W ImageNet-normalised -> three B×n×H×W logits (main, 1/8 and 1/16 aux heads)."""

    def __init__(self, n_classes: int = 19):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = OutputHead(256, 256, n_classes)
        self.conv_out16 = OutputHead(128, 64, n_classes)
        self.conv_out32 = OutputHead(128, 64, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = x.shape[2:]
        feat8, context8, context16 = self.cp(x)
        heads = (self.conv_out(self.ffm(feat8, context8)), self.conv_out16(context8), self.conv_out32(context16))
        return tuple(F.interpolate(h, size, mode="bilinear", align_corners=True) for h in heads)


def load_bisenet(path: Path) -> BiSeNet:
    """79999_iter.pth unchanged: strict, weights_only (the resnet18 ImageNet file is not needed)."""
    from ..weights import load_torch_state_dict

    net = BiSeNet(19)
    net.load_state_dict(load_torch_state_dict(path), strict=True)
    return net.eval()


# ---------------------------------------------------------------- masks


@dataclass(frozen=True)
class MaskConfig:
    """Upstream FaceParsing defaults (v1.5 CLI passes cheek width 90)."""

    size: int = 512
    cheek_width: int = 90
    cone_size: int = 33
    cone_tip_row: int = 10
    cone_half_width: int = 10
    cheek_kernel_wh: tuple[int, int] = (35, 3)


def cone_kernel(config: MaskConfig) -> np.ndarray:
    """Dilation kernel that grows the skin mostly downwards (a triangle on a block)."""
    k = np.zeros((config.cone_size, config.cone_size), np.uint8)
    centre = config.cone_size // 2
    for row in range(config.cone_tip_row, config.cone_size):
        half = min(row - config.cone_tip_row, config.cone_half_width)
        k[row, centre - half : centre + half + 1] = 1
    return k


def cheek_kernel(config: MaskConfig) -> np.ndarray:
    import cv2

    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, config.cheek_kernel_wh)


def cheek_mask(config: MaskConfig) -> np.ndarray:
    """255 in the cheek columns: x <= centre - cheek_width and x >= centre + cheek_width."""
    m = np.zeros((config.size, config.size), np.uint8)
    centre = config.size // 2
    m[:, : centre - config.cheek_width + 1] = 255  # upstream's left edge is inclusive
    m[:, centre + config.cheek_width :] = 255
    return m


def labels_to_mask(labels: np.ndarray, mode: str, config: MaskConfig) -> np.ndarray:
    """labels H×W class ids -> uint8 0/255 mask for mode 'raw', 'neck' or 'jaw'."""
    import cv2

    if mode == "raw":
        keep = np.isin(labels, [1, 11, 12, 13])
    elif mode == "neck":
        keep = np.isin(labels, [1, 11, 12, 13, 14])
    elif mode == "jaw":
        skin = np.where(labels == 1, 255, 0).astype(np.uint8)
        dilated = cv2.dilate(skin, cone_kernel(config), iterations=1)
        eroded = cv2.erode(dilated, cheek_kernel(config), iterations=2)
        cheeks = cheek_mask(config)
        region = (eroded & cheeks) | (dilated & ~cheeks)
        keep = ((region == 255) & (labels != 10)) | np.isin(labels, [11, 12, 13])
    else:
        raise ValueError(f"unknown parsing mode {mode!r}; expected raw, neck or jaw")
    return np.where(keep, 255, 0).astype(np.uint8)


class FaceParser:
    """PIL RGB face image -> 'L' mask at the parser's 512×512 resolution."""

    def __init__(self, net: BiSeNet, config: MaskConfig | None = None):
        self.net = net
        self.config = config or MaskConfig()

    def preprocess(self, image_rgb) -> torch.Tensor:
        """PIL image -> 1×3×512×512, PIL BILINEAR resize then ImageNet normalisation."""
        from PIL import Image

        resized = image_rgb.resize((self.config.size, self.config.size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(resized, np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        std = torch.tensor(IMAGENET_STD)[:, None, None]
        return ((x - mean) / std)[None]

    @torch.no_grad()
    def labels(self, image_rgb) -> np.ndarray:
        """PIL image -> 512×512 class ids."""
        device = next(self.net.parameters()).device
        logits = self.net(self.preprocess(image_rgb).to(device))[0]
        return logits[0].argmax(0).cpu().numpy()

    def __call__(self, image_rgb, mode: str = "jaw"):
        from PIL import Image

        return Image.fromarray(labels_to_mask(self.labels(image_rgb), mode, self.config))
