"""Audio in: decode what clients send and resample it once to 16 kHz mono float32.

Clients send PCM16LE at the session's rate over the WebSocket, or a WAV / raw
PCM16 body over HTTP. Resampling uses FFmpeg's resampler through PyAV,
stateful per stream so chunk boundaries leave no seams.

Nothing a client declares is trusted before it is checked: a WAV's rate, channels,
sample size and the duration they imply are read from its header and refused before
FFmpeg allocates anything (a WAV declaring 1 Hz once grew a host by 1.7 GB on
resampling), and any other file is counted as it decodes, so memory stays bounded
by the duration limit whatever the header says. Every failure is a ServiceError.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import av
import numpy as np

from models.base import SAMPLE_RATE_HZ

from ..api.errors import ServiceError
from ..config import Limits

WAV_TYPES = {"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"}
PCM_LE_TYPES = {"audio/pcm", "audio/x-pcm", "audio/pcm16", "application/octet-stream"}
PCM_BE_TYPES = {"audio/l16"}  # RFC 2586: network byte order

MIN_RATE_HZ, MAX_RATE_HZ = 8000, 192000
MAX_CHANNELS = 8
# Decoded files are brought down to at most this rate (speech needs 16 kHz): a clip's
# memory is then bounded by its duration alone, not by a 192 kHz header.
MAX_DECODED_RATE_HZ = 48000
DEFAULT_MAX_DURATION_S = Limits().max_render_audio_s

# WAV codecs whose sizes follow from the header (format tag -> bits per sample allowed).
WAV_PCM, WAV_FLOAT, WAV_ALAW, WAV_MULAW, WAV_EXTENSIBLE = 0x0001, 0x0003, 0x0006, 0x0007, 0xFFFE
WAV_BITS = {WAV_PCM: {8, 16, 24, 32}, WAV_FLOAT: {32, 64}, WAV_ALAW: {8}, WAV_MULAW: {8}}
# WAVE_FORMAT_EXTENSIBLE's sub-format GUID: the format tag, then this fixed tail.
KSDATAFORMAT_TAIL = bytes.fromhex("000000001000800000aa00389b71")
UNKNOWN_DATA_SIZES = (0, 0xFFFFFFFF)  # streaming writers leave the data size unknown

# The demuxers an upload may use. FFmpeg probes any of its formats otherwise, and some open
# other files: an `ffconcat` upload naming `var/…/x.wav` would render a file of the server's.
AUDIO_CONTAINERS = "wav,w64,flac,mp3,ogg,matroska,webm,mov,mp4,m4a,aac,aiff,caf,au,wv"

# What PyAV and FFmpeg raise on a crafted file (beyond FFmpegError): each is a bad upload, not a fault.
DECODE_ERRORS = (av.error.FFmpegError, ValueError, IndexError, AttributeError, TypeError, OverflowError,
                 ZeroDivisionError, EOFError, struct.error)


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


def decode_audio_body(data: bytes, content_type: str, default_rate_hz: int,
                      max_duration_s: float = DEFAULT_MAX_DURATION_S) -> tuple[np.ndarray, int]:
    """An HTTP audio body -> (float32 mono samples, their rate); over `max_duration_s` is refused
    from the declared numbers, before any sample is converted."""
    if not data:
        raise ServiceError("bad_audio", "empty audio body")
    kind, params = parse_content_type(content_type)
    if kind in WAV_TYPES:
        return decode_audio_file(data, expect_wav=True, max_duration_s=max_duration_s)
    if kind in PCM_LE_TYPES or kind in PCM_BE_TYPES:
        rate = _rate_param(params, default_rate_hz)
        if params.get("channels", "1") != "1":
            raise ServiceError("unsupported_audio", "raw PCM must be mono (channels=1)")
        check_pcm16(data)
        check_duration(len(data) / 2 / rate, max_duration_s)
        return pcm16_to_float(data, big_endian=kind in PCM_BE_TYPES), rate
    raise ServiceError("unsupported_media_type",
        f"audio content type {kind or '(none)'!r} not supported; send audio/wav or audio/pcm;rate=<Hz> (PCM16LE mono)",
    )


def _rate_param(params: dict[str, str], default: int) -> int:
    try:
        rate = int(params.get("rate", default))
    except ValueError:
        raise ServiceError("unsupported_audio", f"rate={params.get('rate')!r} is not an integer") from None
    return check_rate(rate)


def check_rate(rate_hz: int) -> int:
    """A declared sample rate, refused outside what speech input can be (a tiny rate would
    make resampling to 16 kHz allocate thousands of times the upload)."""
    if not MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ:
        raise ServiceError("unsupported_audio", f"sample rate {rate_hz} Hz out of range {MIN_RATE_HZ}..{MAX_RATE_HZ}")
    return rate_hz


def check_duration(duration_s: float, max_duration_s: float) -> None:
    if duration_s > max_duration_s:
        raise ServiceError("too_long", f"audio is {duration_s:.1f} s; the limit is {max_duration_s:.0f} s")


def decode_audio_file(data: bytes, expect_wav: bool = False,
                      max_duration_s: float = DEFAULT_MAX_DURATION_S) -> tuple[np.ndarray, int]:
    """Any audio file FFmpeg reads (WAV, FLAC, MP3, Ogg...) -> (float32 mono, rate ≤ 48 kHz).
    A WAV's header is checked first; every file is refused once it decodes past `max_duration_s`."""
    if expect_wav or data[:4] == b"RIFF":
        check_duration(read_wav_header(data).duration_s, max_duration_s)
    try:
        with av.open(io.BytesIO(data), mode="r", options={"format_whitelist": AUDIO_CONTAINERS}) as container:
            stream = _audio_stream(container)
            rate_hz = min(check_rate(stream.codec_context.sample_rate), MAX_DECODED_RATE_HZ)
            samples = _decode_mono(container, stream, rate_hz, int(max_duration_s * rate_hz))
    except ServiceError:
        raise
    except DECODE_ERRORS as err:
        raise ServiceError("undecodable_audio", f"cannot decode audio: {err}") from None
    return samples, rate_hz


