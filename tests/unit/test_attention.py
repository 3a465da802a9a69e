"""Listening and gaze as numbers per frame (models/attention.py), as docs/api.md describes them."""
from __future__ import annotations

import numpy as np
import pytest

from models.attention import AttentionConfig, attention_frames, start_attention
from models.base import FPS, Controls

SEED = 1234


def run(controls_by_chunk: list[tuple[Controls, int]], chunk: int = 5):
    """Frames of attention for a sequence of (controls, frames), in chunks of `chunk` frames."""
    state = start_attention(SEED, FPS)
    parts = []
    for controls, frames in controls_by_chunk:
        for start in range(0, frames, chunk):
            out, state = attention_frames(state, min(chunk, frames - start), controls, SEED, FPS)
            parts.append(out)
    return {name: np.concatenate([getattr(p, name) for p in parts]) for name in ("listen", "idle_scale", "nod_deg",
                                                                                 "gaze")}


def nods(nod_deg: np.ndarray) -> int:
    """Nods started: rises of the pitch from (near) zero."""
    up = nod_deg > 0.5
    return int(np.count_nonzero(up[1:] & ~up[:-1]) + up[0])


def test_not_listening_changes_nothing():
    out = run([(Controls(), 30 * FPS)])
    assert not out["listen"].any() and not out["nod_deg"].any() and not out["gaze"].any()
    assert (out["idle_scale"] == 1.0).all()


def test_listening_eases_in_nods_now_and_then_and_eases_out():
    out = run([(Controls(listening=True), 60 * FPS), (Controls(), 4 * FPS)])
    listen = out["listen"]
    assert 0.05 < listen[0] < 0.2  # eased, not jumped
    assert listen[FPS] > 0.9  # there within a second (0.4 s time constant)
    assert out["idle_scale"][2 * FPS:60 * FPS].max() == pytest.approx(0.25, abs=0.01)
    count = nods(out["nod_deg"][:60 * FPS])
    assert 8 <= count <= 25, count  # one every 2 s or more, 4 s on average: ~15 a minute
    assert out["nod_deg"].max() == pytest.approx(3.0, abs=0.1)  # about 3° down
    after = listen[60 * FPS:]
    assert np.all(np.diff(after) < 0) and after[-1] < 0.01  # eases back out
    assert out["idle_scale"][-1] > 0.99


def test_gaze_eases_to_the_point_and_to_the_camera_while_listening():
    point = Controls(gaze_x=0.5, gaze_y=-0.4)
    out = run([(point, FPS), (Controls(gaze_x=0.5, gaze_y=-0.4, listening=True), FPS)])
    gaze = out["gaze"]
    assert 0 < gaze[0, 0] < 0.5 and -0.4 < gaze[0, 1] < 0  # on its way
    np.testing.assert_allclose(gaze[FPS - 1], [0.5, -0.4], atol=0.01)  # there within 1 s (0.15 s)
    np.testing.assert_allclose(gaze[-1], [0.0, 0.0], atol=0.01)  # eye contact while listening


def test_chunking_does_not_change_the_result():
    script = [(Controls(), 30), (Controls(listening=True, gaze_x=-1.0), 200), (Controls(gaze_y=1.0), 50)]
    by_one, by_seven = run(script, chunk=1), run(script, chunk=7)
    for name in by_one:
        np.testing.assert_allclose(by_one[name], by_seven[name], atol=1e-12)


def test_a_nod_is_a_fraction_of_a_second():
    config = AttentionConfig()
    frames = config.nod.close_frames + config.nod.hold_frames + config.nod.open_frames
    assert 0.5 <= frames / FPS <= 1.0
