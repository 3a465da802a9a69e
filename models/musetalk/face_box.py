"""The MuseTalk v1.5 face box, from 68-point face landmarks.

Box rule (upstream `get_landmark_and_bbox` + v1.5's `extra_margin`), on landmarks
truncated to int32:

    lm[29].y += bbox_shift                   (nose-bridge point; v1.5 forces shift 0)
    y2 = max y of all 68 points (after the shift)
    y1 = max(0, 2 * lm[29].y - y2)           (mirror the chin about the nose bridge)
    x1, x2 = min x, max x
    fallback to the detector box if y2 <= y1, x2 <= x1 or x1 < 0
    no detector box at all: no face, placeholder (0, 0, 0, 0)
    then y2 = min(y2 + extra_margin, H)      (v1.5: room for the chin)

Landmark model: DWPose whole-body (`yzd-v/DWPose` `dw-ll_ucoco_384.onnx`, RTMPose-l,
133 keypoints, face = keypoints 23..90 in the 68-point iBUG order) on onnxruntime.
It is the network upstream runs through mmpose, so the box semantics carry over
unchanged and no 106->68 mapping is needed. Differences from upstream:
 - no flip test (upstream's config averages the SimCC outputs of the image and its
   mirror); the mirror doubles the cost for sub-pixel changes;
 - the detector fallback: upstream uses S3FD boxes; we have no S3FD, so when the rule
   falls back we use the landmarks' own bounding box clipped to the frame, and
   `prepare` rejects frames whose face keypoints score below `min_score`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

NOSE_BRIDGE = 29  # 68-point index used as the vertical centre of the box
FACE_KEYPOINTS = slice(23, 91)  # the 68 face points inside DWPose's 133


def landmark_box(landmarks: np.ndarray, bbox_shift: int = 0) -> tuple[int, int, int, int] | None:
    """landmarks 68×2 float (x, y) -> (x1, y1, x2, y2), or None where upstream falls back."""
    lm = landmarks.astype(np.int32)  # truncation toward zero, as upstream
    lm[NOSE_BRIDGE, 1] += bbox_shift
    y2 = int(lm[:, 1].max())
    y1 = max(0, 2 * int(lm[NOSE_BRIDGE, 1]) - y2)
    x1, x2 = int(lm[:, 0].min()), int(lm[:, 0].max())
    if y2 - y1 <= 0 or x2 - x1 <= 0 or x1 < 0:
        return None
    return x1, y1, x2, y2


def face_box(
    landmarks: np.ndarray,
    detector_box: tuple[int, int, int, int] | None,
    frame_hw: tuple[int, int],
    extra_margin: int = 10,
    bbox_shift: int = 0,
) -> tuple[int, int, int, int]:
    """v1.5 crop box. No detector box means no face: upstream's placeholder (0, 0, 0, 0)."""
    if detector_box is None:
        return (0, 0, 0, 0)
    x1, y1, x2, y2 = landmark_box(landmarks, bbox_shift) or tuple(int(v) for v in detector_box)
    return x1, y1, x2, min(y2 + extra_margin, frame_hw[0])


def crop_face(frame_bgr: np.ndarray, box: tuple[int, int, int, int], size: int = 256) -> np.ndarray:
    """H×W×3 frame -> size×size×3 crop, resized with cv2 LANCZOS4 as upstream."""
    import cv2

    x1, y1, x2, y2 = box
    return cv2.resize(frame_bgr[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_LANCZOS4)


# ---------------------------------------------------------------- DWPose (ONNX)


@dataclass(frozen=True)
class DWPoseConfig:
    """RTMPose-l whole-body top-down settings (mmpose config upstream uses)."""

    input_wh: tuple[int, int] = (288, 384)
    bbox_padding: float = 1.25
    simcc_split_ratio: float = 2.0
    mean_rgb: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std_rgb: tuple[float, float, float] = (58.395, 57.12, 57.375)
    min_score: float = 0.3


def box_center_scale(frame_hw: tuple[int, int], config: DWPoseConfig) -> tuple[np.ndarray, np.ndarray]:
    """Whole frame as the person box (upstream passes no detector box): centre and padded
    size, widened or heightened to the model's aspect ratio."""
    h, w = frame_hw
    center = np.array([w / 2.0, h / 2.0])
    scale = np.array([w, h], dtype=np.float64) * config.bbox_padding
    aspect = config.input_wh[0] / config.input_wh[1]
    if scale[0] > scale[1] * aspect:
        scale[1] = scale[0] / aspect
    else:
        scale[0] = scale[1] * aspect
    return center, scale


def affine_to_input(center: np.ndarray, scale: np.ndarray, config: DWPoseConfig) -> np.ndarray:
    """2×3 matrix mapping the padded box onto the model input (no rotation)."""
    out_w, out_h = config.input_wh
    sx, sy = out_w / scale[0], out_h / scale[1]
    return np.array([[sx, 0.0, out_w / 2 - sx * center[0]], [0.0, sy, out_h / 2 - sy * center[1]]])


def decode_simcc(
    simcc_x: np.ndarray, simcc_y: np.ndarray, center: np.ndarray, scale: np.ndarray, config: DWPoseConfig
) -> tuple[np.ndarray, np.ndarray]:
    """simcc_x K×(W·r), simcc_y K×(H·r) -> keypoints K×2 in frame pixels, scores K."""
    x = simcc_x.argmax(-1) / config.simcc_split_ratio
    y = simcc_y.argmax(-1) / config.simcc_split_ratio
    scores = np.minimum(simcc_x.max(-1), simcc_y.max(-1))
    input_wh = np.array(config.input_wh, dtype=np.float64)
    keypoints = np.stack([x, y], -1) / input_wh * scale + center - scale / 2
    return keypoints.astype(np.float32), scores


class DWPoseLandmarks:
    """68 face landmarks per frame from DWPose whole-body on onnxruntime."""

    def __init__(self, onnx_path: Path, config: DWPoseConfig | None = None, providers: list[str] | None = None):
        import onnxruntime as ort

        self.config = config or DWPoseConfig()
        self.session = ort.InferenceSession(str(onnx_path), providers=providers or ["CPUExecutionProvider"])

    def __call__(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, float]:
        """H×W×3 uint8 BGR -> (68×2 float32 landmarks, mean face score)."""
        import cv2

        cfg = self.config
        center, scale = box_center_scale(frame_bgr.shape[:2], cfg)
        warp = affine_to_input(center, scale, cfg)
        crop = cv2.warpAffine(frame_bgr, warp, cfg.input_wh, flags=cv2.INTER_LINEAR)
        x = (crop[..., ::-1].astype(np.float32) - np.array(cfg.mean_rgb, np.float32)) / np.array(cfg.std_rgb, np.float32)
        name = self.session.get_inputs()[0].name
        simcc_x, simcc_y = self.session.run(None, {name: x.transpose(2, 0, 1)[None]})[:2]
        keypoints, scores = decode_simcc(simcc_x[0], simcc_y[0], center, scale, cfg)
        return keypoints[FACE_KEYPOINTS], float(scores[FACE_KEYPOINTS].mean())


def fallback_box(landmarks: np.ndarray, frame_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Our stand-in for upstream's S3FD fallback: the landmarks' bounding box inside the frame."""
    h, w = frame_hw
    x1, y1 = np.clip(landmarks.min(0), 0, [w, h]).astype(int)
    x2, y2 = np.clip(landmarks.max(0), 0, [w, h]).astype(int)
    return int(x1), int(y1), int(x2), int(y2)
