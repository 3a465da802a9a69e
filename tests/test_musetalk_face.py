"""MuseTalk face box (2c-i) and DWPose decoding."""
from __future__ import annotations

import numpy as np
import pytest

from models.musetalk.face_box import (
    DWPoseConfig,
    affine_to_input,
    box_center_scale,
    crop_face,
    decode_simcc,
    face_box,
)


@pytest.fixture(scope="module")
def data(oracle):
    return np.load(oracle / "musetalk" / "bbox_landmarks.npz")


def boxes(data, bbox_shift: int = 0, extra_margin: int | None = None) -> np.ndarray:
    hw = tuple(int(v) for v in data["frame_hw"])
    out = []
    for lm, det, none in zip(data["landmarks_dwpose_float"], data["s3fd_box"], data["s3fd_is_none"]):
        fallback = None if none else tuple(int(v) for v in det)
        # the plain upstream coords are the v1.5 box without the margin
        out.append(face_box(lm, fallback, hw, extra_margin=extra_margin or 0, bbox_shift=bbox_shift))
    return np.array(out)


@pytest.mark.oracle
@pytest.mark.parametrize("shift, key", [(0, "0"), (5, "p5"), (-7, "m7")])
def test_coords_match_oracle(data, shift, key):
    np.testing.assert_array_equal(boxes(data, shift), data[f"coords_bbox_shift_{key}"])


@pytest.mark.oracle
@pytest.mark.parametrize("margin", [10, 0, 25])
def test_v15_crop_box_matches_oracle(data, margin):
    np.testing.assert_array_equal(boxes(data, 0, margin), data[f"v15_crop_box_extra_margin_{margin}"])


@pytest.mark.oracle
def test_crop_resize_matches_oracle(data):
    box = tuple(int(v) for v in data["v15_crop_box_extra_margin_10"][0])
    crop = crop_face(data["frame0_bgr"], box)
    diff = np.abs(crop.astype(int) - data["frame0_crop_resized_lanczos4_256"].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_simcc_decoding_round_trips_a_keypoint():
    """A one-hot SimCC peak at an input pixel maps back to the frame pixel it came from."""
    cfg = DWPoseConfig()
    center, scale = box_center_scale((256, 240), cfg)
    warp = affine_to_input(center, scale, cfg)
    frame_xy = np.array([100.0, 150.0])
    in_xy = warp[:, :2] @ frame_xy + warp[:, 2]
    simcc_x = np.zeros((1, cfg.input_wh[0] * 2), np.float32)
    simcc_y = np.zeros((1, cfg.input_wh[1] * 2), np.float32)
    simcc_x[0, int(round(in_xy[0] * 2))] = 1.0
    simcc_y[0, int(round(in_xy[1] * 2))] = 1.0
    kp, score = decode_simcc(simcc_x, simcc_y, center, scale, cfg)
    np.testing.assert_allclose(kp[0], frame_xy, atol=scale[0] / cfg.input_wh[0])
    assert score[0] == 1.0


def test_box_fits_model_aspect_ratio():
    cfg = DWPoseConfig()
    _, scale = box_center_scale((256, 240), cfg)
    assert scale[0] / scale[1] == pytest.approx(288 / 384)
    assert scale[1] >= 256 * 1.25
