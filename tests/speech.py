"""Real speech for the tests: espeak-ng (Debian's package; .ci/run installs it) at 16 kHz."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng; .ci/run does)")


def espeak_wav(text: str, path: Path) -> Path:
    """`text` spoken by espeak-ng into a WAV file (its own rate, 22.05 kHz mono PCM16)."""
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True, capture_output=True)
    return path


def espeak_16k(text: str, pad_s: float = 0.3) -> np.ndarray:
    """`text` spoken, (n,) float32 in [-1, 1] at 16 kHz, with `pad_s` of silence each side."""
    with tempfile.TemporaryDirectory() as tmp:
        with wave.open(str(espeak_wav(text, Path(tmp) / "speech.wav"))) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
    ratio = Fraction(16000, rate)
    speech = resample_poly(pcm, ratio.numerator, ratio.denominator).astype(np.float32)
    pad = np.zeros(int(pad_s * 16000), np.float32)
    return np.concatenate([pad, speech, pad])
