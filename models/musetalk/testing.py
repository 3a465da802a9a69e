"""File-free stand-ins for the face models of the tiny MuseTalk preset (config.py): a
parser that calls everything skin, and landmarks on an ellipse in the middle of the frame.

`MuseTalkPipeline("tiny", seed=s)` uses them; its networks are config.py's tiny presets.
"""
from __future__ import annotations

import numpy as np


def ellipse_landmarks(frame_bgr: np.ndarray) -> tuple[np.ndarray, float]:
    """68 points on an ellipse around the frame centre; point 29 at the centre (box = middle half)."""
    h, w = frame_bgr.shape[:2]
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    points = np.stack([w / 2 + w / 4 * np.cos(angles), h / 2 + h / 4 * np.sin(angles)], -1)
    points[29] = (w / 2, h / 2)
    return points.astype(np.float32), 1.0


def all_skin_parser(image, mode: str):
    """Parser stand-in: a 512×512 all-skin mask ('jaw' keeps the lower half after blending rules)."""
    from PIL import Image

    return Image.fromarray(np.full((512, 512), 255, np.uint8))
