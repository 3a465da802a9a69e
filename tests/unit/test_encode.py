"""Frame encoding: JPEG once per distinct frame, MP4 with its audio."""
import io

import av
import numpy as np

from deployments.transports.encode import EncodedFrames, FrameFormat, JpegEncoder, decode_jpeg, encode_mp4


def test_jpeg_is_reused_only_for_identical_frames():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (64, 64, 3), np.uint8)
    encoder = JpegEncoder()
    first = encoder.encode(a)
    assert encoder.encode(a.copy()) is first  # same content, another buffer: no second encode
    assert encoder.encode(np.broadcast_to(a, (2, *a.shape))[1]) is first  # a view of it
    b = a.copy()
    b[7, 9, 1] ^= 0xFF  # one byte off the sampling grid
    assert encoder.encode(b) is not first
    assert decode_jpeg(first).shape == (64, 64, 3)


def test_encoded_frames_carry_raw_frames_only_when_asked_and_join_in_order():
    frames = np.random.default_rng(2).integers(0, 255, (3, 32, 48, 3), np.uint8)
    jpegs_only = EncodedFrames.of(frames, FrameFormat(jpeg_quality=70))
    with_raw = EncodedFrames.of(frames[:2], FrameFormat(jpeg_quality=70, raw=True))
    assert len(jpegs_only) == 3 and jpegs_only.raw is None
    assert np.array_equal(with_raw.raw, frames[:2])
    assert [decode_jpeg(j).shape for j in jpegs_only.jpegs] == [(32, 48, 3)] * 3
    both = EncodedFrames.concat([with_raw, EncodedFrames.of(frames[2:], FrameFormat(raw=True))])
    assert len(both) == 3 and np.array_equal(both.raw, frames)
    assert both.jpegs[:2] == with_raw.jpegs
    assert EncodedFrames.concat([with_raw, jpegs_only]).raw is None  # one batch without raw frames: none


def test_mp4_holds_every_frame_and_the_audio():
    frames = np.random.default_rng(1).integers(0, 255, (25, 48, 64, 3), np.uint8)
    audio = (0.2 * np.sin(np.arange(16000) / 7)).astype(np.float32)
    with av.open(io.BytesIO(encode_mp4(frames, audio))) as container:
        assert container.streams.audio and container.streams.video
        assert sum(1 for _ in container.decode(video=0)) == 25
