"""Regenerate the oracle's large inputs bit for bit (oracle/liveportrait/README.md section 3).

All arithmetic is on uint64 and wraps mod 2^64, as in the reference generator.
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def hash_bits(shape: tuple[int, ...], salt: int) -> np.ndarray:
    """uint64 per element, from its C-order flat index and the salt."""
    index = np.arange(int(np.prod(shape)), dtype=np.uint64)
    with np.errstate(over="ignore"):
        return splitmix64(index + (np.uint64(salt) << np.uint64(32))).reshape(shape)


def hash_u8(shape: tuple[int, ...], salt: int) -> np.ndarray:
    return (hash_bits(shape, salt) >> np.uint64(56)).astype(np.uint8)


def hash_uniform(shape: tuple[int, ...], salt: int, lo: float, hi: float) -> np.ndarray:
    unit = (hash_bits(shape, salt) >> np.uint64(40)).astype(np.float64) / 2.0**24
    return (lo + (hi - lo) * unit).astype(np.float32)


def stats64(x: np.ndarray) -> np.ndarray:
    """[mean, std, min, max, mean|x|, sum, sum x²] in float64, the oracle's *_stats64."""
    v = np.asarray(x, dtype=np.float64).ravel()
    return np.array([v.mean(), v.std(), v.min(), v.max(), np.abs(v).mean(), v.sum(), (v * v).sum()])
