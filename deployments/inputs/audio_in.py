"""Audio in: decode what clients send and resample it once to 16 kHz mono float32.

Clients send PCM16LE at the session's rate over the WebSocket, or a WAV / raw
PCM16 body over HTTP. Resampling uses FFmpeg's resampler through PyAV,
stateful per stream so chunk boundaries leave no seams.
"""
from __future__ import annotations

import io
import struct

import av
import numpy as np

from models.base import SAMPLE_RATE_HZ

from ..api.errors import ServiceError

WAV_TYPES = {"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"}
PCM_LE_TYPES = {"audio/pcm", "audio/x-pcm", "audio/pcm16", "application/octet-stream"}
PCM_BE_TYPES = {"audio/l16"}  # RFC 2586: network byte order


class StreamResampler:
    """float32 mono chunks at `rate_hz` in, float32 mono at 16 kHz out."""

    def __init__(self, rate_hz: int):
        self.rate_hz = rate_hz
        self._resampler = (
            None if rate_hz == SAMPLE_RATE_HZ
            else av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE_HZ)
        )

    def push(self, samples: np.ndarray) -> np.ndarray:
        if self._resampler is None or not len(samples):
            return samples.astype(np.float32, copy=False)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1).astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = self.rate_hz
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        """The resampler's delayed tail (end of an utterance); it stays usable after."""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        tail = self._collect(self._resampler.resample(None))
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE_HZ)
        return tail

    @staticmethod
    def _collect(frames) -> np.ndarray:
        if not frames:
            return np.zeros(0, np.float32)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32, copy=False)


def resample_to_16k(samples: np.ndarray, rate_hz: int) -> np.ndarray:
    """A whole clip at once: float32 mono at 16 kHz."""
    r = StreamResampler(rate_hz)
    return np.concatenate([r.push(samples), r.flush()])


def check_pcm16(data: bytes) -> None:
    if len(data) % 2:
        raise ServiceError("bad_audio", f"PCM16 needs an even number of bytes, got {len(data)}")


def pcm16_to_float(data: bytes, big_endian: bool = False) -> np.ndarray:
    """PCM16 mono bytes -> float32 in [-1, 1)."""
    check_pcm16(data)
    pcm = np.frombuffer(data, dtype=">i2" if big_endian else "<i2")
    return pcm.astype(np.float32) / 32768.0


def parse_content_type(content_type: str) -> tuple[str, dict[str, str]]:
    """'audio/pcm; rate=24000' -> ('audio/pcm', {'rate': '24000'})."""
    main, *params = [p.strip() for p in (content_type or "").split(";")]
    kv = {}
    for p in params:
        k, _, v = p.partition("=")
        kv[k.strip().lower()] = v.strip().strip('"')
    return main.lower(), kv


def decode_audio_body(data: bytes, content_type: str, default_rate_hz: int) -> tuple[np.ndarray, int]:
    """An HTTP audio body -> (float32 mono samples, their rate)."""
    if not data:
        raise ServiceError("bad_audio", "empty audio body")
    kind, params = parse_content_type(content_type)
    if kind in WAV_TYPES:
        return decode_audio_file(data, expect_wav=True)
    if kind in PCM_LE_TYPES or kind in PCM_BE_TYPES:
        rate = _rate_param(params, default_rate_hz)
        if params.get("channels", "1") != "1":
            raise ServiceError("unsupported_audio", "raw PCM must be mono (channels=1)")
        return pcm16_to_float(data, big_endian=kind in PCM_BE_TYPES), rate
    raise ServiceError("unsupported_media_type",
        f"audio content type {kind or '(none)'!r} not supported; send audio/wav or audio/pcm;rate=<Hz> (PCM16LE mono)",
    )


def _rate_param(params: dict[str, str], default: int) -> int:
    try:
        rate = int(params.get("rate", default))
    except ValueError:
        raise ServiceError("unsupported_audio", f"rate={params.get('rate')!r} is not an integer") from None
    if not 8000 <= rate <= 192000:
        raise ServiceError("unsupported_audio", f"sample rate {rate} Hz out of range 8000..192000")
    return rate


def decode_audio_file(data: bytes, expect_wav: bool = False) -> tuple[np.ndarray, int]:
    """Any audio file FFmpeg reads (WAV, FLAC, MP3, Ogg...) -> (float32 mono, rate)."""
    if expect_wav or data[:4] == b"RIFF":
        check_wav_complete(data)
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise ServiceError("undecodable_audio", "the file has no audio stream")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate or stream.rate
            to_mono = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks = [f.to_ndarray().reshape(-1) for frame in container.decode(stream) for f in to_mono.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in to_mono.resample(None)]
    except ServiceError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError) as err:
        raise ServiceError("undecodable_audio", f"cannot decode audio: {err}") from None
    if not chunks:
        raise ServiceError("undecodable_audio", "the audio stream holds no samples")
    return np.concatenate(chunks).astype(np.float32, copy=False), int(rate)


def check_wav_complete(data: bytes) -> None:
    """Refuse a RIFF/WAVE whose header promises more data than it holds (truncated upload)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ServiceError("undecodable_audio", "not a RIFF/WAVE file")
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, pos)
        if chunk_id == b"data":
            if size == 0xFFFFFFFF or size == 0:  # streaming writers leave it unknown
                return
            if pos + 8 + size > len(data):
                raise ServiceError("truncated_audio",
                    f"WAV data chunk declares {size} bytes but only {len(data) - pos - 8} are present",
                )
            return
        pos += 8 + size + (size & 1)
    raise ServiceError("undecodable_audio", "WAV file has no data chunk")
