"""ONNX export of LivePortrait's W and G (models/liveportrait/export.py), run on onnxruntime's
CPU provider against PyTorch, tiny networks.

Tolerances (absolute, float32) from what was measured on 2 cores: W's `out` 2.3e-6 (its
values up to about 0.4), G's image 7.7e-7; both checked at 1e-4. The batch axis is dynamic:
exported at batch 2, run at batch 3.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.liveportrait import export
from models.liveportrait.config import LivePortraitConfig
from models.liveportrait.loading import LivePortraitNetworks

TOL = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    config = LivePortraitConfig.tiny()
    nets = LivePortraitNetworks.random(config)
    return config, nets, export.export_renderer(nets, config, tmp_path_factory.mktemp("onnx"))


def test_warping_is_opset_20_with_5d_grid_sample(exported):
    import onnx

    _, _, paths = exported
    model = onnx.load(str(paths["warping"]))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [export.OPSET]
    # Both of W's samplings (the volume per keypoint proposal, then along the blended flow) are 5-D.
    grid_samples = [n for n in model.graph.node if n.op_type == "GridSample"]
    assert len(grid_samples) == 2
    assert all({a.name: a for a in n.attribute}["mode"].s == b"linear" for n in grid_samples)


def test_onnxruntime_matches_pytorch(exported):
    config, nets, paths = exported
    volume, kp_driving, kp_source = export.warping_inputs(config, batch=3, seed=1)
    with torch.no_grad():
        want_out = nets.warping(volume, kp_driving=kp_driving, kp_source=kp_source)["out"]
        want_image = nets.generator(want_out)
    (out,) = export.onnx_session(paths["warping"]).run(
        None, {"feature_3d": volume.numpy(), "kp_driving": kp_driving.numpy(), "kp_source": kp_source.numpy()})
    (image,) = export.onnx_session(paths["generator"]).run(None, {"feature": want_out.numpy()})
    assert out.shape == (3, config.spade.input_channels, 64, 64) and image.shape == (3, 3, 512, 512)
    np.testing.assert_allclose(out, want_out.numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(image, want_image.numpy(), rtol=0, atol=TOL)
    assert np.abs(want_out.numpy()).max() > 0.1  # a real comparison, not of zeros


def test_export_command_writes_both_files(tmp_path, capsys):
    export.main([str(tmp_path), "--config", "tiny"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generator.onnx", "warping.onnx"]
    assert "warping:" in capsys.readouterr().out
