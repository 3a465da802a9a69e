"""Warm pocketsphinx decoders for the viseme trackers, shared by every speaking session.

A decoder costs 0.3-0.6 s and ~44 MB to create, so sessions borrow one from a pool for
the life of their tracker and hand it back when they close. Each decoder recognises
phones (all-phone search with the en-US phone language model) and can also force-align
a known sentence (`models.visemes.align`).
"""
from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np
import pocketsphinx

# pocketsphinx counts time in frames of 10 ms (its default -frate 100).
FRAME_MS = 10
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE * FRAME_MS // 1000  # 160

# Upstream's all-phone example settings: a phone LM weight of 2 and an insertion penalty
# below 1 favour many short phones, which is what lips need; the beams are wide so the
# best path is rarely pruned away.
ALLPHONE_SETTINGS = dict(lw=2.0, pip=0.3, beam=1e-200, pbeam=1e-20)
# The alignment searches are built later (one per sentence) and read these settings then,
# so the decoder's config returns to pocketsphinx's defaults after the all-phone search
# exists. Measured on 20 espeak-ng sentences: with the all-phone settings alignment found
# no path for 7 (pip=0.3 alone fails every one), with the defaults for 3.
ALIGN_SETTING_NAMES = ("lw", "pip", "beam", "pbeam")


def make_decoder() -> pocketsphinx.Decoder:
    """A new decoder: all-phone search active, live CMN, quiet logs."""
    decoder = pocketsphinx.Decoder(
        allphone=pocketsphinx.get_model_path("en-us/en-us-phone.lm.bin"),
        loglevel="FATAL",  # pocketsphinx logs every utterance at INFO to stderr otherwise
        **ALLPHONE_SETTINGS,
    )
    # The model's feat.params says batch CMN and overrides any argument: batch CMN needs
    # the whole utterance before the first frame. Live CMN adapts as audio arrives, so
    # it is set after loading and the feature front end rebuilt with it.
    decoder.config["cmn"] = "live"
    decoder.reinit_feat()
    # Only the alignment searches created from now on see these: see ALIGN_SETTING_NAMES.
    defaults = pocketsphinx.Config()  # the library defaults
    for name in ALIGN_SETTING_NAMES:
        decoder.config[name] = defaults[name]
    return decoder


class DecoderPool:
    """Idle decoders kept warm; take() one per tracker, give_back() when it closes.

    `size` decoders are made up front; more are made when all are busy, and every
    decoder given back stays in the pool. Thread-safe.
    """

    def __init__(self, size: int = 1):
        self._lock = threading.Lock()
        self._idle: list[pocketsphinx.Decoder] = [make_decoder() for _ in range(size)]

    def take(self) -> pocketsphinx.Decoder:
        """A ready decoder, no utterance open, all-phone search active."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return make_decoder()  # outside the lock: creating one takes a while

    def give_back(self, decoder: pocketsphinx.Decoder) -> None:
        """Return a decoder taken from this pool; its owner must have ended its utterance."""
        with self._lock:
            self._idle.append(decoder)

    @property
    def idle(self) -> int:
        """How many decoders wait in the pool now."""
        with self._lock:
            return len(self._idle)


_default_pool: DecoderPool | None = None
_default_pool_lock = threading.Lock()


def default_pool() -> DecoderPool:
    """The process-wide pool trackers use when given none (empty until first used)."""
    global _default_pool
    with _default_pool_lock:
        if _default_pool is None:
            _default_pool = DecoderPool(size=0)
        return _default_pool


# The tracker hands audio to pocketsphinx in blocks of this many samples, whatever size the
# caller's chunks are: live CMN updates its mean at the end of each block it is given,
# so fixed blocks make a streamed utterance decode exactly like the same audio fed whole.
BLOCK_SAMPLES = 2 * SAMPLES_PER_FRAME  # 20 ms


class PhoneSpan(NamedTuple):
    """One phone of a decode: frames [start_frame, end_frame) of 10 ms."""
    phone: str
    start_frame: int
    end_frame: int


def start_utterance(decoder: pocketsphinx.Decoder) -> None:
    """Open an utterance from a clean front end, so equal audio always decodes equally.

    reinit_feat() (~30 us) resets what would otherwise carry over from the previous
    utterance: the noise estimate of -remove_noise and the live CMN mean (back to cmninit).
    """
    decoder.reinit_feat()
    decoder.start_utt()


def process_blocks(decoder: pocketsphinx.Decoder, pcm: np.ndarray) -> None:
    """Feed int16 samples (shape [n], a whole number of BLOCK_SAMPLES except at the end) in blocks."""
    for start in range(0, len(pcm), BLOCK_SAMPLES):
        decoder.process_raw(pcm[start:start + BLOCK_SAMPLES].tobytes())


def recognised_phones(decoder: pocketsphinx.Decoder) -> list[PhoneSpan]:
    """The current best phone path of the all-phone search, in time order (empty before any frame)."""
    segments = decoder.seg() or []  # seg() is None until a frame has been searched
    return [PhoneSpan(seg.word, seg.start_frame, seg.end_frame + 1) for seg in segments]  # end_frame is inclusive
