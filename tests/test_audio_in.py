"""Audio in: PCM decoding, WAV checks, content types, resampling once to 16 kHz."""
import io
import wave

import numpy as np
import pytest

from deployments.api.edge import http_status
from deployments.api.errors import ServiceError
from deployments.inputs.audio_in import (
    StreamResampler,
    check_wav_complete,
    decode_audio_body,
    decode_audio_file,
    parse_content_type,
    pcm16_to_float,
    resample_to_16k,
)


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()]


def test_pcm16_little_and_big_endian():
    pcm = np.array([0, 16384, -32768], "<i2")
    assert pcm16_to_float(pcm.tobytes()).tolist() == [0.0, 0.5, -1.0]
    assert pcm16_to_float(pcm.astype(">i2").tobytes(), big_endian=True).tolist() == [0.0, 0.5, -1.0]
    with pytest.raises(ServiceError, match="even number"):
        pcm16_to_float(b"\x00\x01\x02")


@pytest.mark.parametrize("rate", [8000, 22050, 24000, 44100, 48000])
def test_resampling_keeps_length_and_pitch(rate):
    t = np.arange(rate * 2) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = resample_to_16k(tone, rate)
    assert abs(len(out) - 32000) <= 32  # two seconds, within a resampler filter's length
    assert abs(dominant_hz(out[1000:-1000], 16000) - 440) < 2


def test_streaming_resampler_matches_whole_clip():
    rate = 24000
    x = np.random.default_rng(0).uniform(-0.5, 0.5, rate).astype(np.float32)
    r = StreamResampler(rate)
    pieces = [r.push(x[i : i + 777]) for i in range(0, len(x), 777)] + [r.flush()]
    streamed = np.concatenate(pieces)
    whole = resample_to_16k(x, rate)
    assert len(streamed) == len(whole)
    assert np.abs(streamed - whole).max() < 1e-4  # chunk boundaries leave no seams


def test_16k_is_passed_through_untouched():
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    assert np.array_equal(StreamResampler(16000).push(x), x)


def test_wav_decoding_and_truncation():
    x = (0.25 * np.sin(np.arange(4800) / 5)).astype(np.float32)
    data = wav_bytes(x, 24000)
    samples, rate = decode_audio_file(data)
    assert rate == 24000 and len(samples) == 4800 and np.abs(samples - x).max() < 1e-3
    with pytest.raises(ServiceError) as err:
        check_wav_complete(data[:-1000])
    assert err.value.code == "truncated_audio" and http_status(err.value.code) == 422
    with pytest.raises(ServiceError):
        decode_audio_file(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(ServiceError):
        decode_audio_file(b"definitely not audio" * 50)


def test_content_types():
    assert parse_content_type("audio/pcm; rate=24000") == ("audio/pcm", {"rate": "24000"})
    pcm = (np.ones(100) * 1000).astype("<i2").tobytes()
    samples, rate = decode_audio_body(pcm, "audio/pcm;rate=24000", 16000)
    assert rate == 24000 and len(samples) == 100
    assert decode_audio_body(pcm, "audio/pcm", 22050)[1] == 22050  # the session's rate by default
    with pytest.raises(ServiceError) as err:
        decode_audio_body(pcm, "text/plain", 16000)
    assert http_status(err.value.code) == 415
    with pytest.raises(ServiceError):
        decode_audio_body(pcm, "audio/pcm;rate=abc", 16000)
    with pytest.raises(ServiceError):
        decode_audio_body(b"", "audio/pcm", 16000)
