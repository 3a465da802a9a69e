"""Ditto's eye condition: eye openness and eyeball offset from MediaPipe's 478 points.

Parity with `image_geometry.npz` (EyeAttrUtilsByMP on seeded points), the geometry
behind it, the conversion of MediaPipe's results to pixels, and how `prepare` uses
a face mesh (a stand-in here: MediaPipe's model file cannot be fetched on this
machine) or falls back to neutral eyes with a warning.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from models.base import PersonaMedia
from models.ditto.eyes import LEFT_CORNERS, LEFT_IRIS, LEFT_LID_PAIRS, N_POINTS, eye_attributes
from models.ditto.face_mesh import mesh_points
from models.ditto.pipeline import DEFAULT_EYE_OPEN, MODE, DittoPipeline
from models.ditto.testing import face_like_portrait
from tests.parity.test_ditto_pipeline import NARROW_RENDERER


@pytest.mark.oracle
def test_eye_attributes_match_the_reference(oracle):
    fx = np.load(oracle / "ditto" / "image_geometry.npz")
    openness, ball = eye_attributes(fx["lmk478"])
    np.testing.assert_allclose(openness, fx["eye_open_LR"], rtol=1e-6)
    np.testing.assert_allclose(ball, fx["eye_ball_move_LR_flat6"], rtol=1e-5, atol=1e-7)


def left_eye(lid_gap: float, iris_x: float) -> np.ndarray:
    """(478, 3) points: a 10-px-wide left eye along x (outer corner at x = 0), lids
    `lid_gap` apart, the iris at (iris_x, 0); every other point at the origin."""
    points = np.zeros((N_POINTS, 3), np.float32)
    points[LEFT_CORNERS[0]], points[LEFT_CORNERS[1]] = (0, 0, 0), (10, 0, 0)
    for k, (lower, upper) in enumerate(LEFT_LID_PAIRS):
        points[lower], points[upper] = (3 + 2 * k, lid_gap / 2, 0), (3 + 2 * k, -lid_gap / 2, 0)
    points[LEFT_IRIS] = (iris_x, 0, 0)
    return points


def test_openness_is_the_lid_gaps_over_the_width_and_scale_free():
    openness, _ = eye_attributes(left_eye(lid_gap=2.0, iris_x=5.0))
    assert openness[0, 0] == pytest.approx(3 * 2.0 / 10)
    scaled, _ = eye_attributes(left_eye(lid_gap=2.0, iris_x=5.0) * 3)
    assert scaled[0, 0] == pytest.approx(openness[0, 0])
    assert eye_attributes(left_eye(lid_gap=0.5, iris_x=5.0))[0][0, 0] < openness[0, 0]


def test_ball_move_is_zero_centred_and_points_along_the_gaze():
    _, centred = eye_attributes(left_eye(2.0, iris_x=5.0))
    assert np.abs(centred[0, 0::2]).max() < 1e-6  # left eye: columns Lx, Ly, Lz
    _, inward = eye_attributes(left_eye(2.0, iris_x=7.0))  # 2 px towards the inner corner
    # unit(ball - centre) - unit(outer - inner) = (1, 0) - (-1, 0) = (2, 0), times 2 px
    np.testing.assert_allclose(inward[0, 0::2], [4.0, 0.0, 0.0], atol=1e-5)
    # As upstream: towards the outer corner both unit vectors agree, and the move is 0.
    _, outward = eye_attributes(left_eye(2.0, iris_x=3.0))
    np.testing.assert_allclose(outward[0, 0::2], [0.0, 0.0, 0.0], atol=1e-5)


def test_mediapipe_landmarks_become_pixels():
    landmarks = [SimpleNamespace(x=0.5, y=0.25, z=-0.1)] * N_POINTS
    points = mesh_points(landmarks, width=512, height=256)
    assert points.shape == (N_POINTS, 3)
    np.testing.assert_allclose(points[0], [256.0, 64.0, -51.2], rtol=1e-6)
    with pytest.raises(ValueError, match="478"):
        mesh_points(landmarks[:468], 512, 512)  # without iris refinement: no eyeballs


class StandInMesh:
    """Stands in for MediaPipe's FaceLandmarker: fixed points, scaled to the crop."""

    def __init__(self, points01: np.ndarray | None):
        self.points01, self.seen = points01, []

    def points(self, image_rgb):
        self.seen.append(image_rgb.shape)
        if self.points01 is None:
            return None
        h, w = image_rgb.shape[:2]
        return self.points01 * np.array([w, h, w], np.float32)


def tiny_pipeline(face_mesh) -> DittoPipeline:
    return DittoPipeline({"preset": "tiny", "networks": NARROW_RENDERER}, device="cpu", seed=0, face_mesh=face_mesh)


@pytest.mark.oracle
def test_prepare_conditions_lmdm_on_the_measured_eyes(oracle):
    points01 = np.load(oracle / "ditto" / "image_geometry.npz")["lmk478"][0]
    mesh = StandInMesh(points01)
    persona = tiny_pipeline(mesh).prepare(PersonaMedia([face_like_portrait(160)]), "p")
    assert mesh.seen and mesh.seen[0][0] == mesh.seen[0][1]  # run on the square source crop
    expected_open, expected_ball = eye_attributes(points01 * np.array([512, 512, 512], np.float32))
    cond = persona.features[MODE].cond
    np.testing.assert_allclose(cond.eye_open, expected_open[0], rtol=1e-6)
    np.testing.assert_allclose(cond.eye_ball, expected_ball[0], rtol=1e-5, atol=1e-6)
    assert not [w for w in persona.features["warnings"] if w["code"] == "neutral_eyes"]


@pytest.mark.parametrize("mesh, why", [(None, "no face mesh runner"), (StandInMesh(None), "found no face")])
def test_without_a_face_mesh_the_eyes_are_neutral_and_a_warning_says_why(mesh, why):
    persona = tiny_pipeline(mesh).prepare(PersonaMedia([face_like_portrait(160)]), "p")
    np.testing.assert_allclose(persona.features[MODE].cond.eye_open, DEFAULT_EYE_OPEN)
    assert not persona.features[MODE].cond.eye_ball.any()
    warning = next(w for w in persona.features["warnings"] if w["code"] == "neutral_eyes")
    assert why in warning["message"]


def test_without_mediapipe_the_face_mesh_is_absent_not_an_error(tmp_path, monkeypatch):
    import builtins

    from models.ditto.face_mesh import load_face_mesh

    real_import = builtins.__import__

    def no_mediapipe(name, *args, **kwargs):
        if name.startswith("mediapipe"):
            raise ImportError("No module named 'mediapipe'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mediapipe)
    assert load_face_mesh(tmp_path / "face_landmarker.task") is None
