"""Bad inputs at the input layer: whatever a client sends, the answer is a ServiceError whose code
the edge maps to a 4xx, never another exception (a 500), and a lying header is refused before
it costs memory. Property-based where the input space is large (random bytes, mutated WAV
headers, PNG chunks, consent text, WebSocket message streams); the cases a fault-and-fuzz probe
of the running server found (issue 19) are named one by one.
"""
from __future__ import annotations

import asyncio
import io
import itertools
import re
import struct
import tracemalloc
import wave
import zlib

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from deployments.api.edge import HTTP_STATUS
from deployments.api.errors import ServiceError
from deployments.config import Limits
from deployments.inputs.audio_in import (
    KSDATAFORMAT_TAIL,
    MAX_DECODED_RATE_HZ,
    MIN_RATE_HZ,
    decode_audio_body,
    decode_audio_file,
)
from deployments.inputs.personas import BIDI_CONTROLS, check_consent, decode_portrait
from deployments.inputs.ws_in import InputForwarder

FUZZ = settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
MAX_DURATION_S = 5.0
LIMITS = Limits()
WAV_TYPES = ["audio/wav", "audio/x-wav", "audio/pcm;rate=16000", "audio/L16;rate=8000", "audio/pcm;rate=1",
             "audio/pcm;channels=2", "text/plain", ""]


# ---------------- what every refusal must look like ----------------
def refused_cleanly(call):
    """call()'s result, or None if it raised a ServiceError with a 4xx code from the edge's table;
    any other exception propagates and fails the test (it would be an uncaught 500)."""
    try:
        return call()
    except ServiceError as err:
        assert err.code in HTTP_STATUS, f"{err.code} is not in the edge's table"
        assert 400 <= HTTP_STATUS[err.code] < 500, f"{err.code} answers {HTTP_STATUS[err.code]}"
        return None


def check_decoded(result, max_duration_s: float = MAX_DURATION_S) -> None:
    """An accepted clip: float32 mono at a rate the host takes, within the duration limit."""
    if result is None:
        return
    samples, rate_hz = result
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert MIN_RATE_HZ <= rate_hz <= 192000
    assert len(samples) / rate_hz <= max_duration_s + 0.1


# ---------------- inputs ----------------
def wav(codec=1, channels=1, rate=16000, bits=16, block=None, extra=b"", data=b"\x00\x01" * 400,
        data_size=None, byte_rate=None) -> bytes:
    """A RIFF/WAVE saying whatever it is told, true or not."""
    block = (channels * bits // 8) & 0xFFFF if block is None else block
    byte_rate = (rate * block) & 0xFFFFFFFF if byte_rate is None else byte_rate
    fmt = struct.pack("<HHIIHH", codec, channels, rate, byte_rate, block, bits) + extra
    size = len(data) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def real_wav(rate=16000, n=1600) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes((np.sin(np.arange(n) / 7) * 8000).astype("<i2").tobytes())
    return buf.getvalue()


def image(fmt="PNG", w=96, h=80) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (h, w, 3), np.uint8)).save(buf, fmt)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with(extra: bytes, before_idat: bool) -> bytes:
    png = image()
    at = 8 + 25 if before_idat else len(png) - 12
    return png[:at] + extra + png[at:]


def png_header_only(w: int, h: int) -> bytes:
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b"")


def inflating(size_bytes: int) -> bytes:
    return zlib.compress(b"\x00" * size_bytes, 9)


