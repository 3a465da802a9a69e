"""The official face model files (Hugging Face repo KwaiVGI/LivePortrait) and their licences.

LivePortrait ships InsightFace's buffalo_l detector and 106-point model next to
its own 203-point landmark model. The InsightFace files are licensed for
non-commercial research only: an operator who uses LockN Bod commercially must
replace them (the rest of the face stack does not depend on where the points
come from).
"""
from __future__ import annotations

from ..weights import WeightFile

LIVEPORTRAIT_REPO = "KwaiVGI/LivePortrait"
INSIGHTFACE_LICENCE = "InsightFace model zoo: non-commercial research use only"
LIVEPORTRAIT_LICENCE = "MIT (LivePortrait)"

DETECTOR = WeightFile(LIVEPORTRAIT_REPO, "insightface/models/buffalo_l/det_10g.onnx", INSIGHTFACE_LICENCE)
LANDMARKS_106 = WeightFile(LIVEPORTRAIT_REPO, "insightface/models/buffalo_l/2d106det.onnx", INSIGHTFACE_LICENCE)
LANDMARKS_203 = WeightFile(LIVEPORTRAIT_REPO, "liveportrait/landmark.onnx", LIVEPORTRAIT_LICENCE)

FACE_FILES = (DETECTOR, LANDMARKS_106, LANDMARKS_203)