def _audio_stream(container):
    """The first audio stream, refused when FFmpeg has no decoder for it or its layout is odd."""
    if not container.streams.audio:
        raise ServiceError("undecodable_audio", "the file has no audio stream")
    stream = container.streams.audio[0]
    if stream.codec_context is None:  # FFmpeg knows no decoder for this codec
        raise ServiceError("unsupported_audio", "the file's audio codec is not supported")
    if not 1 <= stream.codec_context.channels <= MAX_CHANNELS:
        raise ServiceError("unsupported_audio",
                           f"{stream.codec_context.channels} channels; 1..{MAX_CHANNELS} are supported")
    return stream


def _decode_mono(container, stream, rate_hz: int, max_samples: int) -> np.ndarray:
    """Decode to float32 mono at rate_hz, counting as it goes: past max_samples is `too_long`
    (a compressed file's header says nothing reliable about its length)."""
    to_mono = av.AudioResampler(format="flt", layout="mono", rate=rate_hz)
    chunks, total = [], 0
    for frame in container.decode(stream):
        check_rate(frame.sample_rate)  # a frame may claim another rate than its stream
        for out in to_mono.resample(frame):
            total = _keep(chunks, out, total, max_samples, rate_hz)
    for out in to_mono.resample(None):
        total = _keep(chunks, out, total, max_samples, rate_hz)
    if not total:
        raise ServiceError("undecodable_audio", "the audio stream holds no samples")
    return np.concatenate(chunks).astype(np.float32, copy=False)


def _keep(chunks: list[np.ndarray], frame, total: int, max_samples: int, rate_hz: int) -> int:
    samples = frame.to_ndarray().reshape(-1)
    total += len(samples)
    if total > max_samples:
        raise ServiceError("too_long", f"audio runs past the limit of {max_samples / rate_hz:.0f} s")
    chunks.append(samples)
    return total


@dataclass(frozen=True)
class WavHeader:
    """What a WAV's fmt and data chunks declare, each checked."""

    codec: int
    channels: int
    rate_hz: int
    bits: int
    block_bytes: int
    data_bytes: int

    @property
    def duration_s(self) -> float:
        return self.data_bytes / (self.block_bytes * self.rate_hz)