# ---------------- the probe's cases, by name ----------------
NAMED_CASES = {
    "WAV declaring 1 Hz (grew a host by 1.7 GB)": (lambda: decode_audio_file(wav(rate=1, data=b"\x00" * 8000)),
                                                  "unsupported_audio"),
    "WAV with an unknown codec": (lambda: decode_audio_file(wav(codec=0x1234)), "unsupported_audio"),
    "WAV with 0 bits per sample": (lambda: decode_audio_file(wav(bits=0, block=2)), "unsupported_audio"),
    "WAV with a garbage EXTENSIBLE block": (
        lambda: decode_audio_file(wav(codec=0xFFFE, extra=b"\x16\x00" + b"\xa5" * 22)), "unsupported_audio"),
    "WAV on /audio with an unknown codec": (
        lambda: decode_audio_body(wav(codec=0x1234), "audio/wav", 16000), "unsupported_audio"),
    "WAV on /audio with 0 bits per sample": (
        lambda: decode_audio_body(wav(bits=0, block=2), "audio/wav", 16000), "unsupported_audio"),
    "WAV on /audio, EXTENSIBLE cut short": (
        lambda: decode_audio_body(wav(codec=0xFFFE, extra=b"\x16\x00"), "audio/wav", 16000), "undecodable_audio"),
    "WAV whose data precedes its fmt": (
        lambda: decode_audio_file(b"RIFF\x10\x00\x00\x00WAVEdata\x04\x00\x00\x00\x00\x00\x00\x00"),
        "undecodable_audio"),
    "WAV declaring more data than sent": (lambda: decode_audio_file(wav(data_size=10**6)), "truncated_audio"),
    "WAV at 192 kHz, 8 channels, 64-bit, past the limit": (
        lambda: decode_audio_file(wav(codec=3, channels=8, rate=192000, bits=64, data=b"\x00" * 64 * 192000 * 6),
                                  max_duration_s=MAX_DURATION_S), "too_long"),
    "raw PCM at 1 Hz": (lambda: decode_audio_body(b"\x00" * 8000, "audio/pcm;rate=1", 16000), "unsupported_audio"),
    "raw PCM, odd length": (lambda: decode_audio_body(b"\x00" * 7, "audio/pcm", 16000), "bad_audio"),
    "raw PCM past the limit": (
        lambda: decode_audio_body(b"\x00" * 200_000, "audio/pcm;rate=8000", 16000, max_duration_s=MAX_DURATION_S),
        "too_long"),
    "text as audio": (lambda: decode_audio_file(b"hello " * 1000), "undecodable_audio"),
    "PNG whose zTXt inflates to 20 MB": (
        lambda: decode_portrait(png_with(png_chunk(b"zTXt", b"c\x00\x00" + inflating(20_000_000)), True), LIMITS),
        "too_large"),
    "PNG whose iCCP inflates to 68 MB": (
        lambda: decode_portrait(png_with(png_chunk(b"iCCP", b"i\x00\x00" + inflating(68_000_000)), True), LIMITS),
        "too_large"),
    "PNG with a late zTXt of 20 MB": (
        lambda: decode_portrait(png_with(png_chunk(b"zTXt", b"c\x00\x00" + inflating(20_000_000)), False), LIMITS),
        "too_large"),
    "PNG of 60000x60000 (a decompression bomb)": (lambda: decode_portrait(png_header_only(60000, 60000), LIMITS),
                                                 "too_large"),
    "PNG of 5000x5000": (lambda: decode_portrait(png_header_only(5000, 5000), LIMITS), "too_large"),
    "PNG of 0x0": (lambda: decode_portrait(png_header_only(0, 0), LIMITS), "not_an_image"),
    "PNG cut in half": (lambda: decode_portrait(image()[: len(image()) // 2], LIMITS), "not_an_image"),
    "JPEG cut in half": (lambda: decode_portrait(image("JPEG")[:400], LIMITS), "not_an_image"),
    "GIF": (lambda: decode_portrait(image("GIF"), LIMITS), "unsupported_media_type"),
    "consent with a right-to-left override": (lambda: check_consent("I agree to \u202eesu siht"), "invalid_consent"),
    "consent with an escape sequence": (lambda: check_consent("I agree \x1b[31m to this use"), "invalid_consent"),
    "consent with a NUL": (lambda: check_consent("I agree\x00 to this use"), "invalid_consent"),
    "consent as a file": (lambda: check_consent(io.BytesIO(b"I agree to this use")), "invalid_consent"),
}


@pytest.mark.parametrize("name", NAMED_CASES)
def test_each_case_the_probe_found_is_a_clean_client_error(name):
    call, code = NAMED_CASES[name]
    with pytest.raises(ServiceError) as err:
        call()
    assert err.value.code == code, err.value.reason
    assert 400 <= HTTP_STATUS[code] < 500


LYING_WAVS = {
    "1 Hz": wav(rate=1, data=b"\x00" * 8000),
    "unknown codec": wav(codec=0x1234, data=b"\x00" * 8000),
    "192 kHz x 8 ch x 64 bit, 600 s declared, streamed": wav(codec=3, channels=8, rate=192000, bits=64,
                                                            data=b"\x00" * 8192, data_size=0xFFFFFFFF - 1),
    "4 GB declared": wav(data=b"\x00" * 8000, data_size=0xFFFFFFF0),
    "10 h declared at 8 kHz": wav(rate=8000, data=b"\x00" * 8000, data_size=8000 * 2 * 36000),
}


@pytest.mark.parametrize("name", LYING_WAVS)
def test_a_lying_wav_is_refused_from_its_header_before_ffmpeg_allocates(name, monkeypatch):
    monkeypatch.setattr(av, "open", lambda *a, **k: pytest.fail("a lying header reached the decoder"))
    tracemalloc.start()
    try:
        with pytest.raises(ServiceError) as err:
            decode_audio_body(LYING_WAVS[name], "audio/wav", 16000, max_duration_s=120.0)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 400 <= HTTP_STATUS[err.value.code] < 500
    assert peak_bytes < 256 * 1024  # the header is read in place: nothing like the 1.7 GB of the probe


# ---------------- audio, property-based ----------------
@FUZZ
@given(data=st.binary(max_size=4096), content_type=st.sampled_from(WAV_TYPES))
def test_random_bytes_as_audio(data, content_type):
    check_decoded(refused_cleanly(lambda: decode_audio_file(data, max_duration_s=MAX_DURATION_S)))
    check_decoded(refused_cleanly(lambda: decode_audio_body(data, content_type, 16000, MAX_DURATION_S)))


@FUZZ
@given(data=st.binary(max_size=2048), prefix=st.sampled_from([b"RIFF", b"fLaC", b"OggS", b"ID3\x03", b"\xff\xfb",
                                                               b"ffconcat version 1.0\n", b"#EXTM3U\n"]))
def test_random_bytes_behind_an_audio_magic(data, prefix):
    check_decoded(refused_cleanly(lambda: decode_audio_file(prefix + data, max_duration_s=MAX_DURATION_S)))


u16, u32 = st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)
wav_headers = st.builds(
    wav,
    codec=st.one_of(st.sampled_from([0, 1, 2, 3, 6, 7, 0x11, 0x55, 0xFFFE]), u16),
    channels=st.one_of(st.integers(0, 9), u16),
    rate=st.one_of(st.sampled_from([0, 1, 7999, 8000, 44100, 192000, 192001]), u32),
    bits=st.one_of(st.sampled_from([0, 4, 8, 12, 16, 24, 32, 64]), u16),
    block=st.one_of(st.none(), u16),
    extra=st.one_of(st.just(b""), st.binary(max_size=40),
                    st.builds(lambda tag, tail: b"\x16\x00\x10\x00\x04\x00\x00\x00" + struct.pack("<H", tag) + tail,
                              u16, st.one_of(st.just(KSDATAFORMAT_TAIL), st.binary(min_size=14, max_size=14)))),
    data=st.binary(max_size=2048),
    data_size=st.one_of(st.none(), st.sampled_from([0, 1, 0xFFFFFFFF]), u32),
    byte_rate=st.one_of(st.none(), u32),
)


@FUZZ
@given(data=wav_headers)
def test_mutated_wav_headers_are_decoded_or_refused_in_bounded_memory(data):
    tracemalloc.start()
    try:
        result = refused_cleanly(lambda: decode_audio_body(data, "audio/wav", 16000, MAX_DURATION_S))
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    check_decoded(result)
    # float32 mono at ≤ 48 kHz from ≥ 1 byte a sample, with its copies: never the header's promise
    assert peak_bytes < 64 * len(data) + 1024 * 1024


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), min_size=1, max_size=6),
       rate=st.sampled_from([8000, 16000, 48000]))
