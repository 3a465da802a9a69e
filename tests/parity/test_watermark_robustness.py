"""The watermark through real video codecs (PyAV): H.264 in MP4 at crf 23, H.264 and VP8 at WebRTC-like bitrates.

Slow tier: each case encodes and decodes a second of 512² video. Frames go RGB → YUV420 →
codec → YUV420 → RGB, which also checks the reader's gain/offset search against the level
shift of the colour conversion.
"""
from __future__ import annotations

import io

import av
import numpy as np
import pytest

from models.provenance import FrameMarker, session_tag
from tests.unit.test_watermark import frame_clip

pytestmark = pytest.mark.slow

KEY = b"test watermark secret"
TAG = session_tag(b"ledger secret", "session-0001")
FPS = 25


def codec_round_trip(frames: list[np.ndarray], container: str, codec: str, options: dict[str, str],
                     bit_rate: int | None = None) -> list[np.ndarray]:
    """Encode RGB frames into an in-memory container and decode them back to RGB."""
    buffer = io.BytesIO()
    height, width = frames[0].shape[:2]
    with av.open(buffer, mode="w", format=container) as output:
        stream = output.add_stream(codec, rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if bit_rate:
            stream.bit_rate = bit_rate
        for frame in frames:
            output.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        output.mux(stream.encode())
    buffer.seek(0)
    with av.open(buffer, mode="r") as decoded:
        return [frame.to_ndarray(format="rgb24") for frame in decoded.decode(video=0)]


@pytest.fixture(scope="module")
def marked_second() -> list[np.ndarray]:
    marker = FrameMarker(KEY)
    return [marker.embed(frame, TAG) for frame in frame_clip(FPS, seed=4)]


@pytest.mark.parametrize("name,container,codec,options,bit_rate", [
    ("mp4 h264 crf23", "mp4", "libx264", {"crf": "23", "preset": "veryfast"}, None),
    ("h264 1M realtime", "mp4", "libx264", {"preset": "ultrafast", "tune": "zerolatency"}, 1_000_000),
    ("h264 500k realtime", "mp4", "libx264", {"preset": "ultrafast", "tune": "zerolatency"}, 500_000),
    ("vp8 1M realtime", "webm", "libvpx", {"deadline": "realtime", "cpu-used": "8"}, 1_000_000),
    ("vp8 500k realtime", "webm", "libvpx", {"deadline": "realtime", "cpu-used": "8"}, 500_000),
])
def test_codec_round_trip(marked_second, name, container, codec, options, bit_rate):
    decoded = codec_round_trip(marked_second, container, codec, options, bit_rate)
    assert len(decoded) >= FPS - 2, name
    reading = FrameMarker(KEY).read(decoded)
    assert reading.matches(TAG) and reading.found, (name, reading, (reading.tag ^ TAG).bit_count())


def test_mp4_twice(marked_second):
    """A second generation: the colour round trips shift luma twice (the notes' inverted-bits case)."""
    once = codec_round_trip(marked_second, "mp4", "libx264", {"crf": "23", "preset": "veryfast"})
    twice = codec_round_trip(once, "mp4", "libx264", {"crf": "23", "preset": "veryfast"})
    reading = FrameMarker(KEY).read(twice)
    assert reading.matches(TAG) and reading.found, reading
