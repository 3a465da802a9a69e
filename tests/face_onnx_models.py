"""Tiny ONNX stand-ins for the official face models, with their input/output names and shapes.

Each model returns fixed outputs (chosen by the test) whatever the image, but it
is a real ONNX graph run by a real onnxruntime session, so our preprocessing,
session handling and decoding code all run. The input is folded in as
`output + 0·mean(input)` so the graph depends on it like the real model does.
Needs the `onnx` package (test-only).
"""
from __future__ import annotations

import math

import numpy as np

DET_SIZE = 512
STRIDES = (8, 16, 32)


def _model_bytes(input_name: str, input_shape: list, outputs: dict[str, np.ndarray]) -> bytes:
    """An ONNX model: input -> each output = constant + 0·mean(input)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceMean", [input_name], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
    ]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    graph_outputs = []
    for name, value in outputs.items():
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_const"))
        nodes.append(helper.make_node("Add", [f"{name}_const", "nothing"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(
        nodes, "stand_in", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)],
        graph_outputs, initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


# ---- detector (det_10g.onnx): input.1 1×3×?×?; scores, boxes, keypoints per stride ----


def detector_outputs(faces: list[tuple[list[float], float]]) -> dict[str, np.ndarray]:
    """Raw SCRFD head outputs encoding `faces` = [([x1, y1, x2, y2], score), ...] in 512² input pixels.

    Each face is written at the stride-16 anchor nearest its centre; keypoints are
    placed at fixed fractions of the box.
    """
    out = {}
    for s in STRIDES:
        n = (DET_SIZE // s) ** 2 * 2
        out[f"score_{s}"] = np.zeros((n, 1), np.float32)
        out[f"bbox_{s}"] = np.zeros((n, 4), np.float32)
        out[f"kps_{s}"] = np.zeros((n, 10), np.float32)
    stride, cells = 16, DET_SIZE // 16
    for (x1, y1, x2, y2), score in faces:
        col, row = round((x1 + x2) / 2 / stride), round((y1 + y2) / 2 / stride)
        anchor = (row * cells + col) * 2
        cx, cy = col * stride, row * stride
        out[f"score_{stride}"][anchor] = score
        out[f"bbox_{stride}"][anchor] = np.array([cx - x1, cy - y1, x2 - cx, y2 - cy]) / stride
        fx = np.array([0.3, 0.7, 0.5, 0.35, 0.65])
        fy = np.array([0.4, 0.4, 0.55, 0.75, 0.75])
        kps = np.stack([x1 + fx * (x2 - x1) - cx, y1 + fy * (y2 - y1) - cy], axis=1)
        out[f"kps_{stride}"][anchor] = kps.reshape(-1) / stride
    ordered = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in STRIDES]  # the official order
    return {k: out[k] for k in ordered}


def detector_model(faces: list[tuple[list[float], float]]) -> bytes:
    return _model_bytes("input.1", [1, 3, "height", "width"], detector_outputs(faces))


# ---- synthetic landmark layouts in unit face coordinates (x right, y down, centre 0) ----


def _ring(n: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """n points on an ellipse starting at its left end, going over the top."""
    t = math.pi + np.arange(n) * 2 * math.pi / n
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def face_points_106() -> np.ndarray:
    """106×2 unit-face points with the eye and lip anchors LivePortrait reads."""
    pts = _ring(106, 0.0, 0.05, 0.6, 0.75)
    pts[[33, 35, 40, 39]] = _ring(4, -0.3, -0.2, 0.1, 0.05)
    pts[[87, 89, 94, 93]] = _ring(4, 0.3, -0.2, 0.1, 0.05)
    pts[[52, 61]] = [[0.0, 0.3], [0.0, 0.4]]
    return pts


def face_points_203() -> np.ndarray:
    """203×2 unit-face points: eye rings 0–23 and 24–47 (corners 0/12, lids 6/18),
    lip ring from 48 (corners 48/66, inner lips 90/102), the rest on the face oval."""
    pts = _ring(203, 0.0, 0.05, 0.6, 0.75)
    pts[0:24] = _ring(24, -0.3, -0.2, 0.12, 0.05)
    pts[24:48] = _ring(24, 0.3, -0.2, 0.12, 0.05)
    pts[48:84] = _ring(36, 0.0, 0.35, 0.2, 0.08)
    pts[[90, 102]] = [[0.0, 0.33], [0.0, 0.37]]
    return pts


def landmarks106_model(unit_points: np.ndarray | None = None) -> bytes:
    """2d106det stand-in: data 1×3×192×192 -> fc1 1×212 in [−1, 1] over the crop.

    The crop spans 1.5 box sides, so a unit-face point p lands at box centre + p·side/2.
    """
    p = face_points_106() if unit_points is None else unit_points
    normalised = p / 1.5  # unit face (±1 = box edge) -> crop coordinates (±1 = crop edge)
    return _model_bytes("data", [1, 3, 192, 192], {"fc1": normalised.reshape(1, -1)})


def landmarks203_model(unit_points: np.ndarray | None = None) -> bytes:
    """landmark.onnx stand-in: input 1×3×224×224 -> 3 outputs, output 2 = 1×406 in [0, 1]."""
    p = face_points_203() if unit_points is None else unit_points
    normalised = 0.5 + p / 3.0  # unit face -> [0, 1] over the 224 crop (loosely: the crop is wider)
    return _model_bytes(
        "input", [1, 3, 224, 224],
        {"pts_aux": np.zeros((1, 4), np.float32), "score": np.ones((1, 1), np.float32), "landmarks": normalised.reshape(1, -1)},
    )
