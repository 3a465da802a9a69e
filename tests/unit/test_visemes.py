"""Server-side visemes (models/visemes): the phone table, and the tracker on real espeak-ng speech.

Nothing is mocked: a real pocketsphinx decoder recognises and aligns speech that
espeak-ng synthesises at test time.
"""
from __future__ import annotations

import shutil
import struct
import subprocess
from math import gcd
from pathlib import Path

import numpy as np
import pocketsphinx
import pytest
import scipy.io.wavfile
import scipy.signal

from models.visemes import ARPABET_TO_VISEME, OCULUS_VISEMES, Cue, DecoderPool, VisemeTracker, cues_from_phones
from models.visemes.align import dictionary_words
from models.visemes.arpabet import viseme_of
from models.visemes.pool import PhoneSpan

SENTENCES = ("She sells sea shells by the sea shore.", "Peter Piper picked a peck of pickled peppers.")
PAD_S = 0.3  # silence around the speech

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not on PATH: no speech to test the tracker on")


def model_phones() -> list[str]:
    """The acoustic model's context-independent phones, read from its binary mdef file.

    Layout (pocketsphinx's bin_mdef.c): int32 byte-order magic "BMDF", int32 version,
    int32 length of a text header to skip, ten int32 counts (the first: number of phones),
    then the phone names, each NUL-terminated.
    """
    data = (Path(pocketsphinx.get_model_path()) / "en-us" / "en-us" / "mdef").read_bytes()
    order = "<" if data[:4] == b"BMDF" else ">"
    (header_len,) = struct.unpack(order + "i", data[8:12])
    counts_at = 12 + header_len
    n_phones = struct.unpack(order + "10i", data[counts_at:counts_at + 40])[0]
    names = data[counts_at + 40:].split(b"\0")[:n_phones]
    return [name.decode("ascii") for name in names]


