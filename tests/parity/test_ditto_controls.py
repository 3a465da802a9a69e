"""Ditto controls (emotion tags, intensity, pose) and the safe cfg pickle reader."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from models.base import EMOTIONS, Controls
from models.ditto.config import (
    DittoFiles,
    StreamConfig,
    UnsafePickleError,
    lmdm_config_from_cfg,
    read_cfg_pkl,
    stream_config_from_cfg,
)
from models.ditto.emotion import CLASSES, class_vector, controls_to_ditto, emotion_vector


def test_class_order_and_reference_vectors():
    assert CLASSES == ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise", "contempt")
    v = class_vector(4)
    assert v.argmax() == 4 and abs(v.sum() - 1) < 1e-6 and v[4] > 0.99


@pytest.mark.parametrize("tag", EMOTIONS)
def test_every_session_tag_maps(tag):
    v = emotion_vector(tag, 1.0)
    assert v.shape == (8,) and abs(v.sum() - 1) < 1e-5 and (v >= 0).all()


def test_tags_intensity_and_mixes():
    np.testing.assert_array_equal(emotion_vector("surprised"), class_vector(CLASSES.index("surprise")))
    np.testing.assert_allclose(emotion_vector("happy", 0.0), class_vector(4))
    half = emotion_vector("angry", 0.5)
    np.testing.assert_allclose(half, 0.5 * class_vector(0) + 0.5 * class_vector(4), atol=1e-7)
    assert emotion_vector("thinking").argmax() == CLASSES.index("neutral")
    with pytest.raises(ValueError):
        emotion_vector("bored")


def test_controls_to_ditto():
    emo, pose = controls_to_ditto(Controls(emotion="sad", intensity=0.8, head_yaw_deg=5.0))
    assert emo.argmax() == CLASSES.index("sad")
    assert pose == {"delta_yaw": -5.0}  # to the viewer's right: a negative LivePortrait yaw


def _cfg() -> dict:
    return {
        "base_cfg": {"hubert_cfg": {"model_path": "aux_models/hubert_streaming_fix_kv.onnx", "device": "cuda"}},
        "audio2motion_cfg": {"model_path": "models/lmdm_v0.4_hubert.pth", "motion_feat_dim": 265,
                             "audio_feat_dim": 1103, "seq_frames": 80, "use_emo": True},
        "default_kwargs": {"overlap_v2": 75, "fix_kp_cond": 1, "fix_kp_cond_dim": [0, 202],
                           "sampling_timesteps": 10, "smo_k_d": 3, "online_mode": True,
                           "v_min_max_for_clip": np.zeros((4, 265), np.float32),
                           "emo": np.full((600, 8), 0.125, np.float32)},
    }


def test_restricted_reader_takes_plain_data():
    cfg = read_cfg_pkl(pickle.dumps(_cfg()))
    assert cfg["default_kwargs"]["v_min_max_for_clip"].shape == (4, 265)
    s = stream_config_from_cfg(cfg)
    assert s == StreamConfig(overlap=75)
    assert lmdm_config_from_cfg(cfg).cond_dim == 1103


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_reader_refuses_globals(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"default_kwargs": {"x": _Evil()}}))
    with pytest.raises(UnsafePickleError, match="system"):
        read_cfg_pkl(path)


def test_weight_files_are_exactly_dittos():
    files = DittoFiles().all()
    assert len({f.filename for f in files}) == len(files) == 12
    assert all(f.repo_id == "digital-avatar/ditto-talkinghead" and f.licence for f in files)


def test_clip_rows_from_cfg():
    from models.ditto.config import clip_from_cfg

    assert clip_from_cfg(read_cfg_pkl(pickle.dumps(_cfg()))).shape == (2, 265)
    assert clip_from_cfg({}) is None


def test_weight_files_hook_takes_the_backends_options(tmp_path):
    from models.ditto.config import weight_files
    from models.modes import MODES, mode_status

    assert weight_files(config="tiny") == [] and weight_files(config={"preset": "tiny", "max_batch": 5}) == []
    files = weight_files(cache_dir=str(tmp_path), device="cpu", seed=0)
    assert len(files) == 12 and all(f.cache_dir == str(tmp_path) for f in files)
    assert mode_status(MODES["ditto"], {"config": "tiny", "device": "cpu"}).available
    status = mode_status(MODES["ditto"], {"cache_dir": str(tmp_path)})
    assert not status.available and status.fetch_command == "lockn-bod weights fetch ditto"


def test_pipeline_config_from_json():
    from models.ditto.lmdm import LMDMConfig
    from models.ditto.pipeline import pipeline_config

    cfg = pipeline_config({"preset": "tiny", "stream": {"overlap": 70}, "max_batch": 5, "idle": {"lip_release": 0.5},
                           "networks": {"preset": "tiny", "warping": {"block_expansion": 2}}})
    assert cfg.lmdm == LMDMConfig.tiny() and cfg.stream.overlap == 70 and cfg.stream.sampling_steps == 10
    assert cfg.max_batch == 5 and cfg.idle.lip_release == 0.5 and cfg.networks.warping.block_expansion == 2
    assert pipeline_config(None).stream.overlap == 75 and pipeline_config("official").lmdm == LMDMConfig()
    with pytest.raises(ValueError, match="unknown"):
        pipeline_config({"preset": "tiny", "overlapp": 3})
    with pytest.raises(ValueError, match="preset"):
        pipeline_config("huge")


def test_official_pipeline_without_files_names_the_fetch_command(tmp_path):
    from models.base import WeightsMissingError
    from models.ditto.pipeline import DittoPipeline

    with pytest.raises(WeightsMissingError, match="lockn-bod weights fetch ditto"):
        DittoPipeline("official", device="cpu", cache_dir=str(tmp_path))
