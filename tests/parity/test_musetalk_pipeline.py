"""MuseTalkPipeline on CPU with the small seeded configs and a seeded whisper."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from models.base import SAMPLES_PER_FRAME, Controls, PersonaError, PersonaMedia, Pipeline
from models.musetalk.audio import AudioConfig
from models.musetalk.face_parsing import BiSeNet
from models.musetalk.pipeline import MuseTalkCarry, MuseTalkConfig, MuseTalkPipeline, cycle_frame
from models.musetalk.weights import FACE_PARSER
from tests.hf_layout import write_torch
from tests.parity.test_musetalk_seeded import load_seeded, small_whisper_config, write_unet, write_vae, write_whisper


@pytest.fixture(scope="module")
def hf_cache_module(tmp_path_factory):
    """An offline HF cache shared by this module's tests (building the seeded files costs seconds)."""
    import huggingface_hub.constants as c

    cache = tmp_path_factory.mktemp("hf-cache")
    mp = pytest.MonkeyPatch()
    mp.setattr(c, "HF_HUB_CACHE", str(cache))
    mp.setattr(c, "HF_HUB_OFFLINE", True)
    yield cache
    mp.undo()


@pytest.fixture(scope="module")
def setup(oracle, hf_cache_module):
    """Pipeline loaded through from_pretrained from seeded files; landmarks scripted."""
    hf_cache = hf_cache_module
    write_unet(hf_cache, oracle)
    write_vae(hf_cache, oracle)
    write_whisper(hf_cache, oracle, small_whisper_config(oracle))
    seeded = load_seeded(oracle)
    write_torch(hf_cache, FACE_PARSER.repo_id, FACE_PARSER.filename, seeded.seeded_state_dict(BiSeNet(19).state_dict()))
    data = np.load(oracle / "musetalk" / "bbox_landmarks.npz")
    landmarks = data["landmarks_dwpose_float"][0]
    config = MuseTalkConfig(audio=AudioConfig(context_s=0.5, lookahead_frames=3))
    pipe = MuseTalkPipeline.from_pretrained(config, landmarks=lambda frame: (landmarks, 1.0))
    # Seeded BiSeNet labels are noise; an all-skin parse gives a deterministic jaw mask.
    pipe.parser = lambda image, mode: Image.fromarray(np.full((512, 512), 255 * (mode != "none"), np.uint8))
    portrait = np.ascontiguousarray(data["frame0_bgr"][..., ::-1])
    speech = np.load(oracle / "musetalk" / "audio_whisper_short.npz")["waveform"]
    return pipe, portrait, speech