def espeak_16k(text: str, folder: Path) -> np.ndarray:
    """espeak-ng speech of `text`, float32 at 16 kHz (shape [n]), with PAD_S of zeros each side."""
    wav = folder / f"{abs(hash(text))}.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True)
    rate, samples = scipy.io.wavfile.read(wav)  # int16 mono, 22050 Hz for espeak-ng
    common = gcd(16000, rate)
    speech = scipy.signal.resample_poly(samples.astype(np.float32) / 32768.0, 16000 // common, rate // common)
    pad = np.zeros(int(PAD_S * 16000), np.float32)
    return np.concatenate([pad, speech.astype(np.float32), pad])


@pytest.fixture(scope="module")
def pool():
    return DecoderPool(size=1)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not on PATH: no speech to test the tracker on")
    folder = tmp_path_factory.mktemp("espeak")
    return [espeak_16k(text, folder) for text in SENTENCES]


def track(pool, audio: np.ndarray, chunk: int | None = None, text: str | None = None, **options) -> list[Cue]:
    """Every cue of one utterance: audio fed in chunks of `chunk` samples (all at once if None), then finish."""
    tracker = VisemeTracker(pool, **options)
    try:
        if text is not None:
            tracker.set_text(text)
        cues = []
        step = chunk or len(audio)
        for start in range(0, len(audio), step):
            cues += tracker.feed(audio[start:start + step])
        return cues + tracker.finish()
    finally:
        tracker.close()


def assert_contiguous(cues: list[Cue], n_samples: int) -> None:
    """Cues start at 0, each where the previous ended, no viseme twice in a row, up to the audio's end."""
    assert cues[0].start_ms == 0
    for before, after in zip(cues, cues[1:]):
        assert after.start_ms == before.end_ms
        assert after.viseme != before.viseme
    assert all(cue.duration_ms > 0 and cue.viseme in OCULUS_VISEMES for cue in cues)
    assert cues[-1].end_ms == -(-n_samples // 16)  # the last partial ms included


def merged(visemes) -> list[str]:
    out = []
    for viseme in visemes:
        if not out or out[-1] != viseme:
            out.append(viseme)
    return out


# ---- the table


def test_table_covers_every_phone_of_the_model():
    phones = model_phones()
    assert len(phones) == 42 and "SIL" in phones and "+SPN+" in phones  # 39 ARPAbet + SIL + 2 noises
    assert set(phones) <= set(ARPABET_TO_VISEME)
    assert set(ARPABET_TO_VISEME.values()) <= set(OCULUS_VISEMES)


def test_table_maps_known_phones():
    expected = {"P": "PP", "B": "PP", "M": "PP", "F": "FF", "V": "FF", "TH": "TH", "DH": "TH", "T": "DD",
                "D": "DD", "K": "kk", "G": "kk", "SH": "CH", "JH": "CH", "S": "SS", "Z": "SS", "N": "nn",
                "R": "RR", "AA": "aa", "EH": "E", "IY": "I", "OW": "O", "UW": "U", "SIL": "sil", "+NSN+": "sil"}
    assert {phone: ARPABET_TO_VISEME[phone] for phone in expected} == expected
    assert viseme_of("aa") == "aa" and viseme_of("NOT-A-PHONE") == "sil"


def test_cues_from_phones_merges_and_covers():
    spans = [PhoneSpan("SIL", 3, 10), PhoneSpan("P", 10, 14), PhoneSpan("B", 14, 20), PhoneSpan("AA", 20, 40)]
    assert cues_from_phones(spans, 305) == [Cue("sil", 0, 100), Cue("PP", 100, 100), Cue("aa", 200, 105)]
    late = [PhoneSpan("S", 5, 9)]  # a path that starts late begins with silence
    assert cues_from_phones(late, 120) == [Cue("sil", 0, 50), Cue("SS", 50, 70)]
    assert cues_from_phones([], 0) == [] and cues_from_phones([], 30) == [Cue("sil", 0, 30)]


def test_dictionary_words_strip_punctuation():
    assert dictionary_words("Don\u2019t stop, Peter-Piper!") == ["don't", "stop", "peter", "piper"]


# ---- the tracker on speech


@needs_espeak
def test_cues_contiguous_with_silent_ends(pool, speech):
    for audio in speech:
        cues = track(pool, audio, chunk=3200)
        assert_contiguous(cues, len(audio))
        assert cues[0].viseme == "sil" and cues[0].duration_ms >= 250  # the 300 ms lead-in
        assert cues[-1].viseme == "sil" and cues[-1].duration_ms >= 200  # the 300 ms tail
        assert len({cue.viseme for cue in cues}) >= 6  # speech moves the mouth through many shapes


@needs_espeak
def test_streamed_cues_equal_whole_utterance(pool, speech):
    # Exact, by construction: the tracker hands pocketsphinx fixed 20 ms blocks and decides
    # finality after each block, so caller chunking cannot change what the decoder sees
    # (live CMN updates once per block given) nor when a cue is judged final.
    for audio in speech:
        whole = track(pool, audio)
        assert track(pool, audio, chunk=3200) == whole  # 200 ms chunks
        assert track(pool, audio, chunk=333) == whole  # odd sizes, not a multiple of a block


@needs_espeak
def test_final_samples_grow_within_the_fed_audio(pool, speech):
    audio = speech[1]
    tracker = VisemeTracker(pool)
    final, emitted = 0, []
    for start in range(0, len(audio), 3200):
        emitted += tracker.feed(audio[start:start + 3200])
        assert final <= tracker.final_samples <= tracker.fed_samples
        if emitted:  # every final cue ends at least the hold-back before the fed edge
            assert emitted[-1].end_ms * 16 <= tracker.fed_samples - 150 * 16
            assert tracker.final_samples == emitted[-1].end_ms * 16
        final = tracker.final_samples
    assert 0 < final < len(audio)  # cues became final while streaming, some still held
    emitted += tracker.finish()
    assert tracker.final_samples == tracker.fed_samples == len(audio)
    assert_contiguous(emitted, len(audio))
    tracker.close()


@needs_espeak
def test_reset_mid_utterance_then_new_one_matches_a_fresh_tracker(pool, speech):
    first, second = speech
    tracker = VisemeTracker(pool)
    tracker.feed(first[: len(first) // 2])
    tracker.reset()
    assert tracker.final_samples == 0 and tracker.fed_samples == 0
    cues = tracker.feed(second) + tracker.finish()
    assert cues == track(pool, second)
    # finish() also readies the next utterance from sample 0
    assert tracker.feed(second) + tracker.finish() == cues
    tracker.close()


@needs_espeak
def test_text_gives_aligned_cues_following_its_phones(pool, speech):
    audio, text = speech[0], SENTENCES[0]
    tracker = VisemeTracker(pool)
    tracker.set_text(text)
    assert tracker.feed(audio) == [] and tracker.final_samples == 0  # held for alignment
    cues = tracker.finish()
    tracker.close()
    assert_contiguous(cues, len(audio))
    # The sentence's own phones, word by word from the dictionary, as merged visemes;
    # the alignment may put silences between words, so those are left out of both.
    decoder = pool.take()
    phones = [phone for word in dictionary_words(text) for phone in decoder.lookup_word(word).split()]
    pool.give_back(decoder)
    expected = merged(viseme_of(phone) for phone in phones)
    assert merged(cue.viseme for cue in cues if cue.viseme != "sil") == expected
    assert cues[0].viseme == "sil" and cues[-1].viseme == "sil"
    assert cues != track(pool, audio)  # alignment, not recognition, decided them


@needs_espeak
def test_unknown_words_fall_back_to_recognition(pool, speech):
    audio = speech[0]
    # Held for the text until finish(), so the same as recognition that finalises nothing early.
    assert track(pool, audio, text="zqxv blorptangle") == track(pool, audio, hold_back_ms=10**9)


@needs_espeak
def test_text_held_too_long_falls_back_to_streaming(pool, speech):
    audio = speech[1]
    tracker = VisemeTracker(pool, max_text_hold_ms=500)
    tracker.set_text(SENTENCES[1])
    streamed = []
    for start in range(0, len(audio), 3200):
        streamed += tracker.feed(audio[start:start + 3200])
    assert streamed and not tracker.text_pending
    cues = streamed + tracker.finish()
    tracker.close()
    assert_contiguous(cues, len(audio))


def test_silence_gives_only_sil(pool):
    cues = track(pool, np.zeros(16000, np.float32), chunk=3200)
    assert cues == [Cue("sil", 0, 1000)]


def test_close_gives_the_decoder_back():
    own_pool = DecoderPool(size=1)
    tracker = VisemeTracker(own_pool)
    assert own_pool.idle == 0
    tracker.feed(np.zeros(4000, np.float32))
    tracker.close()
    assert own_pool.idle == 1
    with pytest.raises(RuntimeError):
        tracker.feed(np.zeros(10, np.float32))
    assert VisemeTracker(own_pool).finish() == []  # nothing fed: nothing to cue
