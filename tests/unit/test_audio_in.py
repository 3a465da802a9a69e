"""Audio in: PCM decoding, WAV checks, content types, resampling once to 16 kHz."""
import io
import struct
import wave

import av
import numpy as np
import pytest

from deployments.api.edge import http_status
from deployments.api.errors import ServiceError
from deployments.inputs.audio_in import (
    KSDATAFORMAT_TAIL,
    StreamResampler,
    check_wav_complete,
    decode_audio_body,
    decode_audio_file,
    parse_content_type,
    pcm16_to_float,
    read_wav_header,
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


# ---------------- declared numbers are checked before anything is decoded ----------------
def wav_with_fmt(codec=1, channels=1, rate=16000, bits=16, block=None, extensible=b"", data=b"\x00\x01" * 800,
                 data_size=None) -> bytes:
    """A RIFF/WAVE whose fmt chunk says whatever the test wants, true or not."""
    block = channels * bits // 8 if block is None else block
    fmt = struct.pack("<HHIIHH", codec, channels, rate, rate * block, block, bits) + extensible
    size = len(data) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def extensible_block(sub_codec: int, tail: bytes = KSDATAFORMAT_TAIL, valid_bits: int = 16) -> bytes:
    return struct.pack("<HHI", 22, valid_bits, 0x4) + struct.pack("<H", sub_codec) + tail


def test_wav_header_is_read_without_decoding():
    header = read_wav_header(wav_with_fmt(channels=2, rate=8000, bits=16, data=b"\x00" * 3200))
    assert (header.codec, header.channels, header.rate_hz, header.bits) == (1, 2, 8000, 16)
    assert header.duration_s == pytest.approx(0.1)


@pytest.mark.parametrize("wav,code", [
    (wav_with_fmt(rate=1), "unsupported_audio"),  # the 1 Hz WAV that grew a host by 1.7 GB
    (wav_with_fmt(rate=400_000), "unsupported_audio"),
    (wav_with_fmt(codec=0x1234), "unsupported_audio"),  # a codec FFmpeg has no decoder for
    (wav_with_fmt(codec=0x0002), "unsupported_audio"),  # ADPCM: sizes do not follow from the header
    (wav_with_fmt(bits=0, block=2), "unsupported_audio"),
    (wav_with_fmt(channels=0, block=2), "unsupported_audio"),
    (wav_with_fmt(channels=64, block=128), "unsupported_audio"),
    (wav_with_fmt(block=7), "undecodable_audio"),
    (wav_with_fmt(codec=0xFFFE, extensible=b"\x16\x00" + b"\xee" * 22), "unsupported_audio"),  # garbage GUID
    (wav_with_fmt(codec=0xFFFE, extensible=b"\x16\x00"), "undecodable_audio"),  # block cut short
    (wav_with_fmt(codec=3, bits=16), "unsupported_audio"),  # 16-bit float does not exist
])
def test_lying_or_unsupported_wav_headers_are_client_errors(wav, code):
    with pytest.raises(ServiceError) as err:
        decode_audio_file(wav)
    assert err.value.code == code and 400 <= http_status(code) < 500


def test_extensible_pcm_and_float_wavs_decode():
    pcm = np.array([0, 16384, -16384, 0] * 100, "<i2").tobytes()
    samples, rate = decode_audio_file(wav_with_fmt(codec=0xFFFE, extensible=extensible_block(1), data=pcm))
    assert rate == 16000 and np.allclose(samples[:4], [0, 0.5, -0.5, 0])
    floats = np.array([0.25] * 400, "<f4").tobytes()
    samples, _ = decode_audio_file(wav_with_fmt(codec=0xFFFE, bits=32, extensible=extensible_block(3, valid_bits=32),
                                                data=floats))
    assert np.allclose(samples, 0.25)


def test_declared_duration_over_the_limit_is_refused_before_decoding(monkeypatch):
    wav = wav_with_fmt(rate=8000, data=b"\x00\x00" * 8000)  # 1 s
    monkeypatch.setattr(av, "open", lambda *a, **k: pytest.fail("decoded a WAV over the limit"))
    with pytest.raises(ServiceError) as err:
        decode_audio_file(wav, max_duration_s=0.5)
    assert err.value.code == "too_long" and http_status("too_long") == 413
    with pytest.raises(ServiceError) as err:  # the same through /audio's body decoder
        decode_audio_body(wav, "audio/wav", 16000, max_duration_s=0.5)
    assert err.value.code == "too_long"


def test_streamed_wav_with_unknown_size_is_measured_from_what_is_present():
    wav = wav_with_fmt(rate=8000, data=b"\x00\x00" * 8000, data_size=0xFFFFFFFF)
    assert read_wav_header(wav).duration_s == pytest.approx(1.0)
    with pytest.raises(ServiceError, match="limit"):
        decode_audio_file(wav, max_duration_s=0.5)
    assert len(decode_audio_file(wav, max_duration_s=2)[0]) == 8000


def test_raw_pcm_over_the_limit_is_refused_from_its_length():
    pcm = b"\x00\x00" * 16000  # 1 s at 16 kHz, 2 s at 8 kHz
    assert len(decode_audio_body(pcm, "audio/pcm;rate=16000", 16000, max_duration_s=1.0)[0]) == 16000
    with pytest.raises(ServiceError) as err:
        decode_audio_body(pcm, "audio/pcm;rate=8000", 16000, max_duration_s=1.0)
    assert err.value.code == "too_long"


def flac_bytes(seconds: float, rate: int = 16000) -> bytes:
    """Silence as FLAC: compressed so well that its size says nothing of its length."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono")
        pcm = np.zeros((1, int(seconds * rate)), np.int16)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


def test_a_compressed_file_is_refused_once_it_decodes_past_the_limit():
    data = flac_bytes(3.0)
    assert len(data) < 10_000
    with pytest.raises(ServiceError) as err:
        decode_audio_file(data, max_duration_s=1.0)
    assert err.value.code == "too_long"
    samples, rate = decode_audio_file(data, max_duration_s=5.0)
    assert rate == 16000 and abs(len(samples) - 48000) < 1024


def test_high_rate_files_are_decoded_at_48k_at_most():
    x = (0.25 * np.sin(2 * np.pi * 440 * np.arange(19200) / 96000)).astype(np.float32)
    samples, rate = decode_audio_file(wav_bytes(x, 96000))
    assert rate == 48000 and abs(len(samples) - 9600) <= 64
    assert abs(dominant_hz(samples[500:-500], 48000) - 440) < 8


def test_only_audio_containers_are_probed_never_a_playlist_of_local_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.wav").write_bytes(wav_bytes(np.full(1600, 0.5, np.float32), 16000))
    with pytest.raises(ServiceError) as err:  # FFmpeg's concat demuxer would read ./secret.wav
        decode_audio_file(b"ffconcat version 1.0\nfile secret.wav\n")
    assert err.value.code == "undecodable_audio"
    for fmt, codec in [("flac", "flac"), ("mp3", "libmp3lame"), ("ogg", "libopus"), ("mp4", "aac")]:
        rate_hz = 48000 if codec == "libopus" else 16000
        samples, rate = decode_audio_file(encoded(fmt, codec, rate_hz))
        assert rate == rate_hz and len(samples) > rate_hz // 2


def encoded(fmt: str, codec: str, rate_hz: int) -> bytes:
    """One second of a tone in a container and codec, as a client would upload it."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate_hz, layout="mono")
        tone = (np.sin(np.arange(rate_hz) / 9) * 8000).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
        frame.sample_rate = rate_hz
        to_codec = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate_hz)
        for part in [*to_codec.resample(frame), None]:
            for packet in stream.encode(part):
                out.mux(packet)
    return buf.getvalue()
