"""Face detection, landmarks and persona errors, through real onnxruntime sessions over
tiny stand-in ONNX models with the official names and shapes (tests/face_onnx_models.py)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the stand-in face models are built with the `onnx` package")

from models.base import PersonaError, WeightsMissingError  # noqa: E402
from models.face import files  # noqa: E402
from models.face.analysis import FaceAnalyzer  # noqa: E402
from models.face.crop import anchor_points  # noqa: E402
from models.face.detection import FaceDetector, nms  # noqa: E402
from models.face.onnx_session import open_session  # noqa: E402
from tests import face_onnx_models as fm  # noqa: E402
from tests.hf_layout import write_bytes  # noqa: E402


def session(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return open_session(path, prefer_cuda=False, threads=1)


def analyzer(tmp_path, faces):
    return FaceAnalyzer(
        session(tmp_path, "det.onnx", fm.detector_model(faces)),
        session(tmp_path, "106.onnx", fm.landmarks106_model()),
        session(tmp_path, "203.onnx", fm.landmarks203_model()),
    )


def test_detector_decodes_box_and_keypoints(tmp_path):
    box = [180.0, 150.0, 340.0, 330.0]
    det = FaceDetector(session(tmp_path, "det.onnx", fm.detector_model([(box, 0.9)])))
    faces = det.detect(np.zeros((512, 512, 3), np.uint8))
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, box, atol=1e-3)
    assert faces[0].score == pytest.approx(0.9)
    np.testing.assert_allclose(faces[0].keypoints[2], [180 + 0.5 * 160, 150 + 0.55 * 180], atol=1e-3)


def test_detector_undoes_the_letterbox_scale(tmp_path):
    # A 1024×768 image is letterboxed at scale 0.5: boxes come back doubled.
    det = FaceDetector(session(tmp_path, "det.onnx", fm.detector_model([([100, 100, 200, 220], 0.8)])))
    faces = det.detect(np.zeros((768, 1024, 3), np.uint8))
    np.testing.assert_allclose(faces[0].box, [200, 200, 400, 440], atol=1e-3)


def test_detector_below_threshold_is_no_face(tmp_path):
    det = FaceDetector(session(tmp_path, "det.onnx", fm.detector_model([([100, 100, 200, 200], 0.1)])))
    assert det.detect(np.zeros((512, 512, 3), np.uint8)) == []


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 100, 100], [5, 5, 105, 105], [200, 200, 260, 260]], np.float32)
    keep = nms(boxes, np.array([0.5, 0.9, 0.7], np.float32), 0.4)
    assert keep == [1, 2]


def test_no_face_is_a_persona_error(tmp_path):
    with pytest.raises(PersonaError) as err:
        analyzer(tmp_path, []).analyse(np.zeros((512, 512, 3), np.uint8))
    assert err.value.code == "no_face"


def test_several_faces_use_the_largest_and_warn(tmp_path):
    small, large = [40, 40, 140, 150], [250, 180, 450, 400]
    result = analyzer(tmp_path, [(small, 0.95), (large, 0.6)]).analyse(np.zeros((512, 512, 3), np.uint8))
    np.testing.assert_allclose(result.face.box, large, atol=1e-3)
    assert [w.code for w in result.warnings] == ["several_faces"]
    assert "2 faces" in result.warnings[0].message


def test_face_too_small(tmp_path):
    with pytest.raises(PersonaError) as err:
        analyzer(tmp_path, [([100, 100, 130, 135], 0.9)]).analyse(np.zeros((512, 512, 3), np.uint8))
    assert err.value.code == "face_too_small"


def test_landmarks_land_on_the_face(tmp_path):
    box = [160.0, 140.0, 360.0, 380.0]
    result = analyzer(tmp_path, [(box, 0.9)]).analyse(np.zeros((512, 512, 3), np.uint8))
    assert result.points106.shape == (106, 2) and result.points203.shape == (203, 2)
    eyes, mouth = anchor_points(result.points106)
    centre, side = np.array([260.0, 260.0]), 240.0
    # Unit-face eyes at y = -0.2, mouth at y = +0.35 (tests/face_onnx_models.py), x centred.
    np.testing.assert_allclose(eyes, centre + [0, -0.2 * side / 2], atol=0.5)
    np.testing.assert_allclose(mouth, centre + [0, 0.35 * side / 2], atol=0.5)
    eyes203, mouth203 = anchor_points(result.points203)
    assert eyes203[1] < mouth203[1]  # upright: the 203-point refinement keeps the face's orientation


def test_official_files_load_through_the_hf_cache(hf_cache):
    with pytest.raises(WeightsMissingError, match="lockn-bod weights fetch liveportrait"):
        FaceAnalyzer.from_hf_cache("liveportrait")
    for wf, data in [
        (files.DETECTOR, fm.detector_model([([150, 150, 350, 370], 0.9)])),
        (files.LANDMARKS_106, fm.landmarks106_model()),
        (files.LANDMARKS_203, fm.landmarks203_model()),
    ]:
        write_bytes(hf_cache, wf.repo_id, wf.filename, data)
    result = FaceAnalyzer.from_hf_cache("liveportrait").analyse(np.zeros((512, 512, 3), np.uint8))
    assert result.warnings == []
