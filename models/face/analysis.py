"""Find the one face a persona is made from: detection, 106 points, 203 points.

Errors a client can act on are raised as `PersonaError` with a code:
`no_face` (nothing detected) and `face_too_small` (the chosen face's box is
smaller than `min_face_px`). Several faces are not an error: the largest is
used (LivePortrait's own rule) and a warning value says so, for the caller to
surface to the user.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..base import PersonaError
from ..weights import resolve
from . import files
from .detection import DetectorConfig, FaceBox, FaceDetector
from .landmarks106 import Landmark106Config, Landmark106Runner
from .landmarks203 import Landmark203Runner
from .onnx_session import open_session


@dataclass(frozen=True)
class FaceAnalysisConfig:
    detector: DetectorConfig = DetectorConfig()
    landmarks106: Landmark106Config = Landmark106Config()
    # Below this box side the 256² network input would be upsampled from a few
    # dozen pixels and look blurred: refuse rather than animate mush.
    min_face_px: int = 64


@dataclass(frozen=True)
class FaceWarning:
    """Something the user should know that did not stop preparation."""

    code: str
    message: str


@dataclass
class AnalysedFace:
    """The chosen face: box, 106 InsightFace points and 203 LivePortrait points (image pixels)."""

    face: FaceBox
    points106: np.ndarray  # 106×2 float32
    points203: np.ndarray  # 203×2 float32
    warnings: list[FaceWarning] = field(default_factory=list)


def choose_face(faces: list[FaceBox], min_face_px: int) -> tuple[FaceBox, list[FaceWarning]]:
    """The largest face, with a warning when there were several; raises PersonaError."""
    if not faces:
        raise PersonaError("no face found in the portrait", code="no_face")
    largest = max(faces, key=lambda f: f.area)
    warnings = []
    if len(faces) > 1:
        warnings.append(
            FaceWarning("several_faces", f"{len(faces)} faces found; using the largest ({largest.side:.0f} px)")
        )
    if largest.side < min_face_px:
        raise PersonaError(
            f"the face is {largest.side:.0f} px across; at least {min_face_px} px is needed", code="face_too_small"
        )
    return largest, warnings


class FaceAnalyzer:
    """Detector + 106-point + 203-point runners over onnxruntime sessions (or stand-ins)."""

    def __init__(self, detector_session, landmarks106_session, landmarks203_session, config=FaceAnalysisConfig()):
        self.config = config
        self.detector = FaceDetector(detector_session, config.detector)
        self.landmarks106 = Landmark106Runner(landmarks106_session, config.landmarks106)
        self.landmarks203 = Landmark203Runner(landmarks203_session)

    @classmethod
    def from_hf_cache(cls, mode: str, config: FaceAnalysisConfig = FaceAnalysisConfig(),
                      cache_dir: str | Path | None = None, prefer_cuda: bool = True) -> FaceAnalyzer:
        """Open the official files from the local Hugging Face cache, or from `cache_dir`
        (WeightsMissingError if absent); `prefer_cuda=False` keeps them on the CPU."""
        paths = [resolve(f, mode, cache_dir) for f in (files.DETECTOR, files.LANDMARKS_106, files.LANDMARKS_203)]
        return cls(*(open_session(p, prefer_cuda=prefer_cuda) for p in paths), config=config)

    def analyse(self, image: np.ndarray) -> AnalysedFace:
        """image: H×W×3 uint8 RGB -> the chosen face and its landmarks."""
        face, warnings = choose_face(self.detector.detect(image), self.config.min_face_px)
        points106 = self.landmarks106.run(image, face)
        points203 = self.landmarks203.run(image, points106)
        return AnalysedFace(face, points106, points203, warnings)
