"""ONNX export of LivePortrait's per-frame renderer networks, W and G: the step before TensorRT.

    W  warping.onnx    feature_3d B×C×D×64×64, kp_driving B×21×3, kp_source B×21×3 -> out B×256×64×64
    G  generator.onnx  feature B×256×64×64 -> image B×3×512×512 in (0, 1)

(shapes at the official widths; C×D is 32×16 there, 4×4 in the tiny config). The batch
axis is dynamic. Ditto's renderer is the same two networks, so its files export the same way.

W samples F's volume with a 5-D `grid_sample` (trilinear, zeros padding, align_corners
False). ONNX has it from opset 20 (`GridSample` over N-D input), so both files are opset 20.

Exporter: torch 2.13's default exporter (`dynamo=True`) needs the `onnxscript` package,
which we do not ship. The TorchScript-based exporter (`dynamo=False`) is still in torch
2.13, deprecated but working, and its opset-20 `grid_sampler` symbolic writes a 5-D
`GridSample` as it is (opset 16's refuses 5-D input). So we use it and silence its
deprecation warning. When it is removed, `dynamo=True` with onnxscript is the way.

The files are float32. onnxruntime runs them on the CPU (tests/parity/test_onnx_export.py
compares them with PyTorch); TensorRT would build its fp16 engine from them.

    python -m models.liveportrait.export OUT_DIR [--config official|tiny] [--cache-dir DIR]
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
from torch import nn

from .config import LivePortraitConfig
from .loading import LivePortraitNetworks
from .spade_generator import SPADEGenerator
from .warping_network import WarpingNetwork

OPSET = 20  # the first with N-D (5-D) GridSample
VOLUME_HW = 64  # F's volume and W's output are 64×64 at every width


class WarpingForExport(nn.Module):
    """W with positional inputs and one output, G's input (`out`): what a TensorRT engine runs."""

    def __init__(self, warping: WarpingNetwork):
        super().__init__()
        self.warping = warping

    def forward(self, feature_3d: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> torch.Tensor:
        return self.warping(feature_3d, kp_driving=kp_driving, kp_source=kp_source)["out"]


def warping_inputs(config: LivePortraitConfig, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Example inputs of W at `config`'s widths: a volume and keypoints near the source's."""
    g = torch.Generator().manual_seed(seed)
    volume = torch.randn(batch, config.appearance.reshape_channel, config.appearance.reshape_depth,
                         VOLUME_HW, VOLUME_HW, generator=g)
    kp_source = 0.3 * torch.randn(batch, config.warping.num_kp, 3, generator=g)
    kp_driving = kp_source + 0.02 * torch.randn(batch, config.warping.num_kp, 3, generator=g)
    return volume, kp_driving, kp_source


def generator_inputs(config: LivePortraitConfig, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor]:
    """An example input of G: a feature map of W's output shape."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, config.spade.input_channels, VOLUME_HW, VOLUME_HW, generator=g),)


def _export(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
            output_name: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch"} for name in [*input_names, output_name]}
    with warnings.catch_warnings():
        # The TorchScript-based exporter warns that it is deprecated (module docstring).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*TorchScript-based ONNX export.*")
        # SPADE's instance norm uses the input's statistics, as ONNX InstanceNormalization does.
        warnings.filterwarnings("ignore", message=".*operator 'instance_norm' is set to train=True.*")
        # instance_norm's own check that a channel has more than one value (sizes are fixed).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module="torch.nn.functional")
        torch.onnx.export(module.eval(), inputs, str(path), dynamo=False, opset_version=OPSET,
                          input_names=input_names, output_names=[output_name], dynamic_axes=axes)
    return path


@torch.no_grad()
def export_warping(warping: WarpingNetwork, config: LivePortraitConfig, path: str | Path) -> Path:
    """W (float32, on the CPU) to an opset-20 ONNX file at `path`; returns it."""
    return _export(WarpingForExport(warping).float().cpu(), warping_inputs(config, batch=2), Path(path),
                   ["feature_3d", "kp_driving", "kp_source"], "out")


@torch.no_grad()
def export_generator(generator: SPADEGenerator, config: LivePortraitConfig, path: str | Path) -> Path:
    """G (float32, on the CPU) to an opset-20 ONNX file at `path`; returns it."""
    return _export(generator.float().cpu(), generator_inputs(config, batch=2), Path(path), ["feature"], "image")


def export_renderer(nets: LivePortraitNetworks, config: LivePortraitConfig, folder: str | Path) -> dict[str, Path]:
    """W and G of `nets` to `folder`/warping.onnx and `folder`/generator.onnx.

    The networks are moved to the CPU in float32 for the export (and left there)."""
    nets.to("cpu", torch.float32)
    folder = Path(folder)
    return {"warping": export_warping(nets.warping, config, folder / "warping.onnx"),
            "generator": export_generator(nets.generator, config, folder / "generator.onnx")}


def onnx_session(path: str | Path):
    """An onnxruntime session on the CPU for an exported file."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--config", choices=("official", "tiny"), default="official",
                        help="official: the KwaiVGI/LivePortrait files; tiny: seeded tiny networks (a check)")
    parser.add_argument("--cache-dir", default=None, help="a Hugging Face cache other than the standard one")
    args = parser.parse_args(argv)
    if args.config == "tiny":
        config = LivePortraitConfig.tiny()
        torch.manual_seed(0)
        nets = LivePortraitNetworks.random(config)
    else:
        config = LivePortraitConfig()
        nets = LivePortraitNetworks.load(config, cache_dir=args.cache_dir)
    for name, path in export_renderer(nets, config, args.out_dir).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
