"""The official LivePortrait files, and building each network from them.

Every checkpoint goes through the one loading path of `models.weights`:
`resolve` finds the file in the Hugging Face cache (WeightsMissingError names
`lockn-bod weights fetch liveportrait` when absent), `load_torch_state_dict`
reads it with `weights_only=True`, and the state dict loads strictly: the
official files are used unchanged.

Every `load_*` function takes an optional WeightFile so other files holding the
same networks key for key (Ditto's renderer) load into the same modules.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..weights import WeightFile, load_torch_state_dict, resolve
from .appearance_feature_extractor import AppearanceFeatureExtractor
from .config import LivePortraitConfig
from .motion_extractor import MotionExtractor
from .spade_generator import SPADEGenerator
from .stitching_retargeting import StitchingRetargeting
from .warping_network import WarpingNetwork

MODE = "liveportrait"
HF_REPO = "KwaiVGI/LivePortrait"
# The HF model card of KwaiVGI/LivePortrait states MIT for the LivePortrait weights.
LICENCE = "MIT (LivePortrait)"

APPEARANCE_FEATURE_EXTRACTOR = WeightFile(HF_REPO, "liveportrait/base_models/appearance_feature_extractor.pth", LICENCE)
MOTION_EXTRACTOR = WeightFile(HF_REPO, "liveportrait/base_models/motion_extractor.pth", LICENCE)
WARPING_MODULE = WeightFile(HF_REPO, "liveportrait/base_models/warping_module.pth", LICENCE)
SPADE_GENERATOR = WeightFile(HF_REPO, "liveportrait/base_models/spade_generator.pth", LICENCE)
STITCHING_RETARGETING = WeightFile(HF_REPO, "liveportrait/retargeting_models/stitching_retargeting_module.pth", LICENCE)

NETWORK_FILES = (APPEARANCE_FEATURE_EXTRACTOR, MOTION_EXTRACTOR, WARPING_MODULE, SPADE_GENERATOR, STITCHING_RETARGETING)


def weight_files(cache_dir: str | Path | None = None, **options) -> list[WeightFile]:
    """Every file the liveportrait mode needs: the five networks and the face models.

    Takes the backend's options (models.modes passes them): with `cache_dir`, the files
    are looked for there, where the pipeline loads them from; the other options need
    the same files.
    """
    from ..face.files import FACE_FILES

    files = [*NETWORK_FILES, *FACE_FILES]
    if cache_dir is None:
        return files
    return [replace(f, cache_dir=str(cache_dir)) for f in files]


def load_into(module: nn.Module, file: WeightFile, adapt: Callable[[Mapping], None] | None = None,
              mode: str = MODE, cache_dir: str | Path | None = None) -> nn.Module:
    """Load `file` into `module` strictly (or through `adapt(state)`), return it in eval mode.

    `mode` names the fetch command in WeightsMissingError (Ditto passes "ditto");
    `cache_dir` is a Hugging Face cache other than the standard one (None: the standard one).
    """
    state = load_torch_state_dict(resolve(file, mode, cache_dir))
    if adapt is None:
        module.load_state_dict(state, strict=True)
    else:
        adapt(state)
    return module.eval()


def load_appearance_feature_extractor(
    config: LivePortraitConfig | None = None, file: WeightFile | None = None, mode: str = MODE,
    cache_dir: str | Path | None = None,
) -> AppearanceFeatureExtractor:
    config = config or LivePortraitConfig()
    module = AppearanceFeatureExtractor(config.appearance)
    return load_into(module, file or APPEARANCE_FEATURE_EXTRACTOR, mode=mode, cache_dir=cache_dir)


def load_motion_extractor(
    config: LivePortraitConfig | None = None, file: WeightFile | None = None, mode: str = MODE,
    cache_dir: str | Path | None = None,
) -> MotionExtractor:
    config = config or LivePortraitConfig()
    return load_into(MotionExtractor(config.motion), file or MOTION_EXTRACTOR, mode=mode, cache_dir=cache_dir)


def load_warping_network(
    config: LivePortraitConfig | None = None, file: WeightFile | None = None, mode: str = MODE,
    cache_dir: str | Path | None = None,
) -> WarpingNetwork:
    config = config or LivePortraitConfig()
    return load_into(WarpingNetwork(config.warping), file or WARPING_MODULE, mode=mode, cache_dir=cache_dir)


def load_spade_generator(
    config: LivePortraitConfig | None = None, file: WeightFile | None = None, mode: str = MODE,
    cache_dir: str | Path | None = None,
) -> SPADEGenerator:
    """Loads weight_orig/weight_u/weight_v strictly; the spectral norm is folded on load."""
    config = config or LivePortraitConfig()
    return load_into(SPADEGenerator(config.spade), file or SPADE_GENERATOR, mode=mode, cache_dir=cache_dir)


def load_stitching_retargeting(
    config: LivePortraitConfig | None = None, file: WeightFile | None = None, mode: str = MODE,
    cache_dir: str | Path | None = None,
) -> StitchingRetargeting:
    """The official nested file: three sub-dicts, `module.` stripped, each loaded strictly."""
    config = config or LivePortraitConfig()
    module = StitchingRetargeting(config.stitching)
    return load_into(module, file or STITCHING_RETARGETING, module.load_official_state_dict, mode=mode,
                     cache_dir=cache_dir)


@dataclass
class LivePortraitNetworks:
    """F, M, W, G, S in eval mode on one device and dtype.

    appearance (F): image -> 3-D feature volume, once per persona.
    motion (M): image -> raw pose/expression heads (see keypoints.refine_kp_info).
    warping (W) and generator (G): per frame, volume + keypoints -> 512² image.
    stitching (S): `.stitching`, `.lip`, `.eye` MLPs, used through `keypoints`.
    """

    appearance: AppearanceFeatureExtractor
    motion: MotionExtractor
    warping: WarpingNetwork
    generator: SPADEGenerator
    stitching: StitchingRetargeting
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    def modules(self) -> dict[str, nn.Module]:
        return {"appearance": self.appearance, "motion": self.motion, "warping": self.warping,
                "generator": self.generator, "stitching": self.stitching}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "LivePortraitNetworks":
        """Move every network in place; returns self."""
        self.device = torch.device(device) if device is not None else self.device
        self.dtype = dtype or self.dtype
        for module in self.modules().values():
            module.to(device=self.device, dtype=self.dtype).eval()
        return self

    @classmethod
    def load(cls, config: LivePortraitConfig | None = None, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32, cache_dir: str | Path | None = None) -> "LivePortraitNetworks":
        """The five official files from the HF cache, or from `cache_dir` (WeightsMissingError
        names the fetch command)."""
        nets = cls(
            appearance=load_appearance_feature_extractor(config, cache_dir=cache_dir),
            motion=load_motion_extractor(config, cache_dir=cache_dir),
            warping=load_warping_network(config, cache_dir=cache_dir),
            generator=load_spade_generator(config, cache_dir=cache_dir),
            stitching=load_stitching_retargeting(config, cache_dir=cache_dir),
        )
        return nets.to(device, dtype)

    @classmethod
    def random(cls, config: LivePortraitConfig | None = None, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> "LivePortraitNetworks":
        """Freshly initialised networks (torch's default init), for tests and benchmarks."""
        config = config or LivePortraitConfig()
        nets = cls(
            appearance=AppearanceFeatureExtractor(config.appearance),
            motion=MotionExtractor(config.motion),
            warping=WarpingNetwork(config.warping),
            generator=SPADEGenerator(config.spade),
            stitching=StitchingRetargeting(config.stitching),
        )
        return nets.to(device, dtype)
