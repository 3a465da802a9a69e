"""HuBERT framing against the reference (oracle ditto/audio_features.npz).

The fixture replaces HuBERT by a documented linear stand-in with the same frame
geometry: out[j] = P @ x[320j : 320j+400] + b (20 rows for 6480 samples). The
librosa resampling fixture (resample_*) is not tested: the server resamples
once to 16 kHz on entry, so Ditto's code never resamples.
"""
from __future__ import annotations

import numpy as np
import pytest

from models.ditto.audio import (
    CHUNK_SAMPLES,
    LOOKAHEAD_SAMPLES,
    StreamingFeatures,
    chunk_features,
    wav2feat,
)
from tests.parity.test_ditto_support import npz, rel_err

TOL = 1e-5  # float32 matmul of a different blocking than the reference's


@pytest.fixture(scope="module")
def fx(oracle):
    return npz(oracle, "audio_features.npz")


@pytest.fixture(scope="module")
def fake_hubert(fx):
    P, b = fx["fake_hubert_P"].astype(np.float64), fx["fake_hubert_b"].astype(np.float64)

    def run(x):
        n = (len(x) - 400) // 320 + 1
        frames = np.stack([x[320 * j : 320 * j + 400] for j in range(n)]).astype(np.float64)
        return (frames @ P.T + b).astype(np.float32)

    return run


@pytest.mark.oracle
def test_stand_in_matches_fixture(fx, fake_hubert):
    assert rel_err(fake_hubert(fx["one_chunk_in"]), fx["one_chunk_hubert_out"]) < TOL
    assert rel_err(chunk_features(fake_hubert, fx["one_chunk_in"]), fx["one_chunk_valid_feat"]) < TOL


@pytest.mark.oracle
def test_offline_wav2feat(fx, fake_hubert):
    out = wav2feat(fake_hubert, fx["audio_16k"])
    assert out.shape == (58, 1024)
    assert rel_err(out, fx["offline_feat"]) < TOL
    assert rel_err(wav2feat(fake_hubert, np.zeros(70 * 640, np.float32)), fx["online_init_buffer_overlap70"]) < TOL


@pytest.mark.oracle
@pytest.mark.parametrize("piece", [640 * 5, 1000, 37000])
def test_online_loop_any_piece_size(fx, fake_hubert, piece):
    stream = StreamingFeatures(fake_hubert)
    carry, feats = stream.start(), []
    audio = fx["audio_16k"]
    for s in range(0, len(audio), piece):
        f, carry = stream.feed(carry, audio[s : s + piece])
        feats.append(f)
    f, carry = stream.flush(carry)
    out = np.concatenate(feats + [f])
    assert out.shape == (65, 1024)
    assert rel_err(out, fx["online_feat"]) < TOL


def test_lookahead_is_two_frames_and_80_samples():
    """After 1 chunk of audio the first features need exactly 1360 further samples."""
    calls = []
    stream = StreamingFeatures(lambda x: calls.append(len(x)) or np.zeros((20, 1024), np.float32))
    carry = stream.start()
    f, carry = stream.feed(carry, np.zeros(5 * 640 + LOOKAHEAD_SAMPLES - 1, np.float32))
    assert len(f) == 0
    f, carry = stream.feed(carry, np.zeros(1, np.float32))
    assert len(f) == 5 and calls == [CHUNK_SAMPLES]
