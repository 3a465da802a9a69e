"""Per-frame invisible watermark (models/provenance/watermark.py): round trips, quality, robustness, false matches.

Images are natural-ish (smooth gradients, a few blurred shapes, mild sensor noise) rather than
pure noise: block means of real frames are smooth, which is what the scheme has to live with.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.provenance import MIN_SIDE, SYNC_BITS, TAG_BITS, FrameMarker, Reading, session_tag

KEY = b"test watermark secret"
TAG = session_tag(b"ledger secret", "session-0001")


def natural_frame(height: int, width: int, seed: int) -> np.ndarray:
    """H×W×3 uint8: gradients, a few soft-edged discs and rectangles, and noise (σ 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([40 + 150 * x / width + 25 * np.sin(y / 37 + seed),
                      60 + 120 * y / height,
                      200 - 110 * (x + y) / (height + width)], axis=-1)
    image = np.ascontiguousarray(image)
    for _ in range(5):
        colour = tuple(float(v) for v in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        radius = int(rng.integers(8, min(height, width) // 4))
        if rng.random() < 0.5:
            cv2.circle(image, centre, radius, colour, -1)
        else:
            cv2.rectangle(image, centre, (centre[0] + radius, centre[1] + 2 * radius), colour, -1)
    image = cv2.GaussianBlur(image, (0, 0), 1.5) + rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def frame_clip(count: int, height: int = 512, width: int = 512, seed: int = 0) -> list[np.ndarray]:
    """A short 'video': the same scene drifting a little, with fresh noise each frame."""
    base = natural_frame(height, width, seed)
    rng = np.random.default_rng(seed + 100)
    frames = []
    for index in range(count):
        moved = np.roll(base, shift=index, axis=1).astype(np.float32)
        frames.append(np.clip(moved + rng.normal(0, 1.5, moved.shape), 0, 255).astype(np.uint8))
    return frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


def jpeg(frame_rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, encoded = cv2.imencode(".jpg", frame_rgb, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)  # channel order does not matter: it round-trips


@pytest.fixture(scope="module")
def marker() -> FrameMarker:
    return FrameMarker(KEY)


@pytest.fixture(scope="module")
def marked_clip(marker) -> list[np.ndarray]:
    return [marker.embed(frame, TAG) for frame in frame_clip(10)]


def test_session_tag_is_56_bits_and_keyed():
    tag = session_tag(b"secret", "abc")
    assert 0 <= tag < 1 << TAG_BITS
    assert tag == session_tag(b"secret", "abc")
    assert tag != session_tag(b"secret", "abd")
    assert tag != session_tag(b"other secret", "abc")


@pytest.mark.parametrize("height,width", [(256, 256), (512, 512), (720, 720), (333, 517)])
def test_round_trip_single_frame(marker, height, width):
    marked = marker.embed(natural_frame(height, width, seed=height), TAG)
    assert marked.shape == (height, width, 3) and marked.dtype == np.uint8
    reading = marker.read([marked])
    assert reading.tag == TAG
    assert reading.bit_errors_sync == 0
    assert reading.frames == 1
    assert reading.matches(TAG, max_bit_errors=0)
    assert reading.confidence > 0.9


def test_frame_under_min_side_is_unchanged(marker):
    small = natural_frame(MIN_SIDE - 1, 400, seed=3)
    marked = marker.embed(small, TAG)
    assert np.array_equal(marked, small)
    assert marked is not small
    assert marker.read([small]) == Reading(tag=None, bit_errors_sync=SYNC_BITS, confidence=0.0, frames=0)
    assert not marker.read([small]).matches(TAG)


def test_psnr_at_512(marker):
    frame = natural_frame(512, 512, seed=7)
    assert psnr(frame, marker.embed(frame, TAG)) >= 40.0


def test_embed_does_not_modify_input(marker):
    frame = natural_frame(256, 320, seed=8)
    before = frame.copy()
    marker.embed(frame, TAG)
    assert np.array_equal(frame, before)


def test_read_accepts_a_stacked_array(marker, marked_clip):
    assert marker.read(np.stack(marked_clip[:3])).tag == TAG


def test_jpeg_q80_pooled(marker, marked_clip):
    reading = marker.read([jpeg(frame, 80) for frame in marked_clip])
    assert reading.tag == TAG and reading.bit_errors_sync == 0
    assert reading.matches(TAG)


def test_half_size_and_back(marker, marked_clip):
    def half_and_back(frame):
        small = cv2.resize(frame, (256, 256), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (512, 512), interpolation=cv2.INTER_LINEAR)

    reading = marker.read([half_and_back(frame) for frame in marked_clip])
    assert reading.tag == TAG and reading.bit_errors_sync == 0


@pytest.mark.parametrize("gain,offset", [(1.0, 5.0), (0.9, 0.0), (0.9, 5.0), (219 / 255, 16.0), (1.0, -1.0)])
def test_levels_changes(marker, marked_clip, gain, offset):
    """Brightness +5, contrast 0.9, TV levels, and the −1 level of an RGB→YUV→RGB round trip."""
    changed = [np.clip(np.rint(frame * gain + offset), 0, 255).astype(np.uint8) for frame in marked_clip]
    reading = marker.read(changed)
    assert reading.tag == TAG and reading.bit_errors_sync == 0


def test_unmarked_never_matches(marker):
    rng = np.random.default_rng(11)
    for seed in range(4):
        reading = marker.read(frame_clip(5, 256, 256, seed=seed))
        for _ in range(50):
            assert not reading.matches(int(rng.integers(0, 1 << TAG_BITS)))
        # About half the tag bits come out wrong against the tag it was never marked with.
        wrong = (reading.tag ^ TAG).bit_count()
        assert 14 <= wrong <= 42, wrong
        assert reading.confidence < 0.3


@pytest.mark.parametrize("frames", [
    pytest.param(lambda: [natural_frame(300, 300, seed=21)], id="photo"),
    pytest.param(lambda: [natural_frame(128, 128, seed=22)], id="smallest"),
    pytest.param(lambda: [np.full((256, 256, 3), 120, np.uint8)], id="flat"),
    pytest.param(lambda: frame_clip(6, 256, 256, seed=23), id="clip"),
    pytest.param(lambda: [natural_frame(256, 256, seed=24)] * 20, id="still-clip"),
])
def test_unmarked_content_is_never_found(frames):
    """Without a tag to compare: 40 random keys, and not one reads a mark (sync bits alone
    passed about one in four: the search picks the hypothesis whose sync bits agree)."""
    clip = frames()
    rng = np.random.default_rng(5)
    readings = [FrameMarker(rng.bytes(32)).read(clip) for _ in range(40)]
    assert not any(reading.found for reading in readings)
    assert max(reading.strength for reading in readings) < 1.3


def test_marked_content_is_found_after_jpeg(marker):
    for side, quality in [(128, 50), (300, 30), (512, 75)]:
        reading = marker.read([jpeg(marker.embed(natural_frame(side, side, seed=side), TAG), quality)])
        assert reading.found and reading.tag == TAG, (side, quality, reading)
    still = [marker.embed(natural_frame(256, 256, seed=3), TAG)] * 20
    assert marker.read(still).strength == pytest.approx(marker.read(still[:1]).strength, rel=1e-6)


def test_other_key_does_not_read(marked_clip):
    reading = FrameMarker(b"another secret").read(marked_clip[:5])
    assert not reading.matches(TAG)


def test_different_keys_and_tags_give_different_marks(marker):
    frame = natural_frame(256, 256, seed=5)
    other_tag = session_tag(b"ledger secret", "session-0002")
    by_tag = marker.embed(frame, other_tag)
    by_key = FrameMarker(b"another secret").embed(frame, TAG)
    mine = marker.embed(frame, TAG)
    assert not np.array_equal(mine, by_tag)
    assert not np.array_equal(mine, by_key)
    assert marker.read([by_tag]).tag == other_tag
    assert not marker.read([by_tag]).matches(TAG)


def test_rejects_non_uint8_rgb(marker):
    with pytest.raises(ValueError):
        marker.embed(np.zeros((256, 256, 3), np.float32), TAG)
    with pytest.raises(ValueError):
        marker.embed(np.zeros((256, 256), np.uint8), TAG)
    with pytest.raises(ValueError):
        marker.embed(np.zeros((256, 256, 3), np.uint8), 1 << TAG_BITS)


def test_saturated_frame_still_carries_the_tag(marker):
    """White backgrounds: lattice points above 255 are replaced by the next one down."""
    frame = natural_frame(256, 256, seed=9)
    frame[:, :128] = 255
    assert marker.read([marker.embed(frame, TAG)]).tag == TAG
