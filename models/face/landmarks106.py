"""InsightFace 106-point landmarks (`buffalo_l/2d106det.onnx`) through onnxruntime.

The model sees a 192×192 axis-aligned crop centred on the detector's box, scaled
so the box's larger side spans 192/1.5 pixels. Its input is RGB in 0..255 (the
model normalises internally: its graph starts with a BatchNorm `bn_data`, for
which InsightFace's runtime picks mean 0, std 1). It outputs 212 numbers, 106
(x, y) pairs in [−1, 1] over the crop, mapped to crop pixels by (p + 1)·96 and
back to the image with the inverse crop transform.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .detection import FaceBox
from .onnx_session import OnnxSession, model_input_name


@dataclass(frozen=True)
class Landmark106Config:
    input_size: int = 192
    box_scale: float = 1.5  # the crop spans 1.5× the box's larger side
    input_mean: float = 0.0
    input_std: float = 1.0
    input_name: str = "data"
    num_points: int = 106


def box_crop_transform(box: np.ndarray, input_size: int, box_scale: float) -> np.ndarray:
    """2×3 float64 image→crop map: the box centre to the crop centre, no rotation."""
    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    s = input_size / (max(w, h) * box_scale)
    half = input_size / 2
    return np.array([[s, 0, half - s * cx], [0, s, half - s * cy]], np.float64)


class Landmark106Runner:
    """106 points for a detected face; `session` is an onnxruntime session (or a stand-in)."""

    def __init__(self, session: OnnxSession, config: Landmark106Config = Landmark106Config()):
        self.session = session
        self.config = config

    def run(self, image: np.ndarray, face: FaceBox) -> np.ndarray:
        """image: H×W×3 uint8 RGB -> 106×2 float32 points in image pixels."""
        cfg = self.config
        M = box_crop_transform(face.box, cfg.input_size, cfg.box_scale)
        crop = cv2.warpAffine(image, M, (cfg.input_size, cfg.input_size), borderValue=0.0)
        x = ((crop.astype(np.float32) - cfg.input_mean) / cfg.input_std).transpose(2, 0, 1)[None]  # 1×3×192×192
        raw = np.asarray(self.session.run(None, {model_input_name(self.session, cfg.input_name): x})[0], np.float32)[0]
        pred = raw.reshape(-1, 2)[-cfg.num_points:]  # 106×2 in [−1, 1]
        crop_points = (pred + 1) * (cfg.input_size // 2)
        back = cv2.invertAffineTransform(M)
        return (crop_points @ back[:, :2].T + back[:, 2]).astype(np.float32)
