"""Crop and paste-back geometry against fixture_crop_pasteback (oracle README section 4).

Matrices within 1e-4 px (our arithmetic). Images that cv2's warpAffine / resize produce within
the oracle README's resampler tolerance (tests/resampled.py): exact under the OpenCV the oracle
used, ±1 level on under 1 % of values under another release.
"""
from __future__ import annotations

import numpy as np
import pytest

from models.face import crop as fc
from models.face.landmarks203 import Landmark203Runner
from models.face.mask import ditto_mask, feathered_mask, liveportrait_mask_template
from models.face.paste_back import mask_box, paste_back, warp_mask
from tests.resampled import assert_resampled_equal

MATRIX_TOL_PX = 1e-4


@pytest.fixture(scope="module")
def fx(oracle):
    return dict(np.load(oracle / "liveportrait" / "fixture_crop_pasteback.npz"))


def assert_close(actual, expected, tol=MATRIX_TOL_PX):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=0, atol=tol)


@pytest.mark.oracle
def test_face_rect_from_106(fx):
    rect = fc.face_rect(fx["lmk106"], scale=2.3, vy_ratio=-0.125)
    assert_close(rect.center, fx["rect106_center"])
    assert_close(rect.size, fx["rect106_size"])
    assert_close([rect.angle_rad], fx["rect106_angle"], 1e-6)


@pytest.mark.oracle
def test_source_crop_from_106(fx):
    crop = fc.crop_image(fx["img_ori"], fx["lmk106"], fc.SOURCE_CROP)
    assert_close(crop.M_o2c, fx["crop106_M_o2c"])
    assert_close(crop.M_c2o, fx["crop106_M_c2o"])
    assert_close(crop.points, fx["crop106_pts"])
    assert_resampled_equal(crop.image, fx["crop106_img"], what="crop106_img")
    assert_resampled_equal(fc.network_input_256(crop.image), fx["crop106_img_256"], what="crop106_img_256")


@pytest.mark.oracle
def test_source_crop_from_203(fx):
    crop = fc.crop_image(fx["img_ori"], fx["lmk203"], fc.SOURCE_CROP)
    assert_close(crop.M_o2c, fx["crop203_M_o2c"])
    assert_close(crop.M_c2o, fx["crop203_M_c2o"])


class _FakeSession:
    """Stands in for landmark.onnx: records its input, returns the fixture's output."""

    def __init__(self, norm_points):
        self.norm_points = norm_points
        self.seen = None

    def run(self, output_names, feeds):
        self.seen = feeds["input"]
        out = self.norm_points.reshape(1, -1)
        return [np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32), out]


@pytest.mark.oracle
def test_landmark_runner_crop_and_mapping(fx):
    session = _FakeSession(fx["lmkrunner_onnx_out_norm"])
    runner = Landmark203Runner(session)
    points, crop = runner.run_with_crop(fx["img_ori"], fx["lmk106"])
    assert_close(crop.M_o2c, fx["lmkrunner_M_o2c"])
    assert_close(crop.M_c2o, fx["lmkrunner_M_c2o"])
    assert_resampled_equal(session.seen, fx["lmkrunner_input"], level=1 / 255, what="lmkrunner_input")
    assert_close(points, fx["lmkrunner_lmk203"])


@pytest.mark.oracle
def test_driving_box_crop(fx):
    box = fc.bbox_from_landmarks(fx["lmk203"], scale=2.2, vy_ratio=-0.1)
    assert_close(box["box"], fx["drv_bbox_rect"])
    assert_close(box["box_rotated"], fx["drv_bbox_rot"])
    ltrb = fc.average_boxes([box["ltrb"]])
    assert_close(ltrb, fx["drv_global_bbox"])
    crop = fc.crop_by_box(fx["img_ori"], ltrb, points=fx["lmk203"], dsize=512)
    assert_close(crop.M_o2c, fx["drv_crop_M_o2c"])
    assert_close(crop.M_c2o, fx["drv_crop_M_c2o"])
    assert_close(crop.points, fx["drv_crop_lmk"])
    import cv2

    assert_resampled_equal(cv2.resize(crop.image, (256, 256)), fx["drv_crop_img_256"], what="drv_crop_img_256")


@pytest.mark.oracle
def test_generated_mask_equals_upstream_template(fx):
    np.testing.assert_array_equal(liveportrait_mask_template(), fx["mask_template"])


@pytest.mark.oracle
def test_paste_back(fx):
    M_c2o = fx["crop106_M_c2o"]
    mask = warp_mask(fx["mask_template"], M_c2o, (360, 480))
    assert_resampled_equal(mask, fx["paste_mask_ori"], level=1 / 255, what="paste_mask_ori")
    out = paste_back(fx["paste_img_crop"], M_c2o, fx["img_ori"], mask)
    assert_resampled_equal(out, fx["paste_result"], what="paste_result")
    box = mask_box(mask)  # blending only where the mask is non-zero gives the same bytes
    assert (box[0].stop - box[0].start) * (box[1].stop - box[1].start) < 360 * 480
    np.testing.assert_array_equal(paste_back(fx["paste_img_crop"], M_c2o, fx["img_ori"], mask, box), out)


