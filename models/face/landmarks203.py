"""LivePortrait's 203-point landmark model (`liveportrait/landmark.onnx`).

It refines a coarse set of points (the 106 InsightFace points, or the previous
frame's 203 points when tracking a video): crop 224×224 around them (scale 1.5,
shifted up by 0.1 side, rotated upright), feed RGB/255 as 1×3×224×224 into
input `input`; output 2 holds the 203 points normalised to [0, 1] in the crop,
which are scaled by 224 and mapped back to the image with the crop's M_c2o.
"""
from __future__ import annotations

import numpy as np

from .crop import LANDMARK_RUNNER_CROP, Crop, crop_image, transform_points
from .onnx_session import OnnxSession, model_input_name

INPUT_NAME = "input"
POINTS_OUTPUT_INDEX = 2


class Landmark203Runner:
    """Refines landmarks to LivePortrait's 203-point layout.

    session: an onnxruntime session over landmark.onnx (or a stand-in with `run`).
    """

    def __init__(self, session: OnnxSession):
        self.session = session

    def run(self, image: np.ndarray, coarse_points: np.ndarray) -> np.ndarray:
        """image: H×W×3 uint8 RGB; coarse_points: N×2 (106 or 203) -> 203×2 float32 image pixels."""
        return self.run_with_crop(image, coarse_points)[0]

    def run_with_crop(self, image: np.ndarray, coarse_points: np.ndarray) -> tuple[np.ndarray, Crop]:
        """As `run`, also returning the 224 crop the model saw."""
        crop = crop_image(image, coarse_points, LANDMARK_RUNNER_CROP)
        size = LANDMARK_RUNNER_CROP.dsize
        x = (crop.image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]  # 1×3×224×224 RGB
        outputs = self.session.run(None, {model_input_name(self.session, INPUT_NAME): x})
        normalised = np.asarray(outputs[POINTS_OUTPUT_INDEX])[0].reshape(-1, 2)  # 203×2 in [0, 1]
        return transform_points(normalised * size, crop.M_c2o).astype(np.float32), crop
