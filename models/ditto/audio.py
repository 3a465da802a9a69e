"""HuBERT audio features for Ditto, 25 per second, with the reference's framing.

The HuBERT model (`hubert_streaming_fix_kv.onnx`) maps a 6480-sample chunk of
16 kHz audio to 20 feature rows (400-sample windows at hop 320). Ditto keeps
rows [-14:-4] of each chunk and averages them in pairs: 5 features, one per
25 fps frame, for the middle 5 frames of a (3 past, 5 present, 2 future) frame
chunk; the extra 80 samples complete HuBERT's last window. Chunks advance by
5 frames = 3200 samples.

- offline (`wav2feat`): 2000 zeros in front, 6480 behind, ceil(n/640) features.
- online (`StreamingFeatures`): 1920 zeros in front (3 frames of past), chunks
  computed as soon as their 6480 samples are in, the last one zero-padded at
  the end of speech. Online features sit 80 samples later than offline ones.
  Lookahead: a frame's feature needs 2 frames + 80 samples of later audio.

`hubert` is any callable chunk (6480,) float32 -> (20, 1024) (a leading batch
axis of 1 is dropped), so tests can inject a stand-in; production uses
`OnnxHubert`. Input must already be 16 kHz: the server resamples once on entry.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

SR_HZ = 16_000
SAMPLES_PER_FRAME = 640
CHUNK_FRAMES = (3, 5, 2)  # past, present, future frames of one HuBERT chunk
CHUNK_SAMPLES = sum(CHUNK_FRAMES) * SAMPLES_PER_FRAME + 80  # 6480
HOP_SAMPLES = CHUNK_FRAMES[1] * SAMPLES_PER_FRAME  # 3200
ONLINE_PAD_SAMPLES = CHUNK_FRAMES[0] * SAMPLES_PER_FRAME  # 1920
OFFLINE_PAD_SAMPLES = CHUNK_SAMPLES - (CHUNK_FRAMES[1] + CHUNK_FRAMES[2]) * SAMPLES_PER_FRAME  # 2000
FEAT_DIM = 1024
LOOKAHEAD_SAMPLES = CHUNK_FRAMES[2] * SAMPLES_PER_FRAME + 80  # 1360 = 2 frames + 80 samples

Hubert = Callable[[np.ndarray], np.ndarray]


class OnnxHubert:
    """The official streaming HuBERT through onnxruntime."""

    def __init__(self, path, providers: list[str] | None = None):
        import onnxruntime as ort

        # only providers this onnxruntime build has (CUDA is asked for on GPU machines)
        wanted = [p for p in (providers or []) if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(path), providers=wanted or ["CPUExecutionProvider"])

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        """chunk: (6480,) float32 -> (20, 1024)."""
        out = self.session.run(None, {"input_values": chunk.reshape(1, -1).astype(np.float32)})[0]
        return out[0] if out.ndim == 3 else out


def chunk_features(hubert: Hubert, chunk: np.ndarray) -> np.ndarray:
    """(6480,) -> (5, 1024): the present frames' features, rows paired and averaged."""
    rows = np.asarray(hubert(chunk))
    if rows.ndim == 3:
        rows = rows[0]
    present, future = CHUNK_FRAMES[1], CHUNK_FRAMES[2]
    valid = rows[-(present + future) * 2 : -future * 2]  # 10 rows = 5 frames x 2
    return valid.reshape(present, 2, -1).mean(1)


def wav2feat(hubert: Hubert, audio16k: np.ndarray) -> np.ndarray:
    """Offline features of a whole clip: (n,) -> (ceil(n / 640), 1024)."""
    num_f = math.ceil(len(audio16k) / SR_HZ * 25)
    dtype = audio16k.dtype
    padded = np.concatenate([np.zeros(OFFLINE_PAD_SAMPLES, dtype), audio16k, np.zeros(CHUNK_SAMPLES, dtype)])
    feats = [
        chunk_features(hubert, padded[f * SAMPLES_PER_FRAME : f * SAMPLES_PER_FRAME + CHUNK_SAMPLES])
        for f in range(0, num_f, CHUNK_FRAMES[1])
    ]
    return np.concatenate(feats, 0)[:num_f]


@dataclass
class FeatureCarry:
    """Audio not yet turned into features, starting at the next chunk's first sample."""

    pending: np.ndarray = field(default_factory=lambda: np.zeros(ONLINE_PAD_SAMPLES, np.float32))


class StreamingFeatures:
    """The online chunk loop, resumable from a FeatureCarry."""

    def __init__(self, hubert: Hubert):
        self.hubert = hubert

    @staticmethod
    def start() -> FeatureCarry:
        return FeatureCarry()

    def feed(self, carry: FeatureCarry, audio16k: np.ndarray) -> tuple[np.ndarray, FeatureCarry]:
        """Any number of new samples -> the features of every chunk now complete (5k x 1024)."""
        buf = np.concatenate([carry.pending, np.asarray(audio16k, np.float32)])
        feats = []
        while len(buf) >= CHUNK_SAMPLES:
            feats.append(chunk_features(self.hubert, buf[:CHUNK_SAMPLES]))
            buf = buf[HOP_SAMPLES:]
        return self._stack(feats), FeatureCarry(buf.copy())

    def flush(self, carry: FeatureCarry) -> tuple[np.ndarray, FeatureCarry]:
        """End of speech: the remaining chunks, zero-padded to full length."""
        buf, feats = carry.pending, []
        while len(buf) > 0:
            chunk = np.zeros(CHUNK_SAMPLES, np.float32)
            chunk[: min(len(buf), CHUNK_SAMPLES)] = buf[:CHUNK_SAMPLES]
            feats.append(chunk_features(self.hubert, chunk))
            buf = buf[HOP_SAMPLES:]
        return self._stack(feats), FeatureCarry()

    @staticmethod
    def _stack(feats: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(feats, 0).astype(np.float32) if feats else np.zeros((0, FEAT_DIM), np.float32)