def check_wav_complete(data: bytes) -> None:
    """Refuse a RIFF/WAVE whose header promises more data than it holds (truncated upload)
    or declares a format this server does not take."""
    read_wav_header(data)


def read_wav_header(data: bytes) -> WavHeader:
    """The checked header of a RIFF/WAVE file, read without decoding any sample."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ServiceError("undecodable_audio", "not a RIFF/WAVE file")
    fmt = None
    for chunk_id, start, size in _wav_chunks(data):
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(data[start : start + size])
        elif chunk_id == b"data":
            if fmt is None:
                raise ServiceError("undecodable_audio", "WAV data chunk comes before its fmt chunk")
            return WavHeader(*fmt, data_bytes=_data_bytes(data, start, size))
    raise ServiceError("undecodable_audio", "WAV file has no data chunk")


def _wav_chunks(data: bytes):
    """(chunk id, offset of its body, declared size) for each RIFF chunk header present."""
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, pos)
        yield chunk_id, pos + 8, size
        pos += 8 + size + (size & 1)


def _data_bytes(data: bytes, start: int, size: int) -> int:
    present = len(data) - start
    if size in UNKNOWN_DATA_SIZES:
        return present
    if size > present:
        raise ServiceError("truncated_audio", f"WAV data chunk declares {size} bytes but only {present} are present")
    return size


def _parse_fmt(body: bytes) -> tuple[int, int, int, int, int]:
    """(codec, channels, rate, bits, block bytes) from a fmt chunk, refused unless FFmpeg
    decodes it without surprises and the sizes agree."""
    if len(body) < 16:
        raise ServiceError("undecodable_audio", f"WAV fmt chunk is {len(body)} bytes; at least 16 expected")
    codec, channels, rate_hz, _, block_bytes, bits = struct.unpack_from("<HHIIHH", body)
    if codec == WAV_EXTENSIBLE:
        codec = _extensible_codec(body)
    if codec not in WAV_BITS:
        raise ServiceError("unsupported_audio",
                           f"WAV codec 0x{codec:04x} is not supported; send PCM, float, A-law or µ-law")
    if not 1 <= channels <= MAX_CHANNELS:
        raise ServiceError("unsupported_audio", f"WAV declares {channels} channels; 1..{MAX_CHANNELS} are supported")
    if bits not in WAV_BITS[codec]:
        raise ServiceError("unsupported_audio", f"WAV declares {bits} bits per sample for codec 0x{codec:04x}; "
                                                f"{sorted(WAV_BITS[codec])} are supported")
    check_rate(rate_hz)
    if block_bytes != channels * bits // 8:
        raise ServiceError("undecodable_audio",
                           f"WAV block align {block_bytes} does not match {channels} channels of {bits} bits")
    return codec, channels, rate_hz, bits, block_bytes


def _extensible_codec(body: bytes) -> int:
    """The codec inside a WAVE_FORMAT_EXTENSIBLE block, refused when the block is malformed."""
    if len(body) < 40 or struct.unpack_from("<H", body, 16)[0] < 22:
        raise ServiceError("undecodable_audio", "WAVE_FORMAT_EXTENSIBLE block is too short")
    guid = body[24:40]
    if guid[2:] != KSDATAFORMAT_TAIL:
        raise ServiceError("unsupported_audio", "WAVE_FORMAT_EXTENSIBLE with an unknown sub-format")
    return struct.unpack_from("<H", guid)[0]


def decode_to_16k(data: bytes, content_type: str, default_rate_hz: int,
                  max_duration_s: float) -> tuple[np.ndarray, float]:
    """An HTTP audio body (WAV, raw PCM16, or with content type "" any audio file) -> (float32
    mono at 16 kHz, its length in seconds). The one place client uploads are decoded and
    resampled: the session's host, which knows the session's rate (raw PCM without `rate=`)."""
    if content_type:
        samples, rate_hz = decode_audio_body(data, content_type, default_rate_hz, max_duration_s)
    else:
        samples, rate_hz = decode_audio_file(data, max_duration_s=max_duration_s)
    return resample_to_16k(samples, rate_hz), round(len(samples) / rate_hz, 3)
