"""Frames out: JPEG once per frame (WebSocket, MJPEG) and MP4 for one-shot renders."""
from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from models.base import FPS, SAMPLE_RATE_HZ

# The one default for every JPEG a session sends (config `jpeg_quality` overrides it).
DEFAULT_JPEG_QUALITY = 80


def same_frame(frame: np.ndarray, last: np.ndarray | None) -> bool:
    """Whether `frame` (H×W×3 uint8) holds the same pixels as `last`: what lets an unchanged
    frame (still mode, a held pose) reuse the work done on the last one."""
    if last is None or frame.shape != last.shape:
        return False
    # Views of one buffer (still mode broadcasts the portrait) need no byte compare.
    same_view = (frame.__array_interface__["data"][0] == last.__array_interface__["data"][0]
                 and frame.strides == last.strides)
    if same_view:
        return True
    # Animated frames almost always differ: a strided sample rejects them cheaply,
    # and only a match pays for the full byte compare.
    return np.array_equal(frame[::16, ::16], last[::16, ::16]) and np.array_equal(frame, last)


class JpegEncoder:
    """Encodes frames once; an unchanged frame (still mode, a held pose) reuses the last bytes."""

    def __init__(self, quality: int = DEFAULT_JPEG_QUALITY):
        self.quality = quality
        self._last_frame: np.ndarray | None = None
        self._last_jpeg = b""

    def encode(self, frame: np.ndarray) -> bytes:
        """frame: H×W×3 uint8 RGB -> JPEG bytes."""
        if self._same_as_last(frame):
            return self._last_jpeg
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="JPEG", quality=self.quality)
        self._last_frame, self._last_jpeg = frame, buf.getvalue()
        return self._last_jpeg

    def _same_as_last(self, frame: np.ndarray) -> bool:
        return same_frame(frame, self._last_frame)

    def encode_batch(self, frames: np.ndarray) -> list[bytes]:
        """frames: N×H×W×3 uint8 -> N JPEGs."""
        return [self.encode(f) for f in frames]


@dataclass(frozen=True)
class FrameFormat:
    """How a session wants a remote backend's frames: JPEG-encoded where they are rendered
    (the JPEGs cross Ray, a twentieth of the raw bytes), and the raw frames as well only
    while a viewer in the session's host needs them (a WebRTC peer encodes its own video)."""

    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    raw: bool = False
    mark_tag: int | None = None  # the session's watermark tag: frames are marked before they are encoded


@dataclass
class EncodedFrames:
    """A batch of frames as a session publishes them.

    jpegs: one JPEG per frame; raw: N×H×W×3 uint8 RGB, or None where no one asked for it.
    """

    jpegs: list[bytes]
    raw: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.jpegs)

    @staticmethod
    def of(frames: np.ndarray, fmt: FrameFormat, encoder: JpegEncoder | None = None) -> "EncodedFrames":
        """frames: N×H×W×3 uint8 -> their JPEGs (and the frames themselves if `fmt.raw`)."""
        jpegs = (encoder or JpegEncoder(fmt.jpeg_quality)).encode_batch(frames)
        return EncodedFrames(jpegs, frames if fmt.raw else None)

    @staticmethod
    def concat(batches: list["EncodedFrames"]) -> "EncodedFrames":
        if len(batches) == 1:
            return batches[0]
        raws = [b.raw for b in batches]
        raw = np.concatenate(raws) if all(r is not None for r in raws) else None
        return EncodedFrames([j for b in batches for j in b.jpegs], raw)


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> H×W×3 uint8 RGB (tests, clients)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class Mp4Writer:
    """Incremental MP4 (H.264 + AAC): add frame batches as they are rendered, then the audio."""

    def __init__(self, crf: int = 23):
        self._out = io.BytesIO()
        self._container = av.open(self._out, mode="w", format="mp4")
        self._crf = crf
        self._video = self._audio = None
        self._n = 0

    def add_frames(self, frames: np.ndarray) -> None:
        """frames: N×H×W×3 uint8 RGB at 25 fps."""
        if self._video is None:
            h, w = frames.shape[1:3]
            self._video = self._container.add_stream(
                "libx264", rate=FPS, options={"crf": str(self._crf), "preset": "veryfast"})
            self._video.width, self._video.height = w - w % 2, h - h % 2  # yuv420p needs even sizes
            self._video.pix_fmt = "yuv420p"
            # Every stream must exist before the first packet is muxed.
            self._audio = self._container.add_stream("aac", rate=SAMPLE_RATE_HZ, layout="mono")
        for frame in frames:
            crop = np.ascontiguousarray(frame[: self._video.height, : self._video.width])
            vf = av.VideoFrame.from_ndarray(crop, format="rgb24")
            vf.pts, vf.time_base = self._n, Fraction(1, FPS)
            self._container.mux(self._video.encode(vf))
            self._n += 1

    def finish(self, audio16k: np.ndarray) -> bytes:
        """audio16k: float32 mono, muxed after the video; returns the file."""
        if self._video is None:
            self._audio = self._container.add_stream("aac", rate=SAMPLE_RATE_HZ, layout="mono")
        else:
            self._container.mux(self._video.encode())
        _mux_audio(self._container, self._audio, audio16k)
        self._container.close()
        return self._out.getvalue()


def encode_mp4(frames: np.ndarray, audio16k: np.ndarray) -> bytes:
    """frames: N×H×W×3 uint8 at 25 fps; audio16k: float32 mono -> MP4 bytes."""
    writer = Mp4Writer()
    writer.add_frames(frames)
    return writer.finish(audio16k)


def _mux_audio(container, stream, audio16k: np.ndarray, block: int = 1024) -> None:
    for start in range(0, len(audio16k), block):
        chunk = np.ascontiguousarray(audio16k[start : start + block], np.float32).reshape(1, -1)
        af = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
        af.sample_rate, af.pts, af.time_base = SAMPLE_RATE_HZ, start, Fraction(1, SAMPLE_RATE_HZ)
        container.mux(stream.encode(af))
    container.mux(stream.encode())
