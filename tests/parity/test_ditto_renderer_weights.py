"""Ditto's renderer files load into our LivePortrait networks unchanged.

The oracle's manifests of Ditto's five renderer files (`manifest_<module>.json`)
give every key, shape and dtype and how upstream loads each file. Our networks at
the official config must have exactly those state dicts, and `load_renderer` must
load files written in that layout (seeded values) strictly, from an HF cache.
"""
from __future__ import annotations

import json

import pytest
import torch

from models.ditto.config import DittoFiles
from models.ditto.pipeline import load_renderer
from models.liveportrait.appearance_feature_extractor import AppearanceFeatureExtractor
from models.liveportrait.motion_extractor import MotionExtractor
from models.liveportrait.spade_generator import SPADEGenerator
from models.liveportrait.stitching_retargeting import StitchingRetargeting
from models.liveportrait.warping_network import WarpingNetwork
from tests.hf_layout import write_torch
from tests.parity.test_liveportrait_networks import seeded_module

pytestmark = pytest.mark.oracle

FILES = DittoFiles()
# manifest name -> (our module at the official config, the DittoFiles field of its file)
RENDERER = {
    "appearance_extractor": (AppearanceFeatureExtractor, "appearance_extractor"),
    "motion_extractor": (MotionExtractor, "motion_extractor"),
    "warp_network": (WarpingNetwork, "warp_network"),
    "decoder": (SPADEGenerator, "decoder"),
}


def read_manifest(oracle, name: str) -> dict:
    return json.loads((oracle / "ditto" / f"manifest_{name}.json").read_text())


def ours(name: str) -> torch.nn.Module:
    if name == "stitch_network":
        return StitchingRetargeting().stitching
    return RENDERER[name][0]()


@pytest.mark.parametrize("name", [*RENDERER, "stitch_network"])
def test_our_networks_have_the_state_dicts_of_dittos_files(oracle, name):
    manifest = read_manifest(oracle, name)
    assert manifest["hf_file"] == getattr(FILES, RENDERER[name][1] if name in RENDERER else name).filename
    assert seeded_module(oracle).manifest(ours(name).state_dict()) == dict(manifest["state_dict"])


def test_load_renderer_reads_dittos_files_strictly(oracle, tmp_path):
    """Each file seeded in its own layout (the stitch MLP under 'retarget_shoulder' with
    'module.' keys, beside a sub-dict Ditto ignores); every tensor lands where it should."""
    seeded = seeded_module(oracle)
    written = {}
    for i, (name, (cls, field)) in enumerate(RENDERER.items()):
        written[name] = seeded.seeded_state_dict(cls().state_dict(), seed=i, gain=0.5)
        write_torch(tmp_path, FILES.lmdm.repo_id, getattr(FILES, field).filename, written[name])
    stitch = seeded.seeded_state_dict(ours("stitch_network").state_dict(), seed=9, gain=1.0)
    write_torch(tmp_path, FILES.lmdm.repo_id, FILES.stitch_network.filename, {
        "retarget_shoulder": {f"module.{k}": v for k, v in stitch.items()},
        "retarget_mouth": {"module.mlp.0.weight": torch.zeros(1)},
    })
    nets = load_renderer(FILES, "cpu", cache_dir=tmp_path)
    loaded = {"appearance_extractor": nets.appearance, "motion_extractor": nets.motion,
              "warp_network": nets.warping, "stitch_network": nets.stitching.stitching}
    for name, module in loaded.items():
        expected = stitch if name == "stitch_network" else written[name]
        for key, value in module.state_dict().items():
            assert torch.equal(value, expected[key]), f"{name}: {key}"
    # The decoder's spectral norm is folded at load: its other tensors load as written.
    decoder = nets.generator.state_dict()
    plain = [k for k in written["decoder"] if not k.endswith(("weight_orig", "weight_u", "weight_v"))]
    assert plain and all(torch.equal(decoder[k], written["decoder"][k]) for k in plain)
