"""The up-front face check of an upload (`check_face_for=<mode>`), with the ONNX stand-ins
of the official face models (tests/face_onnx_models.py) in a local HF cache."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from deployments.api.errors import ServiceError
from deployments.config import AppArgs
from deployments.inputs.face_check import FaceChecks
from models.face.check import PortraitFaceCheck, detector_file
from tests.parity.test_liveportrait_weights import TWO_FACES, write_face_files


def portrait(side: int = 512) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (120, 100, 90)).save(buf, "PNG")
    return buf.getvalue()


def checks(tmp_path, faces) -> FaceChecks:
    cache = tmp_path / "hf-cache"
    write_face_files(cache, faces)
    return FaceChecks(AppArgs.model_validate({
        "data_dir": str(tmp_path / "data"),
        "backends": {"liveportrait": {"num_gpus": 0.25, "options": {"cache_dir": str(cache)}}}}))


def test_a_portrait_with_a_face_passes_with_the_detectors_warnings(tmp_path):
    result = checks(tmp_path, TWO_FACES).check("liveportrait", portrait())
    assert result["checked"] and result["mode"] == "liveportrait"
    assert [w["code"] for w in result["warnings"]] == ["several_faces"]


def test_a_portrait_without_a_face_is_refused_with_no_face(tmp_path):
    with pytest.raises(ServiceError) as refused:
        checks(tmp_path, []).check("liveportrait", portrait())
    assert refused.value.code == "no_face" and "liveportrait" in refused.value.reason


def test_a_face_too_small_is_refused(tmp_path):
    with pytest.raises(ServiceError) as refused:
        checks(tmp_path, [([20, 20, 60, 60], 0.9)]).check("liveportrait", portrait())
    assert refused.value.code == "face_too_small"


def test_without_the_detector_file_or_for_a_mode_without_one_the_check_is_skipped(tmp_path):
    args = AppArgs.model_validate({"data_dir": str(tmp_path / "data"),
                                   "backends": {"liveportrait": {"options": {"cache_dir": str(tmp_path / "empty")}}}})
    result = FaceChecks(args).check("liveportrait", portrait())
    assert not result["checked"] and "not on this machine" in result["reason"]
    assert not FaceChecks(args).check("musetalk", portrait())["checked"]
    assert detector_file("still") is None and detector_file("ditto").filename.endswith("det_10g.onnx")
    with pytest.raises(ValueError):
        PortraitFaceCheck("musetalk")