@pytest.mark.oracle
def test_render_speech_and_silence(setup):
    pipe, portrait, speech = setup
    assert isinstance(pipe, Pipeline) and pipe.mode == "musetalk"
    persona = pipe.prepare(PersonaMedia([portrait]), "p")
    carry = pipe.start(persona, Controls())
    frames, carry = pipe.render(persona, carry, speech[: 640 * 8].copy(), Controls())
    assert frames.shape == (8 - pipe.lookahead_frames, *portrait.shape) and frames.dtype == np.uint8
    tail, carry = pipe.flush(persona, carry, Controls())
    assert len(tail) == pipe.lookahead_frames
    spoken = np.concatenate([frames, tail])
    x1, y1, x2, y2 = persona.features["boxes"][0]
    # speech changes the mouth region, never the frame outside the blending crop box
    assert (spoken[:, (y1 + y2) // 2 : y2, x1:x2] != portrait[(y1 + y2) // 2 : y2, x1:x2]).any()
    cx1, cy1, cx2, cy2 = persona.features["mask_boxes"][0]
    outside = np.ones(portrait.shape[:2], bool)
    outside[max(cy1, 0) : cy2, max(cx1, 0) : cx2] = False
    assert (spoken[:, outside] == portrait[outside]).all()

    # interrupt: the held frames are skipped undrawn; the next utterance's frames line up with its audio
    held, carry = pipe.render(persona, carry, speech[640 * 8 : 640 * 13].copy(), Controls())
    assert len(held) == 5 - pipe.lookahead_frames  # the stream goes on after a flush; the lookahead holds 3
    carry = pipe.interrupt(persona, carry, Controls())
    assert carry.audio.frames_done == carry.audio.n_seen // 640
    after, carry = pipe.render(persona, carry, speech[640 * 13 : 640 * 17].copy(), Controls())
    assert len(after) == 4 - pipe.lookahead_frames
    assert len(pipe.flush(persona, carry, Controls())[0]) == pipe.lookahead_frames

    silent, carry = pipe.render(persona, pipe.start(persona, Controls()), np.zeros(640 * 6, np.float32), Controls())
    silent_tail, _ = pipe.flush(persona, carry, Controls())
    silent = np.concatenate([silent, silent_tail])
    assert len(silent) == 6
    assert (silent == portrait).all()  # silence keeps the mouth (and all else) as the reference


def _utterance(pipe, persona, audio, chunk_frames):
    carry, out = pipe.start(persona, Controls()), []
    for s in range(0, len(audio), 640 * chunk_frames):
        frames, carry = pipe.render(persona, carry, audio[s : s + 640 * chunk_frames], Controls())
        out.append(frames)
    out.append(pipe.flush(persona, carry, Controls())[0])
    return np.concatenate(out)


@pytest.mark.oracle
@pytest.mark.slow  # several seconds of CPU: outside the unit tier
def test_speech_fades_in_and_out_of_silence(setup):
    pipe, portrait, speech = setup
    persona = pipe.prepare(PersonaMedia([portrait]), "p")
    quiet = np.zeros(640 * 6, np.float32)
    audio = np.concatenate([quiet, speech[: 640 * 10], quiet, speech[640 * 10 : 640 * 16]])
    faded = _utterance(pipe, persona, audio, 5)
    config = pipe.config
    try:
        pipe.config = replace(config, crossfade_frames=0)
        cut = _utterance(pipe, persona, audio, 5)  # generated frames switched in and out hard
    finally:
        pipe.config = config
    n = len(audio) // 640
    assert len(faded) == len(cut) == n
    spoken = [k for k in range(n) if (cut[k] != portrait).any()]
    runs = np.split(np.array(spoken), np.where(np.diff(spoken) > 1)[0] + 1)
    assert len(runs) == 2 and runs[1][-1] == n - 1  # two utterances; the second runs to the end of the audio
    for run in runs:  # weights 1/3, 2/3, 1, ..., 1, 2/3, 1/3: silence (or the audio's end) on both sides
        weights = np.minimum(np.minimum(np.arange(len(run)) + 1, np.arange(len(run))[::-1] + 1) / 3, 1)
        for k, w in zip(run, weights):
            expected = np.rint(portrait + w * (cut[k].astype(np.float32) - portrait)).astype(np.uint8)
            np.testing.assert_array_equal(faded[k], expected, err_msg=f"frame {k}, weight {w:.2f}")
    silent = sorted(set(range(n)) - set(spoken))
    assert (faded[silent] == portrait).all()
    # Another chunking: the same frames fade, by the same weights. (Streaming whisper prompts
    # themselves differ a little with the chunking, so compare against the hard cut's change.)
    faded3 = _utterance(pipe, persona, audio, 3)
    pipe.config = replace(config, crossfade_frames=0)
    try:
        cut3 = _utterance(pipe, persona, audio, 3)
    finally:
        pipe.config = config
    assert [k for k in range(n) if (cut3[k] != portrait).any()] == spoken
    for k in spoken:
        scaled = np.abs(faded[k].astype(int) - faded3[k]).max()
        assert scaled <= np.abs(cut[k].astype(int) - cut3[k]).max() + 1, f"frame {k}"


@pytest.mark.oracle
def test_idle_frames_and_no_face(setup):
    pipe, portrait, _ = setup
    persona = pipe.prepare(PersonaMedia([portrait]), "p")
    frames, carry = pipe.idle(persona, pipe.start(persona, Controls()), 5, Controls())
    assert len(frames) == 5 and (frames == portrait).all()  # the contract: idle(n) gives n frames
    landmarks = pipe.landmarks
    pipe.landmarks = lambda frame: (np.zeros((68, 2), np.float32), 0.0)
    try:
        with pytest.raises(PersonaError, match="no face"):
            pipe.prepare(PersonaMedia([portrait]), "q")
    finally:
        pipe.landmarks = landmarks


def test_detector_box_is_the_fallback():
    """Landmarks that fail the v1.5 rule (x1 < 0) fall back to the detector box when one is given."""
    from models.musetalk.testing import ellipse_landmarks

    pipe = MuseTalkPipeline("tiny")
    frame = np.zeros((120, 100, 3), np.uint8)
    landmarks, _ = ellipse_landmarks(frame)
    landmarks[0, 0] = -3.0
    pipe.landmarks = lambda f: (landmarks, 1.0, (20, 30, 80, 90))
    assert pipe._face_box(frame, 0) == (20, 30, 80, 100)  # + extra_margin 10
    pipe.landmarks = lambda f: (landmarks, 1.0)
    assert pipe._face_box(frame, 0)[0] == 0  # our own fallback: the landmarks' box inside the frame


def test_video_frames_cycle_forward_then_back():
    assert [cycle_frame(i, 3) for i in range(8)] == [0, 1, 2, 2, 1, 0, 0, 1]
    assert [cycle_frame(i, 1) for i in range(3)] == [0, 0, 0]
    assert MuseTalkCarry().cycle_index == 0


def test_tiny_pipeline_streams_200ms_chunks():
    """The file-free tiny pipeline (for graph tests): 1 s of audio in 200 ms chunks -> 25 frames."""
    pipe = MuseTalkPipeline("tiny")
    portrait = np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    persona = pipe.prepare(PersonaMedia([portrait, portrait[::-1].copy()]), "tiny")
    carry = pipe.start(persona, Controls())
    audio = (0.1 * np.random.default_rng(1).standard_normal(16000)).astype(np.float32)
    out = []
    for i in range(0, len(audio), 3200):
        frames, carry = pipe.render(persona, carry, audio[i : i + 3200], Controls())
        out.append(frames)
    frames, carry = pipe.flush(persona, carry, Controls())
    out.append(frames)
    frames = np.concatenate(out)
    assert frames.shape == (25, 96, 80, 3)
    assert carry.cycle_index == 25 % 4


def test_options_spell_the_preset_as_every_mode_does():
    """serve_config.yaml's options, as for liveportrait and ditto: config, device, seed."""
    from models.modes import MODES, build_pipeline, mode_status
    from models.musetalk.config import pipeline_config, weight_files

    assert weight_files(config="tiny") == [] and weight_files(config={"preset": "tiny", "batch_size": 5}) == []
    assert len(weight_files(config={"batch_size": 5})) == len(weight_files())
    assert mode_status(MODES["musetalk"], {"config": "tiny"}).available
    pipe = build_pipeline("musetalk", config={"preset": "tiny", "batch_size": 5, "audio": {"context_s": 1.0}}, seed=1)
    assert isinstance(pipe, MuseTalkPipeline) and pipe.config.batch_size == 5 and pipe.config.audio.context_s == 1.0
    assert pipe.config.device == "cpu" and pipe.nets.dtype == torch.float32  # tiny: on the CPU unless told
    same = MuseTalkPipeline("tiny", seed=1)
    assert all(torch.equal(a, b) for a, b in zip(pipe.nets.unet.parameters(), same.nets.unet.parameters()))
    with pytest.raises(ValueError, match="unknown musetalk preset 'huge'"):
        pipeline_config("huge")
    with pytest.raises(ValueError, match="unknown config field.*batch_size"):
        pipeline_config({"batch_sise": 4})


@pytest.mark.oracle
def test_render_clip_uses_cycle_and_injected_noise(setup):
    """Offline clip (upstream scripts' order): frame i uses cycle position i; injected
    posterior noise changes the cached latents as upstream's sampling would."""
    import torch

    pipe, portrait, speech = setup
    media = PersonaMedia([portrait, portrait[:, ::-1].copy()])
    eps = torch.randn(2, 2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    persona = pipe.prepare(media, "clip", posterior_eps=eps)
    mean_persona = pipe.prepare(media, "mean")
    assert not torch.allclose(persona.features["latents"], mean_persona.features["latents"])
    frames = pipe.render_clip(mean_persona, speech[:6400], fps=25)
    assert frames.shape == (10, *portrait.shape)
    # cycle 0,1,1,0,0,1,...: frames outside the crop box come from the matching media frame
    cx1, cy1, cx2, cy2 = mean_persona.features["mask_boxes"][0]
    for i, j in enumerate([0, 1, 1, 0, 0, 1, 1, 0, 0, 1]):
        assert (frames[i, :, : max(cx1, 0)] == media.frames[j][:, : max(cx1, 0)]).all()


def test_missing_weights_name_the_fetch_command(hf_cache):
    from models.base import WeightsMissingError
    from models.musetalk.config import weight_files

    with pytest.raises(WeightsMissingError, match="lockn-bod weights fetch musetalk"):
        MuseTalkPipeline.from_pretrained(MuseTalkConfig(device="cpu"))
    assert all(f.licence for f in weight_files())


@pytest.mark.gpu
def test_tiny_pipeline_fp16_on_cuda_matches_fp32():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    portrait = np.random.default_rng(0).integers(0, 256, (128, 112, 3), dtype=np.uint8)
    audio = (0.1 * np.random.default_rng(1).standard_normal(640 * 10)).astype(np.float32)
    outputs = []
    for device in ("cpu", "cuda"):
        pipe = MuseTalkPipeline("tiny").to(device)
        persona = pipe.prepare(PersonaMedia([portrait]), "gpu")
        outputs.append(pipe.render_clip(persona, audio))
    assert pipe.nets.dtype == torch.float16
    diff = np.abs(outputs[0].astype(int) - outputs[1].astype(int))
    assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 16


@pytest.mark.oracle
def test_idle_frames_never_leak_into_the_next_utterance(setup):
    """idle() must not feed the audio stream: speech after idle gives exactly one frame per 640 samples."""
    pipe, portrait, speech = setup
    persona = pipe.prepare(PersonaMedia([portrait]), "p")
    carry = pipe.start(persona, Controls())
    _, carry = pipe.idle(persona, carry, 7, Controls())
    audio = np.asarray(speech[: 8 * SAMPLES_PER_FRAME], np.float32)
    frames, carry = pipe.render(persona, carry, audio, Controls())
    tail, _ = pipe.flush(persona, carry, Controls())
    assert len(frames) + len(tail) == 8


@pytest.mark.slow  # the tiny UNet and VAE on CPU: about a minute on 2 cores
def test_a_batch_of_sessions_renders_what_each_session_renders_alone():
    """The tiny pipeline in fp32 on CPU: two personas of different sizes, three sessions, their speaking frames
    through the UNet and VAE together; frame for frame as three separate renders, up to one
    grey level on a few pixels: the CPU's matrix kernels (BLAS, oneDNN) block their work by
    batch size, so a float moves by ~1e-6 whatever else is in the batch (even with PyTorch's
    own convolutions, the UNet's linear layers go through BLAS)."""
    pipe = MuseTalkPipeline("tiny")
    rng = np.random.default_rng(0)
    # Portraits of two sizes: their face crops, the networks' input, are the same size, so they batch.
    personas = [pipe.prepare(PersonaMedia([rng.integers(0, 256, (*hw, 3), dtype=np.uint8)]), name)
                for name, hw in (("a", (96, 80)), ("b", (120, 104)))]
    audio = [(amplitude * rng.standard_normal(3200 * 2)).astype(np.float32) for amplitude in (0.1, 0.2, 0.15)]
    jobs = []
    for persona, chunk in zip((personas[0], personas[1], personas[0]), audio):
        carry = pipe.start(persona, Controls())
        _, carry = pipe.render(persona, carry, chunk[:3200], Controls())  # past the lookahead
        jobs.append((persona, carry, chunk[3200:], Controls()))
    alone = [pipe.render(persona, carry, chunk, c) for persona, carry, chunk, c in jobs]
    together = pipe.render_batch(jobs)
    assert together[0][0].shape[1:] != together[1][0].shape[1:]  # blended into portraits of two sizes
    for (frames, carry), (want, want_carry) in zip(together, alone):
        assert frames.shape == want.shape and len(frames) == 5
        diff = np.abs(frames.astype(np.int16) - want)
        assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3
        assert carry.cycle_index == want_carry.cycle_index and carry.audio.frames_done == want_carry.audio.frames_done
    assert any(np.abs(f.astype(np.int16) - p.features["frames_bgr"][0][..., ::-1]).max() > 0
               for (f, _), (p, *_) in zip(together, jobs))  # the faces were drawn, not the references
