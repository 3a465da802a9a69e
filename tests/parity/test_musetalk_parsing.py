"""BiSeNet face parser, blending masks and paste-back (2c-ii)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from models.musetalk.blending import blend, prepare_mask, resize_face
from models.musetalk.face_parsing import (
    BiSeNet,
    FaceParser,
    MaskConfig,
    cheek_kernel,
    cheek_mask,
    cone_kernel,
    labels_to_mask,
    load_bisenet,
)
from models.musetalk.weights import FACE_PARSER
from models.weights import resolve
from tests.hf_layout import write_torch
from tests.parity.test_musetalk_seeded import load_seeded

BOXES = {"inside": (110, 60, 214, 182), "crosses_border": (230, 120, 318, 236)}


@pytest.fixture(scope="module")
def data(oracle):
    return np.load(oracle / "musetalk" / "parsing_blending.npz")


@pytest.mark.oracle
def test_bisenet_keys_match_manifest(oracle):
    manifest = json.loads((oracle / "musetalk" / "manifest_bisenet_79999_iter.json").read_text())
    state = BiSeNet(19).state_dict()
    assert {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in state.items()} == manifest


@pytest.mark.oracle
def test_bisenet_matches_oracle(oracle, hf_cache, data):
    seeded = load_seeded(oracle)
    write_torch(hf_cache, FACE_PARSER.repo_id, FACE_PARSER.filename, seeded.seeded_state_dict(BiSeNet(19).state_dict()))
    parser = FaceParser(load_bisenet(resolve(FACE_PARSER)))
    image = Image.fromarray(data["bisenet_input_rgb_300"])
    x = parser.preprocess(image)
    np.testing.assert_allclose(x[0, :, 0].numpy(), data["bisenet_input_tensor_row0"], atol=1e-6)
    with torch.no_grad():
        heads = parser.net(x)
    for head, name in zip(heads, ("feat_out", "feat_out16", "feat_out32")):
        np.testing.assert_allclose(head[0, :, ::8, ::8].numpy(), data[f"bisenet_{name}_logits_sub8"], rtol=1e-4, atol=1e-4)
    labels = parser.labels(image)
    # Top-2 logit gaps go down to 1.3e-5: allow a few near-tie pixels to flip.
    assert (labels != data["bisenet_argmax_512"]).mean() < 1e-3
    raw = np.asarray(parser(image, mode="raw"))
    assert (raw != data["bisenet_raw_mask_512"]).mean() < 1e-3


@pytest.mark.oracle
def test_kernels_match_oracle(data):
    assert (cone_kernel(MaskConfig()) == data["jaw_kernel_cone_33"]).all()
    assert (cheek_kernel(MaskConfig()) == data["cheek_kernel_ellipse_35x3"]).all()
    for width in (90, 80):
        assert (cheek_mask(MaskConfig(cheek_width=width)) == data[f"cheek_mask_{width}"]).all()


@pytest.mark.oracle
@pytest.mark.parametrize("mode, width", [("raw", 90), ("neck", 90), ("jaw", 90), ("jaw", 80)])
def test_masks_match_oracle(data, mode, width):
    mask = labels_to_mask(data["synthetic_labels_512"], mode, MaskConfig(cheek_width=width))
    np.testing.assert_array_equal(mask, data[f"parsing_mask_{mode}_cw{width}"])


def synthetic_parser(data):
    labels = data["synthetic_labels_512"]
    return lambda image, mode: Image.fromarray(labels_to_mask(labels, mode, MaskConfig(cheek_width=90)))


@pytest.mark.oracle
@pytest.mark.parametrize("name", sorted(BOXES))
@pytest.mark.parametrize("mode", ["jaw", "raw"])
def test_paste_back_matches_oracle(data, name, mode):
    frame, box = data["blend_frame_bgr"], BOXES[name]
    face = resize_face(data[f"blend_{name}_generated_bgr_256"], box)
    np.testing.assert_array_equal(face, data[f"blend_{name}_resized_face_bgr"])
    parse = synthetic_parser(data)
    mask, crop = prepare_mask(frame, box, parse, mode)  # realtime: blur 0.1
    np.testing.assert_array_equal(mask, data[f"blend_{name}_realtime_mask_{mode}"])
    np.testing.assert_array_equal(blend(frame, face, box, mask, crop), data[f"blend_{name}_realtime_blended_{mode}"])
    mask, crop = prepare_mask(frame, box, parse, mode, blur_fraction=0.05)  # offline get_image
    np.testing.assert_array_equal(blend(frame, face, box, mask, crop), data[f"blend_{name}_offline_get_image_{mode}"])


def test_blend_with_empty_mask_is_identity():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    face = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    box = (70, 50, 100, 70)  # crop box leaves the frame
    from models.musetalk.blending import crop_box

    crop = crop_box(box)
    mask = np.zeros((crop[3] - crop[1], crop[2] - crop[0]), np.uint8)
    np.testing.assert_array_equal(blend(frame, face, box, mask, crop), frame)
