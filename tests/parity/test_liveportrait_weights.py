"""The liveportrait mode's files: the CLI's check and fetch, loading from a given cache,
and the pipeline built from JSON options as the graph builds it.

`write_liveportrait_cache` writes seeded networks of any config and the ONNX
stand-ins of the face models at the official paths of an HF cache; the graph
test uses it too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.base import SAMPLES_PER_FRAME, Controls, PersonaMedia, PipelineError
from models.face import files as face_files
from models.liveportrait import loading as lp
from models.liveportrait.config import LivePortraitConfig
from models.liveportrait.stitching_retargeting import official_state_dict
from models.weights import missing
from tests.hf_layout import write_bytes, write_torch

INSIGHTFACE = "InsightFace model zoo: non-commercial research use only"
OFFICIAL_NAMES = [
    "liveportrait/base_models/appearance_feature_extractor.pth",
    "liveportrait/base_models/motion_extractor.pth",
    "liveportrait/base_models/warping_module.pth",
    "liveportrait/base_models/spade_generator.pth",
    "liveportrait/retargeting_models/stitching_retargeting_module.pth",
    "insightface/models/buffalo_l/det_10g.onnx",
    "insightface/models/buffalo_l/2d106det.onnx",
    "liveportrait/landmark.onnx",
]
TWO_FACES = [([150, 100, 330, 330], 0.9), ([20, 20, 80, 90], 0.8)]  # detector input pixels (512²)


def write_network_files(cache: Path, config: LivePortraitConfig, seed: int = 0, mouth_gain: float | None = None) -> None:
    """The five networks of `config`, freshly initialised from `seed`, in the official files' layout
    (G with weight_orig/u/v, S as the three nested `module.`-prefixed dicts).

    mouth_gain: hand-set the lip MLP so the lip control moves only the mouth keypoint, down
    by mouth_gain·c_d_lip (a random lip MLP moves every keypoint a little)."""
    torch.manual_seed(seed)
    nets = lp.LivePortraitNetworks.random(config)
    if mouth_gain is not None:
        from tests.parity.test_liveportrait_pipeline import MOUTH_KP, open_mouth_lip_mlp

        open_mouth_lip_mlp(nets.stitching.lip)
        with torch.no_grad():
            nets.stitching.lip.mlp[4].weight[MOUTH_KP * 3 + 1, 0] = mouth_gain
    for file, module in [(lp.APPEARANCE_FEATURE_EXTRACTOR, nets.appearance), (lp.MOTION_EXTRACTOR, nets.motion),
                         (lp.WARPING_MODULE, nets.warping), (lp.SPADE_GENERATOR, nets.generator)]:
        write_torch(cache, file.repo_id, file.filename, module.state_dict())
    write_torch(cache, lp.HF_REPO, lp.STITCHING_RETARGETING.filename, official_state_dict(nets.stitching))


def write_face_files(cache: Path, faces=TWO_FACES) -> None:
    """ONNX stand-ins of det_10g, 2d106det and landmark.onnx (tests/face_onnx_models.py)."""
    pytest.importorskip("onnx", reason="the stand-in face models are built with the `onnx` package")
    from tests import face_onnx_models as fm

    for file, data in [(face_files.DETECTOR, fm.detector_model(faces)),
                       (face_files.LANDMARKS_106, fm.landmarks106_model()),
                       (face_files.LANDMARKS_203, fm.landmarks203_model())]:
        write_bytes(cache, file.repo_id, file.filename, data)


def write_liveportrait_cache(cache: Path, config: LivePortraitConfig, seed: int = 0, faces=TWO_FACES,
                             mouth_gain: float | None = None) -> Path:
    """Every file the liveportrait mode needs, at its official path in the HF cache `cache`."""
    write_network_files(cache, config, seed, mouth_gain)
    write_face_files(cache, faces)
    return cache


def test_the_mode_needs_exactly_the_official_files_with_their_licences():
    files = lp.weight_files()
    assert [f.filename for f in files] == OFFICIAL_NAMES
    assert {f.repo_id for f in files} == {"KwaiVGI/LivePortrait"}
    licences = {f.filename: f.licence for f in files}
    assert licences["insightface/models/buffalo_l/det_10g.onnx"] == INSIGHTFACE
    assert licences["insightface/models/buffalo_l/2d106det.onnx"] == INSIGHTFACE
    assert all(licences[n].startswith("MIT") for n in OFFICIAL_NAMES if "insightface" not in n)


def test_cli_check_lists_what_is_missing_with_licences(hf_cache, capsys):
    from models.cli import main

    write_network_files(hf_cache, LivePortraitConfig.tiny())
    assert main(["weights", "check", "liveportrait"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "liveportrait: 3 of 8 missing" and len(lines) == 9  # every file, with its state
    assert [line for line in lines if line.startswith("  missing")] == [
        f"  missing KwaiVGI/LivePortrait:insightface/models/buffalo_l/det_10g.onnx ({INSIGHTFACE})",
        f"  missing KwaiVGI/LivePortrait:insightface/models/buffalo_l/2d106det.onnx ({INSIGHTFACE})",
        "  missing KwaiVGI/LivePortrait:liveportrait/landmark.onnx (MIT (LivePortrait))",
    ]
    assert "  ok      KwaiVGI/LivePortrait:liveportrait/base_models/warping_module.pth (MIT (LivePortrait))" in lines
    write_face_files(hf_cache)
    assert main(["weights", "check", "liveportrait"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "liveportrait: ok" and all(line.startswith("  ok") for line in lines[1:])


def test_cli_fetch_downloads_exactly_the_files_with_allow_patterns(hf_cache, monkeypatch, capsys):
    import huggingface_hub

    from models.cli import main

    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, cache_dir=None):
        calls.append((repo_id, revision, list(allow_patterns), cache_dir))
        return str(hf_cache)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("LOCKN_HF_REVISION_KWAIVGI_LIVEPORTRAIT", "0123abc")
    assert main(["weights", "fetch", "liveportrait"]) == 1  # the stand-in downloaded nothing: check says so
    assert calls == [("KwaiVGI/LivePortrait", "0123abc", OFFICIAL_NAMES, None)]
    assert capsys.readouterr().out.startswith("liveportrait: fetching 8 file(s)\nliveportrait: 8 of 8 missing\n")


def test_pipeline_from_json_options_loads_from_the_given_cache(hf_cache, tmp_path):
    """As the backend deployment builds it: JSON options, weights from a cache that is not the standard one."""
    from deployments.backend import BackendDeployment
    from models.modes import build_pipeline

    cache = write_liveportrait_cache(tmp_path / "other-cache", LivePortraitConfig.tiny())
    options = {"config": {"networks": "tiny", "idle": {"pitch": [], "yaw": [], "roll": []}},
               "device": "cpu", "cache_dir": str(cache), "cuda_memory_fraction": 0.5}
    assert len(missing(lp.weight_files())) == 8  # the standard (empty) cache has none of them
    assert missing(lp.weight_files(), cache_dir=cache) == []
    # The mode's files hook, given the backend's options, looks where the backend loads from.
    assert missing(lp.weight_files(**options)) == []
    assert [f.filename for f in lp.weight_files(**options)] == OFFICIAL_NAMES
    backend = BackendDeployment("liveportrait", str(tmp_path / "personas"), options, pipeline_factory=build_pipeline)
    pipeline = backend.pipeline
    assert backend.memory_fraction is None  # no CUDA here: nothing to cap
    assert pipeline.networks.device.type == "cpu" and pipeline.config.idle.yaw == ()
    assert pipeline.networks.warping.config == LivePortraitConfig.tiny().warping

    portrait = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    persona = pipeline.prepare(PersonaMedia([portrait]), "p")
    assert [w["code"] for w in persona.features["warnings"]] == ["several_faces"]
    frames, _ = pipeline.render(persona, pipeline.start(persona, Controls()),
                                np.zeros(2 * SAMPLES_PER_FRAME, np.float32), Controls())
    assert frames.shape == (2, 256, 256, 3)


def test_bad_options_are_clear_errors():
    from models.liveportrait.pipeline import LivePortraitPipeline, pipeline_config

    with pytest.raises(ValueError, match="unknown config field.*max_batch"):
        pipeline_config({"max_batchh": 4})
    with pytest.raises(ValueError, match="config.networks.spade.num_middle_blocks must be an integer"):
        pipeline_config({"networks": {"preset": "tiny", "spade": {"num_middle_blocks": 1.5}}})
    with pytest.raises(ValueError, match="unknown network preset 'huge'"):
        pipeline_config("huge")
    assert pipeline_config({"lip": {"voice_band_hz": [300, 3400]}}).lip.voice_band_hz == (300, 3400)
    if not torch.cuda.is_available():
        with pytest.raises(PipelineError, match="no CUDA device"):
            LivePortraitPipeline(device="cuda")


def test_memory_cap_is_set_on_the_current_cuda_device(monkeypatch):
    from deployments.backend import cap_cuda_memory

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: calls.append((f, d)))
    assert cap_cuda_memory(0.2) == 0.2 and calls == [(0.2, 0)]
    with pytest.raises(ValueError, match="cuda_memory_fraction"):
        cap_cuda_memory(1.5)
