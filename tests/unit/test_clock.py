"""The session clock and speech buffer: pts timing and chunking into whole frames."""
import numpy as np
import pytest

from deployments.session.clock import SessionClock, SpeechBuffer
from models.base import SAMPLES_PER_FRAME


def test_clock_maps_frames_to_40ms_slots():
    clock = SessionClock(t0=1000.0)
    assert clock.due(0) == 1000.0 and clock.due(25) == pytest.approx(1001.0)
    assert clock.now_pts(1000.039) == 0 and clock.now_pts(1000.041) == 1 and clock.now_pts(999.0) == 0


def test_buffer_cuts_whole_frames_in_order():
    buf = SpeechBuffer(max_samples=16000 * 10)
    samples = np.arange(3 * SAMPLES_PER_FRAME + 100, dtype=np.float32)
    for piece in np.array_split(samples, 7):  # any chunk size in
        buf.push(piece)
    assert buf.frames == 3
    first = buf.take_frames(2)
    assert np.array_equal(first, samples[: 2 * SAMPLES_PER_FRAME])
    rest = buf.take_all_padded()  # 1 frame + 100 samples -> padded to 2 frames
    assert len(rest) == 2 * SAMPLES_PER_FRAME
    assert np.array_equal(rest[: SAMPLES_PER_FRAME + 100], samples[2 * SAMPLES_PER_FRAME :])
    assert not rest[SAMPLES_PER_FRAME + 100 :].any() and len(buf) == 0


def test_buffer_refuses_more_than_its_limit():
    buf = SpeechBuffer(max_samples=1000)
    buf.push(np.zeros(900, np.float32))
    with pytest.raises(OverflowError):
        buf.push(np.zeros(200, np.float32))
