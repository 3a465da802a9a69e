"""LivePortrait networks: manifests, loading through the real loader, parity with the oracle.

Seeded weights (oracle/seeded.py, the gains of oracle README section 2) are
written into an offline Hugging Face cache under the official filenames and
loaded by models.liveportrait.loading, so the loading contract is exercised
as well. Tolerances: oracle README section 4 "Suggested acceptance thresholds".
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from models.base import WeightsMissingError
from models.liveportrait import keypoints
from models.liveportrait import loading as lp
from models.liveportrait.appearance_feature_extractor import AppearanceFeatureExtractor
from models.liveportrait.config import LivePortraitConfig
from models.liveportrait.motion_extractor import MotionExtractor
from models.liveportrait.spade_generator import SPADEGenerator
from models.liveportrait.stitching_retargeting import (
    StitchingRetargeting,
    official_state_dict,
    split_official_state_dict,
)
from models.liveportrait.warping_network import WarpingNetwork
from tests.hf_layout import write_torch
from tests.oracle_inputs import hash_u8, hash_uniform, stats64

# network -> (our module class, manifest name, seeding gain used by the fixtures)
NETWORKS = {
    "appearance": (AppearanceFeatureExtractor, "appearance_feature_extractor", 1.0),
    "motion": (MotionExtractor, "motion_extractor", 0.3),
    "warping": (WarpingNetwork, "warping_module", 1.0),
    "generator": (SPADEGenerator, "spade_generator", 0.1),
}
CONFIG_FIELD = {"appearance": "appearance", "motion": "motion", "warping": "warping", "generator": "spade"}
OFFICIAL_FILE = {
    "appearance": lp.APPEARANCE_FEATURE_EXTRACTOR,
    "motion": lp.MOTION_EXTRACTOR,
    "warping": lp.WARPING_MODULE,
    "generator": lp.SPADE_GENERATOR,
}
LOADER = {
    "appearance": lp.load_appearance_feature_extractor,
    "motion": lp.load_motion_extractor,
    "warping": lp.load_warping_network,
    "generator": lp.load_spade_generator,
}


def seeded_module(oracle):
    spec = importlib.util.spec_from_file_location("oracle_seeded", oracle / "seeded.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_manifest(oracle, name: str) -> dict:
    return json.loads((oracle / "liveportrait" / f"manifest_{name}.json").read_text())


def fixture(oracle, name: str):
    return np.load(oracle / "liveportrait" / f"fixture_{name}.npz")


def template(module: torch.nn.Module) -> dict:
    # Our state dict is the template: its manifest equals the official one (checked below).
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def write_seeded(oracle, cache, network: str):
    """Seed `network` as the fixtures did and write it at its official path in the HF cache."""
    cls, _, gain = NETWORKS[network]
    seeded = seeded_module(oracle).seeded_state_dict(template(cls()), seed=0, gain=gain)
    write_torch(cache, lp.HF_REPO, OFFICIAL_FILE[network].filename, seeded)


def write_seeded_stitching(oracle, cache):
    """Each MLP seeded separately under its stripped names, saved nested with `module.` keys."""
    seeded = seeded_module(oracle)
    fresh = StitchingRetargeting()
    for name in ("stitching", "lip", "eye"):
        mlp = getattr(fresh, name)
        mlp.load_state_dict(seeded.seeded_state_dict(template(mlp), seed=0, gain=1.0))
    nested = official_state_dict(fresh)
    # The official file is larger than the three MLPs: it may hold other entries, which must be ignored.
    nested["unrelated_entry"] = {"module.mlp.0.weight": torch.zeros(1)}
    write_torch(cache, lp.HF_REPO, lp.STITCHING_RETARGETING.filename, nested)


def load_seeded(oracle, cache, network: str):
    write_seeded(oracle, cache, network)
    return LOADER[network]()


def max_abs(ours: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.abs(ours.detach().float().numpy() - ref).max())


def assert_close(ours: torch.Tensor, ref: np.ndarray, atol: float, what: str) -> None:
    err = max_abs(ours, ref)
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {ref.shape}"
    assert err <= atol, f"{what}: max |diff| {err:.3g} > {atol:.0e}"


def assert_rel(ours: torch.Tensor, ref: np.ndarray, rtol: float, what: str) -> None:
    # Relative to the tensor's own range: internal activations reach ~150.
    err = max_abs(ours, ref) / max(1.0, float(np.abs(ref).max()))
    assert err <= rtol, f"{what}: relative max |diff| {err:.3g} > {rtol:.0e}"


def assert_stats(ours: torch.Tensor, ref: np.ndarray, atol: float, what: str) -> None:
    got = stats64(ours.detach().float().numpy())
    # sum and sum² grow with the element count: compare them per element.
    n = ours.numel()
    scale = np.array([1, 1, 1, 1, 1, n, n * max(1.0, abs(ref[6]) / n)])
    err = float(np.max(np.abs(got - ref) / scale))
    assert err <= atol, f"{what}: stats differ by {err:.3g}"


# --- structure and loading (no oracle needed) ------------------------------------------------


def test_tiny_config_runs_end_to_end():
    torch.manual_seed(0)
    nets = lp.LivePortraitNetworks.random(LivePortraitConfig.tiny())
    image = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        volume = nets.appearance(image)
        info = keypoints.refine_kp_info(nets.motion(image))
        x_s = keypoints.transform_keypoint(info)
        x_d = keypoints.stitching(nets.stitching.stitching, x_s, x_s + 0.01)
        warped = nets.warping(volume, kp_driving=x_d, kp_source=x_s)
        out = nets.generator(warped["out"])
    assert volume.shape == (2, 4, 4, 64, 64)
    assert x_s.shape == (2, 21, 3) and info["pitch"].shape == (2, 1)
    assert warped["deformation"].shape == (2, 4, 64, 64, 3)
    assert warped["occlusion_map"].shape == (2, 1, 64, 64)
    assert out.shape == (2, 3, 512, 512) and float(out.min()) >= 0 and float(out.max()) <= 1


def test_missing_weights_name_the_fetch_command(hf_cache):
    with pytest.raises(WeightsMissingError, match="lockn-bod weights fetch liveportrait"):
        lp.load_appearance_feature_extractor()


def test_weight_files_list_the_networks_and_face_models():
    names = {f.filename for f in lp.weight_files()}
    assert {f.filename for f in lp.NETWORK_FILES} <= names
    assert "liveportrait/landmark.onnx" in names
    assert all(f.repo_id == lp.HF_REPO and f.licence for f in lp.NETWORK_FILES)


def test_spectral_norm_is_folded_from_stored_vectors():
    gen = SPADEGenerator(LivePortraitConfig.tiny().spade)
    conv = gen.up_1.conv_0
    state = {k: v.clone() for k, v in conv.state_dict().items()}
    state["weight_u"] = torch.randn_like(state["weight_u"])
    state["weight_v"] = torch.randn_like(state["weight_v"])
    conv.load_state_dict(state)
    mat = state["weight_orig"].reshape(state["weight_orig"].shape[0], -1)
    sigma = torch.dot(state["weight_u"], mat @ state["weight_v"])
    torch.testing.assert_close(conv.weight, state["weight_orig"] / sigma)
    assert "weight" not in conv.state_dict()


def test_stitching_file_keys_lose_every_module_occurrence():
    ckpt = {"retarget_shoulder": {"module.mlp.0.module.weight": 1}, "retarget_mouth": {}, "retarget_eye": {},
            "unused": {"x": 2}}
    assert split_official_state_dict(ckpt)["stitching"] == {"mlp.0.weight": 1}


# --- oracle: manifests -------------------------------------------------------------------------


@pytest.mark.oracle
@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_state_dict_equals_official_manifest(oracle, network):
    cls, name, _ = NETWORKS[network]
    ours = seeded_module(oracle).manifest(cls().state_dict())
    assert ours == read_manifest(oracle, name)["state_dict"]


@pytest.mark.oracle
def test_stitching_manifest_equals_official(oracle):
    subs = read_manifest(oracle, "stitching_retargeting_module")["sub_dicts"]
    seeded = seeded_module(oracle)
    nested = official_state_dict(StitchingRetargeting())
    for theirs, sub in subs.items():
        assert seeded.manifest(nested[theirs]) == sub["keys_in_file_expected"]


@pytest.mark.oracle
def test_tiny_config_uses_official_names(oracle):
    """Same classes at reduced widths: every tiny key is an official key."""
    tiny = LivePortraitConfig.tiny()
    for network, (cls, name, _) in NETWORKS.items():
        official = set(read_manifest(oracle, name)["state_dict"])
        extra = set(cls(getattr(tiny, CONFIG_FIELD[network])).state_dict()) - official
        assert not extra, f"{network}: {sorted(extra)[:3]}"


# --- oracle: parity ----------------------------------------------------------------------------


@pytest.mark.oracle
def test_appearance_feature_extractor_parity(oracle, hf_cache):
    fx = fixture(oracle, "appearance_feature_extractor")
    assert np.array_equal(hash_u8((256, 256, 3), 1), fx["image_u8"])
    net = load_seeded(oracle, hf_cache, "appearance")
    x = torch.from_numpy(fx["x"])
    with torch.no_grad():
        first = net.first(x)
        pre3d = net.encode_2d(x)
        f_s = net(x)
    assert_close(first[:, :, ::8, ::8], fx["first_block_sub"], 1e-4, "first")
    assert_close(pre3d[:, :, ::4, ::4], fx["pre3d_sub"], 1e-4, "second")
    assert_close(f_s[:, :, :, ::2, ::2], fx["f_s_sub"], 1e-4, "f_s")
    assert_close(f_s.mean(dim=(3, 4)), fx["f_s_plane_mean"], 1e-4, "f_s plane mean")
    assert_close(f_s[0, 0, 0, :8, :8], fx["f_s_first8x8"], 1e-4, "f_s first 8x8")
    assert_stats(f_s, fx["f_s_stats64"], 1e-4, "f_s")


@pytest.mark.oracle
def test_motion_extractor_parity(oracle, hf_cache):
    fx = fixture(oracle, "motion_extractor")
    net = load_seeded(oracle, hf_cache, "motion")
    x = torch.from_numpy(fx["x"])
    with torch.no_grad():
        stages = net.detector.stage_outputs(x)
        raw = net(x)
        features = net.detector.norm(stages[3].mean(dim=(2, 3)))
    for i, stage in enumerate(stages):
        assert_close(stage.mean(dim=(2, 3)), fx[f"stage{i}_chanmean"], 1e-4, f"stage{i} mean")
        assert_stats(stage, fx[f"stage{i}_stats64"], 1e-4, f"stage{i}")
    assert_close(stages[3], fx["stage3_full"], 1e-4, "stage3")
    assert_close(features, fx["features"], 1e-4, "features")
    for head in ("pitch", "yaw", "roll", "t", "exp", "scale", "kp"):
        assert_close(raw[head], fx[f"raw_{head}"], 1e-4, head)
    info = keypoints.refine_kp_info(raw)
    for name in ("pitch", "yaw", "roll"):
        assert_close(info[name], fx[f"{name}_deg"], 1e-4, f"{name} degrees")
    assert_close(info["kp"], fx["kp"], 1e-4, "kp")
    assert_close(info["exp"], fx["exp"], 1e-4, "exp")


@pytest.mark.oracle
def test_stitching_retargeting_parity(oracle, hf_cache):
    fx = fixture(oracle, "stitching_retargeting")
    write_seeded_stitching(oracle, hf_cache)
    s = lp.load_stitching_retargeting()
    salts = {"stitching": (31, 126), "lip": (32, 65), "eye": (33, 66)}
    for name, (salt, width) in salts.items():
        inputs = hash_uniform((4, width), salt, -0.5, 0.5)
        np.testing.assert_array_equal(inputs, fx[f"{name}_in"])
        with torch.no_grad():
            out = getattr(s, name)(torch.from_numpy(inputs))
        assert_close(out, fx[f"{name}_out"], 1e-5, name)


@pytest.mark.oracle
@pytest.mark.slow
def test_warping_network_parity(oracle, hf_cache):
    """One full-size call (~15 s on 2 CPU cores), with its intermediates."""
    fx = fixture(oracle, "warping_module")
    feature = hash_uniform((1, 32, 16, 64, 64), 11, -1.0, 1.0)
    np.testing.assert_array_equal(feature.ravel()[:64], fx["feature_3d_first64"])
    np.testing.assert_allclose(stats64(feature), fx["feature_3d_stats64"], rtol=1e-12, atol=1e-9)
    kp_source = hash_uniform((1, 21, 3), 12, -0.6, 0.6)
    kp_driving = kp_source + hash_uniform((1, 21, 3), 13, -0.1, 0.1)
    np.testing.assert_array_equal(kp_source, fx["kp_source"])
    np.testing.assert_array_equal(kp_driving, fx["kp_driving"])

    net = load_seeded(oracle, hf_cache, "warping")
    feature_t = torch.from_numpy(feature)
    with torch.no_grad():
        compressed = net.dense_motion_network.norm(net.dense_motion_network.compress(feature_t))
        out = net(feature_t, kp_driving=torch.from_numpy(kp_driving), kp_source=torch.from_numpy(kp_source),
                  return_intermediates=True)
    assert_close(compressed[..., ::2, ::2], fx["compress_norm_sub"], 1e-5, "compress+norm")
    assert_close(out["mask"][..., ::4, ::4], fx["mask_sub"], 1e-5, "mask")
    assert_stats(out["mask"], fx["mask_stats64"], 1e-5, "mask")
    hourglass = out["hourglass"]
    assert_rel(hourglass.mean(dim=(3, 4)), fx["hourglass_plane_mean"], 1e-5, "hourglass plane mean")
    assert_rel(hourglass[:, :, ::4, ::8, ::8], fx["hourglass_sub"], 1e-5, "hourglass")
    assert_stats(hourglass, fx["hourglass_stats64"], 1e-4, "hourglass")
    warped = out["warped"].reshape(1, 512, 64, 64)
    assert_close(warped[:, :, ::4, ::4], fx["warped_sub"], 1e-4, "warped")
    assert_stats(warped, fx["warped_stats64"], 1e-4, "warped")
    assert_close(out["deformation"], fx["deformation"], 1e-5, "deformation")
    assert_close(out["occlusion_map"], fx["occlusion_map"], 1e-5, "occlusion_map")
    assert_close(out["out"], fx["out"], 1e-4, "out")


@pytest.mark.oracle
@pytest.mark.slow
def test_spade_generator_parity(oracle, hf_cache):
    """Full size, one 64×64 input; the spectral norm folded from the stored u, v."""
    fx = fixture(oracle, "spade_generator")
    index = json.loads((oracle / "liveportrait" / "fixture_index.json").read_text())["fixture_spade_generator"]
    feature = hash_uniform((1, 256, 64, 64), 21, -1.0, 1.0)
    np.testing.assert_array_equal(feature.ravel()[:64], fx["input_first64"])
    np.testing.assert_allclose(stats64(feature), fx["input_stats64"], rtol=1e-12, atol=1e-9)

    net = load_seeded(oracle, hf_cache, "generator")
    convs = net.spectral_convs()
    sigmas = torch.stack([convs[name.removesuffix(".weight")].sigma() for name in index["spectral_sigma_names"]])
    assert_rel(sigmas, fx["spectral_sigma"], 1e-5, "spectral sigma")

    x = torch.from_numpy(feature)
    acts = {}
    hooks = [getattr(net, name).register_forward_hook(lambda _m, _i, o, name=name: acts.__setitem__(name, o))
             for name in ("fc", "G_middle_5", "up_0", "up_1", "conv_img")]
    with torch.no_grad():
        out = net(x)
    for hook in hooks:
        hook.remove()
    assert_rel(acts["fc"][..., ::8, ::8], fx["fc_sub"], 1e-5, "fc")
    assert_stats(acts["fc"], fx["fc_stats64"], 1e-4, "fc")
    for name, step in (("G_middle_5", 4), ("up_0", 8), ("up_1", 8)):
        assert_rel(acts[name][..., ::step, ::step], fx[f"{name}_sub"], 1e-5, name)
        assert_stats(acts[name], fx[f"{name}_stats64"], 1e-4, name)
    assert_rel(acts["conv_img"][..., ::4, ::4], fx["pre_sigmoid_sub"], 1e-5, "pre-sigmoid")
    assert_close(out, fx["out"], 1e-4, "out")


def test_tiny_networks_run_under_autocast():
    """No dtype assumptions: the whole chain runs under autocast (bfloat16 on CPU here, fp16 on CUDA)."""
    torch.manual_seed(0)
    nets = lp.LivePortraitNetworks.random(LivePortraitConfig.tiny())
    image = torch.rand(1, 3, 256, 256)

    def run():
        with torch.no_grad():
            volume = nets.appearance(image)
            x_s = keypoints.transform_keypoint(keypoints.refine_kp_info(nets.motion(image)))
            x_d = keypoints.stitching(nets.stitching.stitching, x_s, x_s + 0.02)
            return nets.generator(nets.warping(volume, kp_driving=x_d, kp_source=x_s)["out"]).float()

    reference = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = run()
    assert mixed.shape == reference.shape and torch.isfinite(mixed).all()
    assert float((mixed - reference).abs().mean()) < 0.05


@pytest.mark.gpu
@pytest.mark.slow
def test_official_size_fp16_autocast_on_cuda():
    """Full-size chain under fp16 autocast on CUDA stays close to fp32 (5-D grid_sample in torch)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch.manual_seed(0)
    nets = lp.LivePortraitNetworks.random(device="cuda")
    image = torch.rand(2, 3, 256, 256, device="cuda")

    def run():
        with torch.no_grad():
            volume = nets.appearance(image)
            x_s = keypoints.transform_keypoint(keypoints.refine_kp_info(nets.motion(image))).float().clamp(-0.8, 0.8)
            x_d = keypoints.stitching(nets.stitching.stitching, x_s, x_s + 0.02).float()
            return nets.generator(nets.warping(volume, kp_driving=x_d, kp_source=x_s)["out"]).float()

    reference = run()
    with torch.autocast("cuda", dtype=torch.float16):
        mixed = run()
    assert torch.isfinite(mixed).all()
    assert float((mixed - reference).abs().mean()) < 2e-2
