"""S: the stitching MLP and the lip and eye retargeting MLPs.

Three independent plain MLPs (Linear/ReLU ..., Linear). The official file
`stitching_retargeting_module.pth` nests their state dicts under
'retarget_shoulder' (stitching), 'retarget_mouth' (lip) and 'retarget_eye'
(eye), with DDP's `module.` in the keys; `split_official_state_dict` undoes
that so each MLP loads strictly.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .config import MLPConfig, StitchingRetargetingConfig

# Our submodule name -> the official file's top-level key.
OFFICIAL_SUBDICTS = {"stitching": "retarget_shoulder", "lip": "retarget_mouth", "eye": "retarget_eye"}


class RetargetingMLP(nn.Module):
    """Linear layers at even indices of `mlp`, ReLU between them, none after the last."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        sizes = [config.input_size, *config.hidden_sizes]
        layers: list[nn.Module] = []
        for cin, cout in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(cin, cout), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], config.output_size))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: B×input_size -> B×output_size
        return self.mlp(x)


class StitchingRetargeting(nn.Module):
    """stitching: [x_s, x_d] (126) -> Δexp (63) + Δtx,ty (2);
    lip: [x_s, c_s_lip, c_d_lip] (65) -> Δ (63);
    eye: [x_s, c_s_eye_l, c_s_eye_r, c_d_eye] (66) -> Δ (63)."""

    def __init__(self, config: StitchingRetargetingConfig | None = None):
        super().__init__()
        self.config = config = config or StitchingRetargetingConfig()
        self.stitching = RetargetingMLP(config.stitching)
        self.lip = RetargetingMLP(config.lip)
        self.eye = RetargetingMLP(config.eye)

    def load_official_state_dict(self, ckpt: Mapping) -> None:
        """Strictly load the official nested layout (see `split_official_state_dict`)."""
        for name, state in split_official_state_dict(ckpt).items():
            getattr(self, name).load_state_dict(state, strict=True)


def strip_ddp(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Upstream removes every occurrence of "module.", not only a leading one; do the same.
    return {key.replace("module.", ""): value for key, value in state.items()}


def split_official_state_dict(ckpt: Mapping) -> dict[str, dict[str, torch.Tensor]]:
    """{'stitching'|'lip'|'eye': MLP state dict} from the official file's dict.

    Only the three named entries are read: the official file may hold others.
    """
    return {ours: strip_ddp(ckpt[theirs]) for ours, theirs in OFFICIAL_SUBDICTS.items()}


def official_state_dict(module: StitchingRetargeting) -> dict[str, dict[str, torch.Tensor]]:
    """The nested layout of the official file (for tests and exports): 'module.'-prefixed inner keys."""
    return {
        theirs: {f"module.{k}": v for k, v in getattr(module, ours).state_dict().items()}
        for ours, theirs in OFFICIAL_SUBDICTS.items()
    }
