"""MediaPipe's 478-point face mesh on the source crop: where Ditto's eye condition comes from.

Ditto ships MediaPipe's FaceLandmarker model (`ditto_pytorch/aux_models/face_landmarker.task`)
and computes the source's eye openness and eyeball offset from its points
(`models/ditto/eyes.py`). We run it through the `mediapipe` package, the optional extra
`lockn-bod[ditto-eyes]` (not a default dependency: it brings a second OpenCV build).
Without it, or where no face mesh is found, the persona gets neutral eyes and a
`warning` says so.

The model runs on the square 512-px source crop; points come back in that crop's pixels
(MediaPipe gives x and y as fractions of the width and height, z on the width's scale),
so the ratios of `eyes.py` do not depend on the crop's size.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .eyes import N_POINTS

log = logging.getLogger(__name__)


def mesh_points(landmarks: Any, width: int, height: int) -> np.ndarray:
    """One face's MediaPipe landmarks (a sequence of objects with x, y, z fractions)
    -> (478, 3) float32 in pixels."""
    points = np.array([(p.x * width, p.y * height, p.z * width) for p in landmarks], np.float32)
    if points.shape != (N_POINTS, 3):
        raise ValueError(f"expected {N_POINTS} face-mesh points (iris refinement on), got {len(points)}")
    return points


class FaceMesh:
    """MediaPipe FaceLandmarker in single-image mode, one face."""

    def __init__(self, task_path: str | Path):
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(task_path)),
            running_mode=vision.RunningMode.IMAGE, num_faces=1)
        self._landmarker = vision.FaceLandmarker.create_from_options(options)

    def points(self, image_rgb: np.ndarray) -> np.ndarray | None:
        """H×W×3 uint8 RGB -> (478, 3) pixel points of the face, or None where none is found."""
        import mediapipe as mp

        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image_rgb))
        faces = self._landmarker.detect(image).face_landmarks
        if not faces:
            return None
        h, w = image_rgb.shape[:2]
        return mesh_points(faces[0], w, h)


def load_face_mesh(task_path: str | Path) -> FaceMesh | None:
    """The face mesh, or None where the `mediapipe` package is not installed or cannot
    read the file (eyes are a refinement: the backend still serves, with neutral eyes)."""
    try:
        return FaceMesh(task_path)
    except ImportError:
        log.warning("ditto: mediapipe is not installed (pip install 'lockn-bod[ditto-eyes]'); "
                    "personas get neutral eye openness and gaze")
    except RuntimeError as err:  # what MediaPipe raises for an unreadable model file
        log.warning("ditto: MediaPipe cannot load %s (%s); personas get neutral eyes", task_path, err)
    return None
