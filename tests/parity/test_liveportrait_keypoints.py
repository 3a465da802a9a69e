"""LivePortrait keypoint math against fixture_keypoint_math and the keypoint part of fixture_pipeline_A.

Tolerance: 1e-5 absolute (oracle README section 4, keypoint math and MLPs).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.liveportrait import keypoints as kpm
from models.liveportrait.stitching_retargeting import StitchingRetargeting
from tests.parity.test_liveportrait_networks import assert_close, seeded_module, template

ATOL = 1e-5


@pytest.fixture(scope="module")
def kpfx(oracle):
    return np.load(oracle / "liveportrait" / "fixture_keypoint_math.npz")


@pytest.fixture(scope="module")
def mlps(oracle):
    """S with each MLP seeded separately (gain 1), as the fixtures were made."""
    seeded = seeded_module(oracle)
    s = StitchingRetargeting()
    for name in ("stitching", "lip", "eye"):
        mlp = getattr(s, name)
        mlp.load_state_dict(seeded.seeded_state_dict(template(mlp), seed=0, gain=1.0))
    return s.eval()


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a))


# --- unit tests (no oracle) --------------------------------------------------------------------


def test_rotation_is_orthonormal_and_row_vector_convention():
    pitch, yaw, roll = torch.tensor([[10.0]]), torch.tensor([[-20.0]]), torch.tensor([[30.0]])
    rot = kpm.get_rotation_matrix(pitch, yaw, roll)
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3)[None], atol=1e-6, rtol=0)
    # Rows times R equal columns times Rz·Ry·Rx: a yaw of +90° takes x to -z.
    r = kpm.get_rotation_matrix(torch.zeros(1), torch.full((1,), 90.0), torch.zeros(1))
    torch.testing.assert_close(torch.tensor([[1.0, 0, 0]]) @ r[0], torch.tensor([[0.0, 0, -1.0]]), atol=1e-6, rtol=0)


def test_degrees_pass_through_and_bins_convert():
    deg = torch.tensor([[12.5]])
    assert kpm.headpose_pred_to_degree(deg) is deg
    logits = torch.full((1, 66), -1e4)
    logits[0, 40] = 0.0
    torch.testing.assert_close(kpm.headpose_pred_to_degree(logits), torch.tensor([40 * 3 - 97.5]))


def test_relative_motion_identity_at_reference_frame():
    torch.manual_seed(0)
    source = {"kp": torch.randn(2, 21, 3), "exp": torch.randn(2, 21, 3) * 0.1, "scale": torch.rand(2, 1) + 1,
              "t": torch.randn(2, 3)}
    rot = kpm.get_rotation_matrix(torch.randn(2), torch.randn(2), torch.randn(2))
    driving = {"R": kpm.get_rotation_matrix(torch.randn(2), torch.randn(2), torch.randn(2)),
               "exp": torch.randn(2, 21, 3), "scale": torch.rand(2, 1) + 1, "t": torch.randn(2, 3)}
    x_d = kpm.relative_motion(source, rot, driving, driving)
    expected = source["scale"][..., None] * (source["kp"] @ rot + source["exp"])
    expected[..., :2] += source["t"][:, None, :2]
    torch.testing.assert_close(x_d, expected, atol=1e-5, rtol=1e-5)


# --- oracle parity -----------------------------------------------------------------------------


@pytest.mark.oracle
def test_headpose_and_rotation(kpfx):
    assert_close(kpm.headpose_pred_to_degree(t(kpfx["hp_logits"])), kpfx["hp_degree"], ATOL, "degrees")
    pyr = t(kpfx["rot_pyr_deg"])
    rot = kpm.get_rotation_matrix(pyr[:, 0:1], pyr[:, 1:2], pyr[:, 2:3])
    assert_close(rot, kpfx["rot_R"], ATOL, "rotation")


@pytest.mark.oracle
def test_transform_keypoint(kpfx):
    pyr = t(kpfx["tk_pyr_deg"])
    info = {"kp": t(kpfx["tk_kp"]), "exp": t(kpfx["tk_exp"]), "scale": t(kpfx["tk_scale"]), "t": t(kpfx["tk_t"]),
            "pitch": pyr[:, 0:1], "yaw": pyr[:, 1:2], "roll": pyr[:, 2:3]}
    assert_close(kpm.transform_keypoint(info), kpfx["tk_out"], ATOL, "degrees given")
    logits = t(kpfx["tk2_pyr_logits"])
    info2 = dict(info, kp=info["kp"].reshape(4, 63), exp=info["exp"].reshape(4, 63),
                 pitch=logits[0], yaw=logits[1], roll=logits[2])
    assert_close(kpm.transform_keypoint(info2), kpfx["tk2_out"], ATOL, "logits given")


@pytest.mark.oracle
def test_stitching_and_retargeting(kpfx, mlps):
    ks, kd = t(kpfx["st_kp_source"]), t(kpfx["st_kp_driving"])
    with torch.no_grad():
        assert_close(kpm.concat_feat(ks, kd), kpfx["st_feat"], ATOL, "concat_feat")
        assert_close(kpm.stitch(mlps.stitching, ks, kd), kpfx["st_delta"], ATOL, "stitch delta")
        assert_close(kpm.stitching(mlps.stitching, ks, kd), kpfx["st_out"], ATOL, "stitching")
        assert_close(kpm.retarget_eye(mlps.eye, ks, t(kpfx["rt_eye_ratio"])), kpfx["rt_eye_delta"], ATOL, "eye")
        assert_close(kpm.retarget_lip(mlps.lip, ks, t(kpfx["rt_lip_ratio"])), kpfx["rt_lip_delta"], ATOL, "lip")


@pytest.mark.oracle
def test_eye_and_lip_ratios(kpfx, oracle):
    lmk = kpfx["ratio_lmk203"]
    np.testing.assert_allclose(kpm.eye_close_ratio(lmk), kpfx["ratio_eye"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(kpm.lip_close_ratio(lmk), kpfx["ratio_lip"], atol=ATOL, rtol=0)
    target = np.full((3, 1), 0.3, np.float32)
    np.testing.assert_allclose(kpm.eye_close_ratio(lmk, target), kpfx["ratio_eye_with_target"], atol=ATOL, rtol=0)
    source_lmk = np.load(oracle / "liveportrait" / "fixture_crop_pasteback.npz")["lmk203"]
    assert_close(kpm.combined_eye_ratio([[0.35]], source_lmk), kpfx["combined_eye"], ATOL, "combined eye")
    assert_close(kpm.combined_lip_ratio([0.2], source_lmk), kpfx["combined_lip"], ATOL, "combined lip")


@pytest.mark.oracle
def test_motion_multiplier(kpfx):
    value = kpm.motion_multiplier(t(kpfx["mm_kp_source"]), t(kpfx["mm_kp_driving0"]))
    assert abs(value - float(kpfx["mm_value"][0])) <= ATOL


@pytest.mark.oracle
def test_image_driven_expression_uses_lip_array(kpfx):
    """One driving frame: δ = exp_s + (exp_d − lip_array), the pose stays the source's."""
    torch.manual_seed(1)
    lip_array = t(kpfx["lip_array"])
    source = {"kp": torch.randn(1, 21, 3), "exp": torch.randn(1, 21, 3) * 0.1, "scale": torch.ones(1, 1),
              "t": torch.zeros(1, 3)}
    rot = kpm.get_rotation_matrix(torch.tensor([5.0]), torch.tensor([-3.0]), torch.tensor([2.0]))
    drv = {"R": kpm.get_rotation_matrix(torch.tensor([20.0]), torch.zeros(1), torch.zeros(1)),
           "exp": lip_array.clone(), "scale": torch.full((1, 1), 2.0), "t": torch.ones(1, 3)}
    x_d = kpm.relative_motion(source, rot, drv, drv, neutral_exp=lip_array)
    # The driving frame shows the neutral expression: x_d is the source's own posed keypoints.
    torch.testing.assert_close(x_d, source["kp"] @ rot + source["exp"], atol=1e-6, rtol=0)