def test_byte_flips_in_a_real_wav_header(flips, rate):
    data = bytearray(real_wav(rate))
    for at, value in flips:
        data[at] = value
    check_decoded(refused_cleanly(lambda: decode_audio_file(bytes(data), max_duration_s=MAX_DURATION_S)))


@FUZZ
@given(data=st.binary(max_size=512).filter(lambda b: len(b) % 2 == 0),
       kind=st.sampled_from(["audio/pcm", "audio/L16", "application/octet-stream", "audio/x-pcm"]),
       params=st.dictionaries(st.sampled_from(["rate", "channels", "RATE", "x"]), st.text(max_size=12), max_size=3))
def test_raw_pcm_with_any_parameters(data, kind, params):
    content_type = "; ".join([kind, *(f"{k}={v}" for k, v in params.items())])
    check_decoded(refused_cleanly(lambda: decode_audio_body(data or b"\x00\x00", content_type, 16000,
                                                            MAX_DURATION_S)))


def test_accepted_files_come_out_at_48k_at_most():
    samples, rate = decode_audio_file(wav(rate=192000, data=b"\x00\x00" * 19200))
    assert rate == MAX_DECODED_RATE_HZ and abs(len(samples) - 4800) <= 64


# ---------------- portraits, property-based ----------------
CHUNK_TYPES = [b"tEXt", b"zTXt", b"iTXt", b"iCCP", b"eXIf", b"gAMA", b"cHRM", b"sRGB", b"pHYs", b"tRNS", b"PLTE",
               b"sBIT", b"bKGD", b"hIST", b"tIME", b"acTL", b"fcTL", b"fdAT", b"IDAT", b"IHDR", b"IEND"]
chunk_bodies = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda key, size: key + b"\x00\x00" + inflating(size), st.binary(max_size=8),
              st.integers(0, 3_000_000)),
)


