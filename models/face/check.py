"""An up-front check, on the CPU, that a portrait has a face a face-driven mode can use.

Sessions of liveportrait and ditto prepare their persona on the GPU backend, which may
not be loaded yet; without this check a portrait with no usable face is found out only
when a session starts (its `error {code: "no_face"}` event). With the mode's detector on
this machine, an upload can ask (`check_face_for=<mode>`) and be refused at once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..weights import WeightFile, resolve
from . import files
from .analysis import FaceAnalysisConfig, FaceWarning, choose_face
from .detection import FaceDetector
from .onnx_session import open_session


def detector_file(mode: str) -> WeightFile | None:
    """The official detector file a mode finds faces with; None for modes without one here
    (musetalk finds its face its own way, still needs none)."""
    if mode == "liveportrait":
        return files.DETECTOR
    if mode == "ditto":
        from ..ditto.config import DittoFiles

        return DittoFiles().face_det
    return None


class PortraitFaceCheck:
    """The mode's face detector on the CPU; `check` raises PersonaError (`no_face`,
    `face_too_small`) as preparing the persona on the backend would."""

    def __init__(self, mode: str, cache_dir: str | Path | None = None,
                 min_face_px: int = FaceAnalysisConfig().min_face_px):
        wanted = detector_file(mode)
        if wanted is None:
            raise ValueError(f"mode {mode!r} has no face detector to check with")
        # WeightsMissingError when the file is not on this machine: the caller skips the check.
        self.detector = FaceDetector(open_session(resolve(wanted, mode, cache_dir), prefer_cuda=False))
        self.min_face_px = min_face_px

    def check(self, image: np.ndarray) -> list[FaceWarning]:
        """image: H×W×3 uint8 RGB -> warnings (several faces); raises when no face is usable."""
        _, warnings = choose_face(self.detector.detect(image), self.min_face_px)
        return warnings