@pytest.mark.oracle
def test_pipeline_a_keypoints(oracle, mlps):
    """Relative motion, expression-friendly multiplier and stitching of fixture_pipeline_A."""
    fx = np.load(oracle / "liveportrait" / "fixture_pipeline_A.npz")
    info = {k: t(fx[f"src_{k}"]) for k in ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")}
    rot_s = kpm.kp_info_rotation(info)
    assert_close(rot_s, fx["R_s"], ATOL, "R_s")
    x_s = kpm.transform_keypoint(info)
    assert_close(x_s, fx["x_s"], ATOL, "x_s")
    frames = [{k: t(fx[f"drv{i}_{k}"]) for k in ("scale", "R", "exp", "t")} for i in range(2)]
    x_d0 = kpm.relative_motion(info, rot_s, frames[0], frames[0])
    mult = kpm.motion_multiplier(x_s, x_d0)
    assert abs(mult - float(fx["motion_multiplier"][0])) <= ATOL
    for i, frame in enumerate(frames):
        x_d = kpm.expression_friendly(kpm.relative_motion(info, rot_s, frame, frames[0]), x_d0, x_s, mult)
        assert_close(x_d, fx[f"frame{i}_stitch_in"], ATOL, f"frame{i} stitch in")
        with torch.no_grad():
            x_d = kpm.stitching(mlps.stitching, x_s, x_d)
        assert_close(x_d, fx[f"frame{i}_stitch_out"], ATOL, f"frame{i} stitch out")
        x_d = kpm.apply_driving_multiplier(x_s, x_d, 1.0)
        assert_close(x_d, fx[f"frame{i}_x_d_final"], ATOL, f"frame{i} final")


def pipeline_fixture(oracle, variant: str) -> dict:
    """fixture_pipeline_<variant>, or a skip where it is not in the oracle (B and C are kept
    back as acceptance checks; they share A's inputs)."""
    path = oracle / "liveportrait" / f"fixture_pipeline_{variant}.npz"
    if not path.exists():
        pytest.skip(f"{path.name} is not in the oracle (an acceptance fixture)")
    return dict(np.load(path))


def template_of(fx) -> list[dict[str, torch.Tensor]]:
    """The fixture's 2-frame motion template, with each frame's eye and lip ratios."""
    return [{**{k: t(fx[f"drv{i}_{k}"]) for k in ("scale", "R", "exp", "t")},
             "c_eyes": t(fx["drv_c_eyes"][i]), "c_lip": t(fx["drv_c_lip"][i])} for i in range(2)]


@pytest.mark.oracle
@pytest.mark.parametrize("variant", ["A", "B", "C"])
def test_template_driving_keypoints(oracle, mlps, variant):
    """drive_with_template with each fixture's options: stitch in/out and final keypoints, the
    multiplier, and the retargeting MLPs' inputs and outputs in call order."""
    from types import SimpleNamespace

    from models.liveportrait.source import SourceMotion
    from models.liveportrait.template_driving import drive_with_template
    from tests.parity.test_liveportrait_pipeline import PIPELINE_OPTIONS

    fx = pipeline_fixture(oracle, variant)
    info = {k: t(fx[f"src_{k}"]) for k in ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")}
    source = SourceMotion(f_s=None, info=info, x_s=kpm.transform_keypoint(info), R_s=kpm.kp_info_rotation(info))
    lmk = fx["source_lmk_crop"][None]  # 1×203×2 in the 512 crop, as upstream's source_lmk
    eye_ratio, lip_ratio = t(kpm.eye_close_ratio(lmk)).float(), t(kpm.lip_close_ratio(lmk)).float()
    calls = {"lip": [], "eye": []}
    recording = {name: _Recording(getattr(mlps, name), calls.get(name)) for name in ("stitching", "lip", "eye")}
    frames, multiplier = drive_with_template(SimpleNamespace(stitching=SimpleNamespace(**recording)), source,
                                             template_of(fx), PIPELINE_OPTIONS[variant], eye_ratio, lip_ratio)
    if "motion_multiplier" in fx:
        assert multiplier == pytest.approx(float(fx["motion_multiplier"][0]), abs=ATOL)
    for i, frame in enumerate(frames):
        for key in ("stitch_in", "stitch_out", "x_d_final"):
            ours = frame.x_d if key == "x_d_final" else getattr(frame, key)
            assert_close(ours, fx[f"frame{i}_{key}"], ATOL, f"{variant} frame{i} {key}")
    for name in ("lip", "eye"):
        if f"retarget_{name}_ratio_in" in fx:
            ins, outs = zip(*calls[name])
            assert_close(torch.cat(ins)[:, -fx[f"retarget_{name}_ratio_in"].shape[1]:], fx[f"retarget_{name}_ratio_in"],
                         ATOL, f"{variant} {name} ratio in")
            assert_close(torch.cat(outs).reshape(-1, 21, 3), fx[f"retarget_{name}_delta"], ATOL, f"{variant} {name} delta")


class _Recording(torch.nn.Module):
    """A retargeting MLP that records its inputs and outputs (call order), for the fixtures' retarget_*."""

    def __init__(self, mlp, calls: list | None):
        super().__init__()
        self.mlp, self.calls = mlp, calls

    def forward(self, x):
        y = self.mlp(x)
        if self.calls is not None:
            self.calls.append((x, y))
        return y


def _fixture_a_source(oracle):
    from models.liveportrait.source import SourceMotion

    fx = np.load(oracle / "liveportrait" / "fixture_pipeline_A.npz")
    info = {k: t(fx[f"src_{k}"]) for k in ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")}
    source = SourceMotion(f_s=None, info=info, x_s=kpm.transform_keypoint(info), R_s=kpm.kp_info_rotation(info))
    lmk = fx["source_lmk_crop"][None]
    return fx, source, t(kpm.eye_close_ratio(lmk)).float(), t(kpm.lip_close_ratio(lmk)).float()


@pytest.mark.oracle
def test_pose_friendly_with_normalize_lip_closes_the_source_mouth_first(oracle, mlps):
    """Fixture B's rules on A's inputs: no multiplier; the lip offset to ratio 0 is added
    after stitching, only where the source's lip ratio reaches the threshold."""
    from types import SimpleNamespace

    from models.liveportrait.template_driving import TemplateOptions, drive_with_template

    fx, source, eye_ratio, lip_ratio = _fixture_a_source(oracle)
    nets = SimpleNamespace(stitching=mlps)
    options = TemplateOptions(driving_option="pose-friendly", normalize_lip=True)
    frames, multiplier = drive_with_template(nets, source, template_of(fx), options, eye_ratio, lip_ratio)
    assert multiplier is None and float(lip_ratio) >= 0.03  # README: the source lip ratio is 0.16
    with torch.no_grad():
        closing = kpm.retarget_lip(mlps.lip, source.x_s, torch.cat([lip_ratio, torch.zeros(1, 1)], dim=1))
        x_d0 = kpm.relative_motion(source.info, source.R_s, template_of(fx)[0], template_of(fx)[0])
    assert_close(frames[0].stitch_in, x_d0.numpy(), ATOL, "pose-friendly: plain relative motion")
    for frame in frames:
        assert_close(frame.x_d, (frame.stitch_out + closing).numpy(), ATOL, "lip closed after stitching")
    high = TemplateOptions(driving_option="pose-friendly", normalize_lip=True, lip_normalize_threshold=1.0)
    frames, _ = drive_with_template(nets, source, template_of(fx), high, eye_ratio, lip_ratio)
    for frame in frames:  # below the threshold: untouched
        assert_close(frame.x_d, frame.stitch_out.numpy(), 1e-7, "no lip offset")


@pytest.mark.oracle
def test_eye_and_lip_retargeting_replace_the_driving_motion(oracle, mlps):
    """Fixture C's rule on A's inputs: x_d = x_s + Δeyes + Δlip, whatever the driving pose."""
    from types import SimpleNamespace

    from models.liveportrait.template_driving import TemplateOptions, drive_with_template

    fx, source, eye_ratio, lip_ratio = _fixture_a_source(oracle)
    nets = SimpleNamespace(stitching=mlps)
    options = TemplateOptions(eye_retargeting=True, lip_retargeting=True)
    template = template_of(fx)
    frames, _ = drive_with_template(nets, source, template, options, eye_ratio, lip_ratio)
    turn = kpm.get_rotation_matrix(torch.tensor([20.0]), torch.tensor([10.0]), torch.tensor([0.0]))
    turned = [{**m, "R": m["R"] @ turn} for m in template]
    again, _ = drive_with_template(nets, source, turned, options, eye_ratio, lip_ratio)
    with torch.no_grad():
        for i, (frame, other) in enumerate(zip(frames, again)):
            eye = kpm.retarget_eye(mlps.eye, source.x_s, torch.cat([eye_ratio, t(fx["drv_c_eyes"][i][:1])[None]], dim=1))
            lip = kpm.retarget_lip(mlps.lip, source.x_s, torch.cat([lip_ratio, t(fx["drv_c_lip"][i][:1])[None]], dim=1))
            assert_close(frame.stitch_in, (source.x_s + eye + lip).numpy(), ATOL, f"frame{i} retargeted")
            assert torch.equal(frame.x_d, other.x_d)  # the driving pose is ignored
