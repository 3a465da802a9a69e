"""The `compile` option (models/compiled.py): torch.compile of the per-frame networks.

Unit tier (no compiling: `nn.Module.compile` is lazy, so these cost no inductor time): the
option's values, that off touches nothing, that every pipeline takes the option and
compiles the networks it names, and the CPU fallback of "reduce-overhead".

Slow tier: compiled against eager on CPU, tiny networks, inductor ("default"), tolerances
from what was measured (docs/modes/liveportrait.md#compiled-and-onnx):

- LivePortrait: one 5-frame `render` of the tiny pipeline (W, G and the MLPs compiled),
  uint8 frames at most 1 off (measured: 0.008 % of values off by 1); then W+G alone at the
  chunk's shapes, W's `out` and G's image within 1e-4 (measured 1.9e-7 and 1.1e-5). Ditto's
  renderer is the same networks through the same `warp_decode`, so this covers it too;
- MuseTalk's UNet step and VAE decode: within 1e-4 (measured 1.7e-6 and 6.1e-6).

Compiling dominates: on the 2-core build machine, cold inductor cache, the LivePortrait
test took 34-43 s and the MuseTalk one 43-57 s (about twice that with the cores busy). Inductor
needs a C++ compiler; without one the slow tests skip and say so.
"""
from __future__ import annotations

import copy
import logging
import os
import shutil

import numpy as np
import pytest
import torch

from models.base import SAMPLES_PER_FRAME, Controls, PersonaMedia
from models.compiled import MODES, Compiled, compile_mode, compile_networks, per_frame_networks, records_cuda_graphs
from models.liveportrait.config import LivePortraitConfig
from models.liveportrait.decode import warp_decode
from models.liveportrait.loading import LivePortraitNetworks
from models.liveportrait.pipeline import LivePortraitPipeline, LivePortraitPipelineConfig, pipeline_config

CHUNK = 5  # frames of a render chunk (serve_config.yaml chunk_frames)
FRAME_TOL = 1e-4  # W's out and G's image in (0, 1); measured 1.9e-7 and 1.1e-5
LATENT_TOL = 1e-4  # UNet output and VAE decode; measured 1.7e-6 and 6.1e-6
needs_compiler = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None,
    reason="torch.compile's inductor needs a C++ compiler (g++ or $CXX) on CPU")


def compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def tiny_liveportrait(compile: str | None = None) -> LivePortraitPipeline:
    """The tiny pipeline with the real tiny W and G, seeded, and a fixed face."""
    from tests import face_onnx_models as fm
    from tests.parity.test_liveportrait_pipeline import FixedFace, unit_face

    torch.manual_seed(0)
    config = LivePortraitConfig.tiny()
    face = FixedFace(unit_face(fm.face_points_106()), unit_face(fm.face_points_203()))
    nets = LivePortraitNetworks.random(config)
    return LivePortraitPipeline(LivePortraitPipelineConfig(networks=config), networks=nets, face=face, compile=compile)


# ---- unit tier: the option ----------------------------------------------------------------


def test_compile_mode_values():
    assert [compile_mode(v) for v in (None, False, "off", "none")] == [None] * 4
    assert compile_mode(True) == "default"
    assert [compile_mode(m) for m in MODES[1:]] == ["default", "reduce-overhead", "max-autotune"]
    with pytest.raises(ValueError, match="known: off, default, reduce-overhead, max-autotune"):
        compile_mode("fast")


def test_off_touches_nothing():
    nets = LivePortraitNetworks.random(LivePortraitConfig.tiny())
    done = compile_networks(nets, "off")
    assert done.mode is None and done.networks == ()
    assert not any(compiled(m) for m in nets.modules().values())
    pipeline = tiny_liveportrait()  # the default: off, eager as before the option
    assert pipeline.config.compile is None and pipeline.compiled.mode is None
    assert not any(compiled(m) for m in pipeline.networks.modules().values())


def test_liveportrait_compiles_its_per_frame_networks_and_falls_back_on_cpu(caplog):
    with caplog.at_level(logging.WARNING, logger="models.compiled"):
        pipeline = tiny_liveportrait("reduce-overhead")
    nets = pipeline.networks
    assert pipeline.compiled.asked == "reduce-overhead" and pipeline.compiled.mode == "default"
    assert not pipeline.compiled.cuda_graphs and not records_cuda_graphs(pipeline)  # CPU: no CUDA graphs
    assert "need CUDA" in caplog.text
    assert pipeline.compiled.networks == ("warping", "generator", "stitching.stitching", "stitching.lip",
                                          "stitching.eye")
    assert compiled(nets.warping) and compiled(nets.generator)
    assert all(compiled(m) for m in (nets.stitching.stitching, nets.stitching.lip, nets.stitching.eye))
    assert not compiled(nets.appearance) and not compiled(nets.motion)  # once per persona: eager
    # The config dict takes it too (serve_config.yaml `config: {compile: ...}`).
    assert pipeline_config({"networks": "tiny", "compile": "default"}).compile == "default"


def test_musetalk_compiles_the_unet_and_the_vae_decoder():
    from models.musetalk.pipeline import MuseTalkPipeline

    pipeline = MuseTalkPipeline({"preset": "tiny", "compile": "default"}, device="cpu", seed=0)
    assert pipeline.compiled.networks == ("unet", "vae.decoder")
    assert compiled(pipeline.nets.unet) and compiled(pipeline.nets.vae.decoder)
    assert not compiled(pipeline.nets.vae.encoder)  # once per persona (photoreal: per speaking frame)
    assert MuseTalkPipeline("tiny", device="cpu", compile="off").compiled.networks == ()