@FUZZ
@given(kind=st.one_of(st.sampled_from(CHUNK_TYPES), st.binary(min_size=4, max_size=4)), body=chunk_bodies,
       before_idat=st.booleans(), good_crc=st.booleans())
def test_png_chunk_fuzz(kind, body, before_idat, good_crc):
    chunk = png_chunk(kind, body)
    if not good_crc:
        chunk = chunk[:-4] + b"\x00\x00\x00\x00"
    refused_cleanly(lambda: decode_portrait(png_with(chunk, before_idat), LIMITS))


@FUZZ
@given(fmt=st.sampled_from(["PNG", "JPEG", "WEBP"]),
       flips=st.lists(st.tuples(st.integers(0, 299), st.integers(0, 255)), min_size=1, max_size=8))
def test_byte_flips_in_real_images(fmt, flips):
    data = bytearray(image(fmt))
    for at, value in flips:
        data[at % len(data)] = value
    result = refused_cleanly(lambda: decode_portrait(bytes(data), LIMITS))
    if result is not None:
        img, _ = result
        assert img.mode == "RGB" and max(img.size) <= LIMITS.portrait_max_side_px


@FUZZ
@given(w=st.integers(0, 2**31 - 1), h=st.integers(0, 2**31 - 1))
def test_any_declared_png_size_is_refused_or_within_limits(w, h):
    refused_cleanly(lambda: decode_portrait(png_header_only(w, h), LIMITS))


@FUZZ
@given(data=st.binary(max_size=1024), prefix=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF",
                                                                  b"GIF89a", b"BM", b"II*\x00", b""]))
def test_random_bytes_behind_an_image_magic(data, prefix):
    refused_cleanly(lambda: decode_portrait(prefix + data, LIMITS))


# ---------------- consent ----------------
@FUZZ
@given(text=st.one_of(st.text(max_size=80), st.text(st.characters(codec="utf-8"), max_size=80),
                      st.text(st.sampled_from(sorted(BIDI_CONTROLS) + ["a", " ", "\n", "\x00", "\x85"]))))
def test_consent_is_stored_clean_or_refused(text):
    stored = refused_cleanly(lambda: check_consent(text))
    if stored is not None:
        stored.encode("utf-8")  # storable
        assert not set(stored) & BIDI_CONTROLS
        assert all(c in "\t\n\r" or not (ord(c) < 32 or 127 <= ord(c) < 160) for c in stored)


# ---------------- WebSocket audio overflow ----------------
class BufferHost:
    """A session whose speech buffer holds capacity_bytes; it only fills (nothing renders).
    Message i is bytes of value i, so the accepted messages can be told apart in joined pushes."""

    def __init__(self, capacity_bytes: int):
        self.capacity_bytes, self.buffered_bytes, self.reasons = capacity_bytes, 0, []
        self.accepted: set[int] = set()

    async def push(self, data: bytes) -> None:
        await asyncio.sleep(0)
        if self.buffered_bytes + len(data) > self.capacity_bytes:
            raise ServiceError("audio_buffer_full", "full")
        self.buffered_bytes += len(data)
        self.accepted |= {value for value, _ in itertools.groupby(data)}

    async def control(self, event) -> None:
        pass

    async def report(self, err: ServiceError) -> None:
        assert err.code == "audio_buffer_full"
        self.reasons.append(err.reason)


def forward_all(host: BufferHost, messages: list[bytes], max_push_bytes: int) -> None:
    async def main():
        f = InputForwarder(host.push, host.control, host.report, max_push_bytes)
        run = asyncio.create_task(f.run())
        for m in messages:
            await f.put_audio(m)
        await f.drained(timeout_s=5)
        run.cancel()

    asyncio.run(main())


@settings(max_examples=60, deadline=None, database=None)
@given(sizes=st.lists(st.integers(1, 40).map(lambda n: 2 * n), min_size=1, max_size=30),
       capacity=st.integers(0, 600), max_push_bytes=st.integers(2, 200))
def test_overflow_drops_only_what_does_not_fit_and_says_how_much(sizes, capacity, max_push_bytes):
    messages = [bytes([i]) * size for i, size in enumerate(sizes)]
    host = BufferHost(capacity)
    forward_all(host, messages, max_push_bytes)
    dropped_samples = sum(int(re.search(r"dropped (\d+) samples", r).group(1)) for r in host.reasons)
    dropped = [size for i, size in enumerate(sizes) if i not in host.accepted]
    assert 2 * dropped_samples == sum(dropped)  # every sample accepted or reported, exactly
    assert host.buffered_bytes + sum(dropped) == sum(sizes)
    # the buffer only fills: a message dropped did not fit when tried, and would not fit now
    assert all(host.buffered_bytes + size > capacity for size in dropped)