@pytest.mark.oracle
def test_resize_to_limit(fx):
    assert_resampled_equal(fc.resize_to_limit(fx["rtl_in"], max_dim=256, division=2), fx["rtl_out"], what="rtl_out")


@pytest.mark.oracle
def test_ditto_mask_and_crop_share_the_geometry(oracle):
    """Ditto's crop, mask and paste-back are the same code path: its fixture must match ours too."""
    path = oracle / "ditto" / "image_geometry.npz"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    g = np.load(path)
    np.testing.assert_allclose(ditto_mask(), g["mask_512"], rtol=0, atol=1e-6)
    crop = fc.crop_image(g["src_img_rgb"], g["lmk203"], fc.SOURCE_CROP)
    assert_close(crop.M_o2c, g["crop512_M_o2c"])
    assert_resampled_equal(crop.image, g["crop512_img"], what="crop512_img")
    small = fc.crop_image(g["src_img_rgb"], g["lmk106"], fc.LANDMARK_RUNNER_CROP)
    assert_close(small.M_o2c, g["crop224_M_o2c"])
    assert_resampled_equal(small.image, g["crop224_img"], what="crop224_img")
    # Ditto's PutBackNumpy: a float render, a 2-D float mask, the same blend and truncation.
    mask = warp_mask(ditto_mask(), g["crop512_M_c2o"], g["src_img_rgb"].shape[:2])
    pasted = paste_back(g["render_512_float"], g["crop512_M_c2o"], g["src_img_rgb"], mask, mask_box(mask))
    assert_resampled_equal(pasted, g["pasted_rgb"], what="pasted_rgb")


@pytest.mark.oracle
def test_resampler_tolerance_still_catches_a_shifted_crop(fx):
    """The looser image check is not blind: a crop one pixel off fails it."""
    crop = fc.crop_image(fx["img_ori"], fx["lmk106"], fc.SOURCE_CROP)
    for dx, dy in ((1, 0), (0, 1)):
        moved = crop.M_o2c.copy()
        moved[:2, 2] += (dx, dy)
        with pytest.raises(AssertionError):
            assert_resampled_equal(fc.warp(fx["img_ori"], moved, (512, 512)), fx["crop106_img"])
    # The paste-back moved by one pixel in the portrait fails too.
    mask = warp_mask(fx["mask_template"], fx["crop106_M_c2o"], (360, 480))
    moved = fx["crop106_M_c2o"].copy()
    moved[0, 2] += 1
    with pytest.raises(AssertionError):
        assert_resampled_equal(paste_back(fx["paste_img_crop"], moved, fx["img_ori"], mask), fx["paste_result"])


@pytest.mark.oracle
def test_resampler_tolerance_still_catches_the_wrong_interpolation(fx):
    """INTER_NEAREST or INTER_CUBIC in place of INTER_LINEAR, or NEAREST for AREA, fails the check.
    (INTER_LINEAR halving a size averages 2×2 pixels exactly as INTER_AREA does: not a fault.)"""
    import cv2

    crop = fc.crop_image(fx["img_ori"], fx["lmk106"], fc.SOURCE_CROP)
    for flags in (cv2.INTER_NEAREST, cv2.INTER_CUBIC):
        wrong = cv2.warpAffine(fx["img_ori"], crop.M_o2c[:2], (512, 512), flags=flags,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        with pytest.raises(AssertionError):
            assert_resampled_equal(wrong, fx["crop106_img"])
    wrong_256 = cv2.resize(fx["crop106_img"], (256, 256), interpolation=cv2.INTER_NEAREST)
    with pytest.raises(AssertionError):
        assert_resampled_equal(wrong_256, fx["crop106_img_256"])


def test_resampler_tolerance_bounds():
    """One level on under 1 % passes; two levels anywhere, or one level on 1 %, fails."""
    base = np.full((100, 100), 128, np.uint8)
    near = base.copy()
    near.flat[:99] += 1
    assert_resampled_equal(near, base)
    two = base.copy()
    two.flat[0] += 2
    many = base.copy()
    many.flat[:100] += 1
    for wrong in (two, many, base.astype(np.float32), base[:99]):
        with pytest.raises(AssertionError):
            assert_resampled_equal(wrong, base)


def test_feathered_mask_shape():
    m = feathered_mask(64, 8, 55, 8)
    assert m.shape == (64, 64)
    assert m[32, 32] == 1 and m[0, 32] == 0 and m[0, 0] == 0
    assert 0 < m[4, 32] < 1
