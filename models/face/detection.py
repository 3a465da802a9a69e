"""Face detection: InsightFace SCRFD-10GF (`buffalo_l/det_10g.onnx`) through onnxruntime.

SCRFD is anchor-free in practice: every cell of the stride-8, 16 and 32 feature
maps carries 2 anchor points (same centre), and for each the network predicts
a face score, the distances from the centre to the box's four sides, and the
offsets of 5 keypoints, all in units of the stride. Decoding:

1. Letterbox: resize the image (aspect kept, bilinear) so it fits det_size²,
   paste it at the top-left of a black det_size² canvas.
2. Normalise RGB as (x − 127.5) / 128, NCHW, float32.
3. Per stride: keep anchors with score ≥ threshold, turn distances into boxes
   (`distance_to_box`) and keypoints (`distance_to_points`).
4. Undo the letterbox scale, sort by score, suppress overlaps (IoU > 0.4).

Settings are LivePortrait's: det_size 512, score threshold 0.15 (its CLI), NMS 0.4.
The ONNX outputs come in the order score×3, box×3, keypoints×3 (strides 8, 16, 32),
each (N, C) or batched (1, N, C).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .onnx_session import OnnxSession, model_input_name


@dataclass(frozen=True)
class DetectorConfig:
    """SCRFD decoding settings (official defaults as LivePortrait uses them)."""

    det_size: int = 512
    score_threshold: float = 0.15
    nms_iou: float = 0.4
    strides: tuple[int, ...] = (8, 16, 32)
    anchors_per_cell: int = 2
    input_mean: float = 127.5
    input_std: float = 128.0
    input_name: str = "input.1"


@dataclass
class FaceBox:
    """One detection in image pixels: box (4,) [x1, y1, x2, y2], score, keypoints 5×2
    (eyes, nose, mouth corners)."""

    box: np.ndarray
    score: float
    keypoints: np.ndarray

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))

    @property
    def side(self) -> float:
        """The box's larger side in pixels: what 'face too small' is judged by."""
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))


def letterbox(image: np.ndarray, det_size: int) -> tuple[np.ndarray, float]:
    """H×W×3 uint8 -> det_size²×3 uint8 canvas with the resized image top-left, and its scale."""
    h, w = image.shape[:2]
    if h / w > 1.0:  # taller than the (square) input
        new_h, new_w = det_size, int(det_size / (h / w))
    else:
        new_w, new_h = det_size, int(det_size * (h / w))
    canvas = np.zeros((det_size, det_size, 3), np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h))
    return canvas, new_h / h


def anchor_centres(size: int, stride: int, per_cell: int) -> np.ndarray:
    """(cells·per_cell)×2 float32 anchor centres (x, y) in input pixels, row-major,
    each centre repeated per_cell times consecutively (the head's output order)."""
    cells = size // stride
    ys, xs = np.mgrid[:cells, :cells]
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centres, per_cell, axis=0)


def distance_to_box(centres: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """centres: N×2, dist: N×4 (left, top, right, bottom distances) -> N×4 [x1, y1, x2, y2]."""
    return np.concatenate([centres - dist[:, :2], centres + dist[:, 2:4]], axis=1)


def distance_to_points(centres: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """centres: N×2, offsets: N×2K -> N×K×2 keypoints."""
    return centres[:, None, :] + offsets.reshape(len(offsets), offsets.shape[1] // 2, 2)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression; indices kept, best first.

    Areas use the +1 pixel convention of the reference decoder.
    """
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)[::-1]
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = w * h
        overlap = inter / (areas[best] + areas[rest] - inter)
        order = rest[overlap <= iou]
    return keep


class FaceDetector:
    """SCRFD over an onnxruntime session (or a stand-in with `run`)."""

    def __init__(self, session: OnnxSession, config: DetectorConfig = DetectorConfig()):
        self.session = session
        self.config = config

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """image: H×W×3 uint8 RGB -> faces sorted by box area, largest first."""
        cfg = self.config
        canvas, scale = letterbox(image, cfg.det_size)
        x = ((canvas.astype(np.float32) - cfg.input_mean) / cfg.input_std).transpose(2, 0, 1)[None]  # 1×3×S×S
        feed = {model_input_name(self.session, cfg.input_name): x}
        outputs = [self._unbatch(o) for o in self.session.run(None, feed)]
        boxes, scores, points = self._decode(outputs)
        if not len(scores):
            return []
        boxes, points = boxes / scale, points / scale
        faces = [FaceBox(boxes[i], float(scores[i]), points[i]) for i in nms(boxes, scores, cfg.nms_iou)]
        return sorted(faces, key=lambda f: f.area, reverse=True)

    @staticmethod
    def _unbatch(output: np.ndarray) -> np.ndarray:
        output = np.asarray(output, np.float32)
        return output[0] if output.ndim == 3 else output

    def _decode(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw head outputs -> boxes N×4, scores (N,), keypoints N×5×2 in letterbox pixels."""
        cfg = self.config
        n = len(cfg.strides)
        boxes, scores, points = [], [], []
        for level, stride in enumerate(cfg.strides):
            score = outputs[level][:, 0]  # (A,)
            keep = score >= cfg.score_threshold
            centres = anchor_centres(cfg.det_size, stride, cfg.anchors_per_cell)[keep]
            boxes.append(distance_to_box(centres, outputs[n + level][keep] * stride))
            points.append(distance_to_points(centres, outputs[2 * n + level][keep] * stride))
            scores.append(score[keep])
        return np.concatenate(boxes), np.concatenate(scores), np.concatenate(points)