def test_ditto_compiles_its_renderer():
    from models.ditto.pipeline import DittoPipeline

    pipeline = DittoPipeline("tiny", device="cpu", compile="default")
    assert pipeline.config.compile == "default" and "warping" in pipeline.compiled.networks
    assert compiled(pipeline.networks.warping) and compiled(pipeline.networks.generator)
    assert compiled(pipeline.networks.stitching.stitching)


def test_photoreal_passes_the_option_to_both_pipelines(monkeypatch):
    from models.photoreal import pipeline as photoreal

    seen = {}

    class Recorder:
        lookahead_frames = 3

        def __init__(self, name):
            self.name = name

        def __call__(self, *args, compile=None, **kwargs):
            seen[self.name] = compile
            return self

    monkeypatch.setattr(photoreal, "LivePortraitPipeline", Recorder("liveportrait"))
    monkeypatch.setattr(photoreal, "MuseTalkPipeline", Recorder("musetalk"))
    photoreal.PhotorealPipeline("tiny", compile="reduce-overhead")
    assert seen == {"liveportrait": "reduce-overhead", "musetalk": "reduce-overhead"}


def test_which_pipelines_record_cuda_graphs():
    """The backend gives such a pipeline one thread (deployments/backend.py); a composite
    answers for its parts."""
    from types import SimpleNamespace

    graphs, plain = Compiled("reduce-overhead", "reduce-overhead", ("unet",), True), Compiled(None, None, ())
    assert records_cuda_graphs(SimpleNamespace(compiled=graphs))
    assert not records_cuda_graphs(SimpleNamespace(compiled=plain)) and not records_cuda_graphs(object())
    assert records_cuda_graphs(SimpleNamespace(compiled=(plain, graphs)))
    assert not records_cuda_graphs(SimpleNamespace(compiled=(plain, plain)))


def test_per_frame_networks_of_a_module_or_a_mapping():
    linear = torch.nn.Linear(2, 2)
    assert per_frame_networks(linear) == {"Linear": (linear, False)}
    assert per_frame_networks({"a": linear}) == {"a": (linear, False)}
    with pytest.raises(TypeError):
        per_frame_networks(object())


# ---- slow tier: compiled against eager ------------------------------------------------------


def speech(n_frames: int) -> np.ndarray:
    t = np.arange(n_frames * SAMPLES_PER_FRAME) / 16000
    return (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)


@pytest.mark.slow
@needs_compiler
def test_compiled_liveportrait_render_chunk_matches_eager():
    """One 5-frame render chunk through the compiled tiny pipeline (W, G and the MLPs),
    against the same networks eager; then W+G alone at the chunk's shapes (no recompile)."""
    eager, fast = tiny_liveportrait(), tiny_liveportrait("default")  # the same seeded weights
    for a, b in zip(eager.networks.warping.parameters(), fast.networks.warping.parameters()):
        assert torch.equal(a, b)
    portrait = np.random.default_rng(0).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    persona = eager.prepare(PersonaMedia([portrait]), "p1")
    controls = Controls(emotion="happy")
    want, _ = eager.render(persona, eager.start(persona, controls), speech(CHUNK), controls)
    got, _ = fast.render(persona, fast.start(persona, controls), speech(CHUNK), controls)
    assert got.shape == want.shape == (CHUNK, 360, 480, 3)
    assert np.abs(got.astype(int) - want).max() <= 1

    source = persona.features["liveportrait"].motion
    x_d = source.x_s + 0.02 * torch.randn(CHUNK, 21, 3, generator=torch.Generator().manual_seed(1))
    want = warp_decode(eager.networks, source.f_s, source.x_s, x_d)
    got = warp_decode(fast.networks, source.f_s, source.x_s, x_d)
    torch.testing.assert_close(got["out"], want["out"], rtol=0, atol=FRAME_TOL)
    torch.testing.assert_close(got["image"], want["image"], rtol=0, atol=FRAME_TOL)


@pytest.mark.slow
@needs_compiler
def test_compiled_musetalk_step_matches_eager():
    """The UNet step and the VAE decode, batch 2, on a shallower cut of the tiny preset's
    networks (two levels instead of four, one layer a block: the same diffusers blocks,
    cross-attention included, at half the compile time: the full tiny pair took 116 s)."""
    from diffusers import AutoencoderKL

    from models.musetalk import vae as vae_ops
    from models.musetalk.config import TINY_UNET, TINY_VAE
    from models.musetalk.inference import MuseTalkNets, predict_latents
    from models.musetalk.unet import PositionalEncoding, build_unet

    torch.manual_seed(0)
    unet = build_unet({**TINY_UNET, "block_out_channels": [16, 32], "layers_per_block": 1,
                       "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                       "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]})
    vae = AutoencoderKL(**{**TINY_VAE, "block_out_channels": [8, 16], "down_block_types": ["DownEncoderBlock2D"] * 2,
                           "up_block_types": ["UpDecoderBlock2D"] * 2})
    eager = MuseTalkNets(unet.eval(), vae.eval(), PositionalEncoding(384))
    fast = copy.deepcopy(eager)
    compile_networks(fast, "default")
    g = torch.Generator().manual_seed(1)
    latents, prompts = torch.randn(2, 8, 32, 32, generator=g), torch.randn(2, 50, 384, generator=g)
    want, got = predict_latents(eager, latents, prompts), predict_latents(fast, latents, prompts)
    torch.testing.assert_close(got, want, rtol=0, atol=LATENT_TOL)
    torch.testing.assert_close(vae_ops.decode(fast.vae, want), vae_ops.decode(eager.vae, want), rtol=0, atol=LATENT_TOL)
