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


def test_dwpose_onnx_session_returns_face_points(tmp_path):
    """DWPoseLandmarks on a stand-in ONNX graph with DWPose's input/output shapes: SimCC peaks
    placed at known input pixels come back as the face points, in frame coordinates."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from models.musetalk.face_box import DWPoseLandmarks

    cfg = DWPoseConfig()
    frame_hw = (256, 240)
    center, scale = box_center_scale(frame_hw, cfg)
    warp = affine_to_input(center, scale, cfg)
    rng = np.random.default_rng(0)
    frame_xy = np.stack([rng.uniform(60, 180, 133), rng.uniform(60, 200, 133)], -1)
    in_xy = frame_xy @ warp[:, :2].T + warp[:, 2]
    simcc_x = np.zeros((1, 133, 576), np.float32)
    simcc_y = np.zeros((1, 133, 768), np.float32)
    simcc_x[0, np.arange(133), np.round(in_xy[:, 0] * 2).astype(int)] = 0.9
    simcc_y[0, np.arange(133), np.round(in_xy[:, 1] * 2).astype(int)] = 0.8
    nodes = [
        helper.make_node("Constant", [], ["simcc_x"], value=numpy_helper.from_array(simcc_x)),
        helper.make_node("Constant", [], ["simcc_y"], value=numpy_helper.from_array(simcc_y)),
    ]
    graph = helper.make_graph(
        nodes, "dwpose_stub",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 384, 288])],
        [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [1, 133, 576]),
         helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [1, 133, 768])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "dwpose_stub.onnx"
    onnx.save(model, path)
    landmarks, score = DWPoseLandmarks(path)(np.zeros((*frame_hw, 3), np.uint8))
    assert landmarks.shape == (68, 2) and score == pytest.approx(0.8)
    np.testing.assert_allclose(landmarks, frame_xy[23:91], atol=scale[0] / 576 + 1e-3)
