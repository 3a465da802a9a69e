"""The liveportrait pipeline: the contract on a tiny config, and end-to-end parity with
fixture_pipeline_A (oracle README section 4) on the real config with seeded weights."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from models.base import SAMPLES_PER_FRAME, Controls, PersonaMedia, Pipeline
from models.face.analysis import AnalysedFace
from models.face.crop import network_input_256
from models.face.detection import FaceBox
from models.liveportrait import pipeline as lp_pipeline
from models.liveportrait.config import LivePortraitConfig
from models.liveportrait.loading import LivePortraitNetworks
from models.liveportrait.pipeline import LivePortraitPipeline, LivePortraitPipelineConfig
from models.liveportrait.template_driving import TemplateOptions
from tests.resampled import assert_resampled_equal

PORTRAIT_HW = (360, 480)
MOUTH_KP = 19


class FixedFace:
    """Stands in for FaceAnalyzer: returns the given landmarks (as the fixtures' fakes did)."""

    def __init__(self, points106: np.ndarray, points203: np.ndarray):
        self.result = AnalysedFace(FaceBox(np.zeros(4), 1.0, np.zeros((5, 2))), points106, points203, [])

    def analyse(self, image):
        return self.result


def unit_face(points: np.ndarray, centre=(240.0, 170.0), half_side=80.0) -> np.ndarray:
    return (np.asarray(centre) + points * half_side).astype(np.float32)


def open_mouth_lip_mlp(mlp: torch.nn.Module) -> None:
    """Hand-set the tiny lip MLP so its output moves only keypoint 19 down by c_d_lip."""
    with torch.no_grad():
        for p in mlp.parameters():
            p.zero_()
        mlp.mlp[0].weight[0, 64] = 1.0  # input 64 = c_d_lip
        mlp.mlp[2].weight[0, 0] = 1.0
        mlp.mlp[4].weight[MOUTH_KP * 3 + 1, 0] = 1.0


class CheapWarp(torch.nn.Module):
    """W stand-in with W's output contract, so contract tests do not pay for 3-D convs on CPU:
    out B×C×64×64 from the source volume plus a term that varies with the driving keypoints,
    so different keypoints give different frames."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, feature_3d, kp_driving, kp_source):
        b = kp_driving.shape[0]
        level = torch.sin(1000 * (kp_driving - kp_source).abs().mean(dim=(1, 2))).view(b, 1, 1, 1)
        out = feature_3d.mean(dim=2)[:, :1].expand(b, self.channels, 64, 64) + level
        return {"out": out, "deformation": None, "occlusion_map": None}


class CheapGenerator(torch.nn.Module):
    def forward(self, feature):
        # feature: B×C×64×64 -> B×3×512×512 in (0, 1)
        x = torch.sigmoid(feature[:, :3])
        return torch.nn.functional.interpolate(x, scale_factor=8, mode="nearest")


def make_tiny(real_renderer: bool):
    from tests import face_onnx_models as fm

    torch.manual_seed(0)
    config = LivePortraitConfig.tiny()
    nets = LivePortraitNetworks.random(config)
    open_mouth_lip_mlp(nets.stitching.lip)
    if not real_renderer:
        nets.warping, nets.generator = CheapWarp(config.spade.input_channels), CheapGenerator()
    face = FixedFace(unit_face(fm.face_points_106()), unit_face(fm.face_points_203()))
    pipeline = LivePortraitPipeline(LivePortraitPipelineConfig(networks=config, max_batch=4), networks=nets, face=face)
    rng = np.random.default_rng(0)
    portrait = rng.integers(0, 256, (*PORTRAIT_HW, 3), dtype=np.uint8)
    return pipeline, pipeline.prepare(PersonaMedia([portrait]), "p1")


@pytest.fixture(scope="module")
def tiny():
    return make_tiny(real_renderer=False)


def test_one_frame_through_the_real_tiny_networks():
    pipeline, persona = make_tiny(real_renderer=True)
    carry = pipeline.start(persona, Controls())
    frames, carry = pipeline.render(persona, carry, np.zeros(SAMPLES_PER_FRAME, np.float32), Controls())
    assert frames.shape == (1, *PORTRAIT_HW, 3) and frames.dtype == np.uint8 and carry.frame == 1


def speech(n_frames: int, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(n_frames * SAMPLES_PER_FRAME) / 16_000
    return (amplitude * np.sin(2 * np.pi * 200 * t)).astype(np.float32)


def test_implements_the_contract(tiny):
    pipeline, persona = tiny
    assert isinstance(pipeline, Pipeline) and pipeline.mode == "liveportrait"
    carry = pipeline.start(persona, Controls())
    frames, carry = pipeline.render(persona, carry, speech(10), Controls(emotion="happy"))
    assert frames.shape == (10, *PORTRAIT_HW, 3) and frames.dtype == np.uint8
    assert carry.frame == 10 and carry.lip_level > 0
    assert len({f.tobytes() for f in frames}) > 1  # the face moves
    frames, carry = pipeline.idle(persona, carry, 3, Controls())
    assert frames.shape == (3, *PORTRAIT_HW, 3) and carry.frame == 13
    frames, carry = pipeline.flush(persona, carry, Controls())
    assert frames.shape == (0, *PORTRAIT_HW, 3)
    assert len(pickle.dumps(carry)) < 2048  # small, serialisable


def test_missing_weights_name_the_fetch_command(hf_cache):
    from models.base import WeightsMissingError

    with pytest.raises(WeightsMissingError, match="lockn-bod weights fetch liveportrait"):
        LivePortraitPipeline(device="cpu")


def test_several_faces_warning_reaches_the_persona(tiny):
    from models.face.analysis import FaceWarning

    pipeline, persona = tiny
    face = pipeline.face
    face.result.warnings = [FaceWarning("several_faces", "2 faces found; using the largest (160 px)")]
    try:
        prepared = pipeline.prepare(persona.media, "p2")
    finally:
        face.result.warnings = []
    assert prepared.features["warnings"] == [{"code": "several_faces", "message": "2 faces found; using the largest (160 px)"}]


def test_paste_back_leaves_the_portrait_outside_the_crop(tiny):
    pipeline, persona = tiny
    frames, _ = pipeline.render(persona, pipeline.start(persona, Controls()), speech(1), Controls())
    outside = persona.features["liveportrait"].mask[..., 0] == 0
    np.testing.assert_array_equal(frames[0][outside], persona.portrait[outside])
    assert outside.any() and not outside.all()


def test_lip_opens_with_loud_speech_and_closes_in_silence(tiny):
    pipeline, persona = tiny
    source = persona.features["liveportrait"]
    carry = pipeline.start(persona, Controls())
    delta_loud = pipeline.lip_delta(source, np.ones(1))
    delta_silent = pipeline.lip_delta(source, np.zeros(1))
    assert torch.count_nonzero(delta_silent) == 0  # mouth at rest in silence
    moved = torch.nonzero(delta_loud[0].abs() > 1e-6).tolist()
    assert moved == [[MOUTH_KP, 1]] and delta_loud[0, MOUTH_KP, 1] > 0.3  # keypoint 19 down: open

    # Through render's lip level: speech then silence.
    from models.liveportrait.lip import lip_levels

    audio = np.concatenate([speech(6), np.zeros(10 * SAMPLES_PER_FRAME, np.float32)])
    levels, _ = lip_levels(audio, 0.0)
    x_d, _ = pipeline.frame_keypoints(source, carry, levels, Controls())
    x_rest, _ = pipeline.frame_keypoints(source, carry, np.zeros_like(levels), Controls())
    gap = (x_d - x_rest)[:, MOUTH_KP, 1]
    assert gap[1:6].min() > 0.1 and gap[-3:].abs().max() == 0


def test_blink_is_identity_when_eyes_open(tiny):
    pipeline, persona = tiny
    source = persona.features["liveportrait"]
    assert torch.count_nonzero(pipeline.eye_delta(source, np.zeros(3))) == 0
    assert pipeline.eye_delta(source, np.ones(1)).abs().max() > 0


def test_emotion_changes_blend_over_frames(tiny):
    from models.liveportrait.expression import CONTROL_NAMES

    pipeline, persona = tiny
    source = persona.features["liveportrait"]
    brow = CONTROL_NAMES.index("brow")
    carry = pipeline.start(persona, Controls())
    _, carry = pipeline.frame_keypoints(source, carry, np.zeros(3), Controls(emotion="surprised"))
    assert 0.1 < carry.expression[brow] < 0.5  # partway after 3 frames, not jumped
    _, later = pipeline.frame_keypoints(source, carry, np.zeros(50), Controls(emotion="surprised"))
    assert later.expression[brow] == pytest.approx(1.0, abs=0.01)  # there after 2 s


# ---- parity with fixture_pipeline_A (real config, seeded weights) ----------------------

KP_TOL = 1e-4  # keypoints come out of M (README: F, M ≤ 1e-4)
OUT_TOL = 5e-4  # README: pipeline frame1_out
# upstream InferenceConfig of each pipeline fixture (oracle README section 4)
PIPELINE_OPTIONS = {
    "A": TemplateOptions(),  # the CLI defaults
    "B": TemplateOptions(driving_option="pose-friendly", normalize_lip=True),  # InferenceConfig defaults
    "C": TemplateOptions(eye_retargeting=True, lip_retargeting=True),
}


@pytest.fixture(scope="module")
def seeded_pipeline(oracle, tmp_path_factory):
    """The real-size pipeline, its five networks seeded as the fixtures were and loaded from
    an offline HF cache through models.liveportrait.loading; faces faked as upstream's run was."""
    import huggingface_hub.constants as hub

    from tests.parity.test_liveportrait_networks import NETWORKS, write_seeded, write_seeded_stitching

    fx = dict(np.load(oracle / "liveportrait" / "fixture_pipeline_A.npz"))
    cache = tmp_path_factory.mktemp("hf-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(hub, "HF_HUB_CACHE", str(cache))
        mp.setattr(hub, "HF_HUB_OFFLINE", True)
        for network in NETWORKS:
            write_seeded(oracle, cache, network)
        write_seeded_stitching(oracle, cache)
        nets = LivePortraitNetworks.load(device="cpu")
        pipeline = LivePortraitPipeline(networks=nets, face=FixedFace(fx["lmk106"], fx["lmk203"]))
        mp.setattr(lp_pipeline, "network_input_256", reference_input_256(fx["img_crop_256"]))
        persona = pipeline.prepare(PersonaMedia([fx["img_ori"]]), "fixture")
    return pipeline, persona, fx


def reference_input_256(reference: np.ndarray):
    """network_input_256 that checks our crop against the reference's within the resampler
    tolerance, then hands the networks the reference's own: what F and M compute from it is our
    arithmetic and stays compared strictly, whichever OpenCV release made the crop."""

    def crop_256(crop_512: np.ndarray) -> np.ndarray:
        assert_resampled_equal(network_input_256(crop_512), reference, what="img_crop_256")
        return reference

    return crop_256


def assert_close(ours, ref, atol, what):
    err = float(np.abs(np.asarray(ours, np.float64) - np.asarray(ref, np.float64)).max())
    assert err <= atol, f"{what}: max |diff| {err:.3g} > {atol}"


@pytest.mark.oracle
@pytest.mark.slow
def test_prepare_matches_the_reference_source(seeded_pipeline):
    pipeline, persona, fx = seeded_pipeline
    source = persona.features["liveportrait"]
    assert_close(source.M_c2o, fx["M_c2o"], 1e-4, "M_c2o")
    assert_resampled_equal(source.mask, fx["mask_ori"], level=1 / 255, what="mask_ori")
    motion = source.motion
    assert_close(motion.x_s, fx["x_s"], KP_TOL, "x_s")
    assert_close(motion.R_s, fx["R_s"], KP_TOL, "R_s")
    for k in ("pitch", "yaw", "roll"):
        assert_close(motion.info[k], fx[f"src_{k}"], 1e-3, k)  # degrees
    for k in ("t", "exp", "scale", "kp"):
        assert_close(motion.info[k], fx[f"src_{k}"], KP_TOL, k)
    assert_close(motion.f_s[..., ::4, ::4], fx["f_s_sub"], 1e-4, "f_s_sub")


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["A", "B", "C"])
def test_template_driving_and_one_rendered_frame_match(seeded_pipeline, oracle, variant):
    """Each pipeline fixture end to end from our prepared persona: keypoints, then frame 1
    through W and G and pasted back (B and C skip where the oracle lacks them)."""
    from models.face.paste_back import paste_back
    from models.liveportrait.decode import to_uint8, warp_decode
    from models.liveportrait.template_driving import drive_with_template
    from tests.parity.test_liveportrait_keypoints import pipeline_fixture, template_of

    pipeline, persona, _ = seeded_pipeline
    fx = pipeline_fixture(oracle, variant)
    source = persona.features["liveportrait"]
    frames, multiplier = drive_with_template(pipeline.networks, source.motion, template_of(fx),
                                             PIPELINE_OPTIONS[variant], source.eye_ratio, source.lip_ratio)
    if "motion_multiplier" in fx:
        assert multiplier == pytest.approx(float(fx["motion_multiplier"][0]), rel=1e-4)
    for i, frame in enumerate(frames):
        assert_close(frame.stitch_in, fx[f"frame{i}_stitch_in"], KP_TOL, f"frame{i}_stitch_in")
        assert_close(frame.stitch_out, fx[f"frame{i}_stitch_out"], KP_TOL, f"frame{i}_stitch_out")
        assert_close(frame.x_d, fx[f"frame{i}_x_d_final"], KP_TOL, f"frame{i}_x_d_final")

    # One frame through W and G (about 15 s on 2 CPU cores).
    out = warp_decode(pipeline.networks, source.motion.f_s, source.motion.x_s, frames[1].x_d)
    assert_close(out["occlusion_map"], fx["frame1_occlusion_map"], 1e-5, "occlusion_map")
    assert_close(out["deformation"][:, :, ::2, ::2], fx["frame1_deformation_sub"], 1e-5, "deformation")
    if "frame1_out" in fx:  # A only
        assert_close(out["image"], fx["frame1_out"], OUT_TOL, "frame1_out")
    image = to_uint8(out["image"])[0]
    assert_resampled_equal(image, fx["frame1_I_p"], what="I_p")  # the README's uint8 tolerance
    pasted = paste_back(image, source.M_c2o, persona.portrait, source.mask)
    assert_resampled_equal(pasted, fx["frame1_pasteback"], what="frame1_pasteback")


@pytest.mark.oracle
def test_paste_back_of_the_reference_frames(oracle):
    from models.face.crop import SOURCE_CROP, crop_image, network_input_256
    from models.face.mask import liveportrait_mask_template
    from models.face.paste_back import paste_back, warp_mask

    fx = np.load(oracle / "liveportrait" / "fixture_pipeline_A.npz")
    crop = crop_image(fx["img_ori"], fx["lmk106"], SOURCE_CROP)
    assert_resampled_equal(crop.image, fx["img_crop_512"], what="img_crop_512")
    assert_resampled_equal(network_input_256(crop.image), fx["img_crop_256"], what="img_crop_256")
    mask = warp_mask(liveportrait_mask_template(), crop.M_c2o, fx["img_ori"].shape[:2])
    assert_resampled_equal(mask, fx["mask_ori"], level=1 / 255, what="mask_ori")
    for i in range(2):
        pasted = paste_back(fx[f"frame{i}_I_p"], crop.M_c2o, fx["img_ori"], mask)
        assert_resampled_equal(pasted, fx[f"frame{i}_pasteback"], what=f"frame{i}_pasteback")


def test_prepare_runs_the_face_models_and_reports_persona_errors(tmp_path):
    """prepare through real onnxruntime sessions over the stand-in face models."""
    pytest.importorskip("onnx", reason="the stand-in face models are built with the `onnx` package")
    from models.base import PersonaError
    from models.face.analysis import FaceAnalyzer
    from models.face.onnx_session import open_session
    from tests import face_onnx_models as fm

    def analyzer(faces):
        paths = []
        for name, data in [("det", fm.detector_model(faces)), ("106", fm.landmarks106_model()),
                           ("203", fm.landmarks203_model())]:
            paths.append(tmp_path / f"{name}-{len(faces)}.onnx")
            paths[-1].write_bytes(data)
        return FaceAnalyzer(*(open_session(p, prefer_cuda=False, threads=1) for p in paths))

    pipeline, persona = make_tiny(real_renderer=False)
    pipeline.face = analyzer([([150, 100, 330, 330], 0.9), ([20, 20, 80, 90], 0.8)])
    prepared = pipeline.prepare(persona.media, "two-faces")
    assert [w["code"] for w in prepared.features["warnings"]] == ["several_faces"]
    frames, _ = pipeline.idle(prepared, pipeline.start(prepared, Controls()), 1, Controls())
    assert frames.shape == (1, *PORTRAIT_HW, 3)

    pipeline.face = analyzer([])
    with pytest.raises(PersonaError) as err:
        pipeline.prepare(persona.media, "nobody")
    assert err.value.code == "no_face"


# ---- listening, gaze and pose (docs/api.md#listening-gaze-and-pose) ----------------------

def idle_keypoints(pipeline, persona, controls: Controls, seconds: float) -> np.ndarray:
    """The driving keypoints (before stitching) of `seconds` of idle frames from a session that
    started with the default controls and then got `controls`: (N, 21, 3)."""
    source = persona.features["liveportrait"]
    x_d, _ = pipeline.frame_keypoints(source, pipeline.start(persona, Controls()), np.zeros(int(seconds * 25)),
                                      controls)
    return x_d.numpy()


def test_gaze_moves_the_eye_keypoints_toward_the_point(tiny):
    pipeline, persona = tiny
    rest = idle_keypoints(pipeline, persona, Controls(), 1.0)[-1]
    for x, y in [(1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0)]:
        moved = idle_keypoints(pipeline, persona, Controls(gaze_x=x, gaze_y=y), 1.0)[-1] - rest  # 21×3
        changed = set(np.nonzero(np.abs(moved).max(axis=1) > 1e-6)[0].tolist())
        assert changed == {11, 13, 15, 16} if y else changed == {11, 15}
        eyes = moved[[11, 15]].mean(axis=0)
        if x:
            assert np.sign(eyes[0]) == np.sign(x)  # x: to the image's (the viewer's) right
        else:
            assert np.sign(eyes[1]) == -np.sign(y)  # up is image y < 0


def test_pose_turns_the_face_the_documented_way(tiny):
    pipeline, persona = tiny
    rest = idle_keypoints(pipeline, persona, Controls(), 2.0)[-1]
    front = rest[:, 2] < np.median(rest[:, 2])  # z < 0 faces the camera
    yawed = idle_keypoints(pipeline, persona, Controls(head_yaw_deg=15.0), 2.0)[-1] - rest
    assert yawed[front, 0].mean() > yawed[~front, 0].mean()  # the face turns to the viewer's right
    pitched = idle_keypoints(pipeline, persona, Controls(head_pitch_deg=15.0), 2.0)[-1] - rest
    assert pitched[front, 1].mean() > pitched[~front, 1].mean()  # the face tips down
    eased = idle_keypoints(pipeline, persona, Controls(head_yaw_deg=15.0), 0.2) - idle_keypoints(
        pipeline, persona, Controls(), 0.2)
    steps = np.abs(eased[:, front, 0].mean(axis=1))
    assert np.all(np.diff(steps) > 0) and steps[0] < 0.3 * np.abs(yawed[front, 0].mean())  # eased in


def test_listening_calms_the_idle_motion_and_nods(tiny):
    pipeline, persona = tiny
    calm = idle_keypoints(pipeline, persona, Controls(), 20.0)
    listening = idle_keypoints(pipeline, persona, Controls(listening=True, gaze_x=1.0), 20.0)
    sideways = lambda kp: kp[25:, :, 0].mean(axis=1)  # noqa: E731 (the head's sideways travel, after 1 s)
    assert sideways(listening).std() < 0.5 * sideways(calm).std()  # idle yaw and roll to a quarter
    eye_contact = idle_keypoints(pipeline, persona, Controls(listening=True), 20.0)
    assert np.abs(listening[50:] - eye_contact[50:]).max() < 1e-4  # the gaze at x = 1 waits: eyes on the camera
    carry = pipeline.start(persona, Controls(listening=True))
    _, carry = pipeline.frame_keypoints(persona.features["liveportrait"], carry, np.zeros(500), Controls(listening=True))
    assert carry.attention.nods.count >= 3  # nods in 20 s


# ---- cross-session batching (the backend's batch_sessions) ----------------------------------

@pytest.mark.slow  # the real tiny W and G on CPU: about a minute on 2 cores
@pytest.mark.parametrize("onednn", [False, True])
def test_a_batch_of_sessions_renders_what_each_session_renders_alone(onednn, real_tiny_two_personas):
    """fp32 on CPU, the real tiny W and G: three sessions of two personas of different portrait
    sizes, their chunks in one W+G pass, frame for frame and carry for carry as three separate renders.

    PyTorch's own CPU kernels compute each frame the same whatever else is in the batch:
    identical. oneDNN's (the default on CPU) block the work by batch size, and a frame's
    floats move by ~4e-6: a pixel here and there lands one grey level off."""
    with torch.backends.mkldnn.flags(enabled=onednn):
        together, alone = batched_and_alone(*real_tiny_two_personas)
    assert len(together) == 3
    assert together[0][0].shape[1:] != together[1][0].shape[1:]  # pasted back into portraits of two sizes
    for (frames, carry), (want_frames, want_carry) in zip(together, alone):
        assert frames.shape == want_frames.shape
        diff = np.abs(frames.astype(np.int16) - want_frames)
        if onednn:
            assert diff.max() <= 1 and np.mean(diff > 0) < 1e-4
        else:
            assert not diff.any()
        assert pickle.dumps(carry) == pickle.dumps(want_carry)


@pytest.fixture(scope="module")
def real_tiny_two_personas():
    pipeline, first = make_tiny(real_renderer=True)
    rng = np.random.default_rng(1)
    # A portrait of another size: its crop, the networks' input, is the same size, so it batches.
    second = pipeline.prepare(PersonaMedia([rng.integers(0, 256, (400, 520, 3), dtype=np.uint8)]), "p2")
    return pipeline, first, second


def batched_and_alone(pipeline, first, second):
    """Three sessions' chunks rendered together and one by one: ([(frames, carry)] × 2)."""
    controls = [Controls(emotion="happy"), Controls(listening=True, head_yaw_deg=10), Controls(gaze_x=0.5)]
    jobs = [(persona, pipeline.start(persona, c), audio, c)
            for persona, c, audio in zip((first, second, first), controls, (speech(3), speech(2, 0.1), speech(3)))]
    alone = [pipeline.render(persona, carry, audio, c) for persona, carry, audio, c in jobs]
    return pipeline.render_batch(jobs), alone
