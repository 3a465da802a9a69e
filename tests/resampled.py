"""Comparing images that a library resampler (OpenCV's warpAffine/resize, PIL) produced.

The oracle READMEs state the tolerance such images get: at most one level off, on under 1 % of
the values. OpenCV releases differ by that much (5.1's warpAffine against the oracle's 5.0:
±1 level on 0.02-0.08 % of values). Everything computed by our own arithmetic is compared as
strictly as before; tests/parity/test_liveportrait_crop.py shows these checks still catch a crop moved by
one pixel or the wrong interpolation.
"""
from __future__ import annotations

import numpy as np

MAX_LEVELS_OFF = 1
MAX_FRACTION_OFF = 0.01


def assert_resampled_equal(actual, expected, *, level: float = 1.0, what: str = "image") -> None:
    """`actual` equals `expected` up to resampler rounding.

    level: the size of one level in the arrays' units (1 for uint8 0..255, 1/255 for a uint8
    image scaled to [0, 1]). Shapes and dtypes must match exactly.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    levels_off = np.abs(actual.astype(np.float64) - expected.astype(np.float64)) / level
    # Half a level of float slack: a value scaled from uint8 is off by exactly k levels, or not at all.
    off = levels_off > 0.5
    worst = float(levels_off.max(initial=0.0))
    fraction = float(off.mean()) if off.size else 0.0
    assert worst <= MAX_LEVELS_OFF + 0.5 and fraction < MAX_FRACTION_OFF, (
        f"{what}: {int(off.sum())} of {off.size} values off ({fraction:.3%}), by up to {worst:.2f} levels; "
        f"a resampler may differ by {MAX_LEVELS_OFF} level on under {MAX_FRACTION_OFF:.0%}"
    )
