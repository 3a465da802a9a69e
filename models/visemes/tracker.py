"""Lip-sync cues for one speaking session, derived on the server from the raw PCM of any TTS.

Audio arrives in chunks (16 kHz float32). A pocketsphinx all-phone decoder recognises
phones as it goes; each phone becomes an Oculus viseme (`arpabet.py`), and runs of the
same viseme merge into one `Cue`. The decoder's best path near the newest audio still
changes as more audio arrives, so a cue is only handed out ("final") once it ends
`hold_back_ms` before the audio fed so far; audio before `final_samples` can then be sent
to the page, after the cues that cover it (the page drops cues that arrive late).

When the sentence's text is known (`set_text`), cues wait for the end of the utterance and
come from forced alignment of that text instead, unless that would hold back more than
`max_text_hold_ms` of audio: then recognition takes over again.

Cue times are ms from the utterance's first sample. The cues of one utterance are
contiguous (each starts where the previous ended), never repeat a viseme twice in a
row, and together cover all audio fed once `finish()` has returned.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from .align import align_phones
from .arpabet import SILENCE, viseme_of
from .pool import (BLOCK_SAMPLES, FRAME_MS, SAMPLE_RATE, DecoderPool, PhoneSpan, default_pool, process_blocks,
                   recognised_phones, start_utterance)

log = logging.getLogger(__name__)

SAMPLES_PER_MS = SAMPLE_RATE // 1000  # 16

# How far behind the fed edge a cue must end before it is final. Measured on 12 espeak-ng
# sentences (benchmarks/avatar3d.py, "hold_back_sweep"): cues made final this far behind
# the edge have the viseme of the whole-utterance decode on this share of the time axis:
# 50 ms 91 %, 100 ms 94 %, 150 ms 98 %, 200 ms 99.4 %, 300 ms 99.96 %. 150 ms is the knee
# (+4 points over 100 ms, +1 more for the next 50 ms), and every ms of hold-back delays
# the audio too, since audio is only sent once the cues covering it are final.
DEFAULT_HOLD_BACK_MS = 150


@dataclass(frozen=True)
class Cue:
    """One viseme held from start_ms for duration_ms (ms from the utterance's first sample)."""
    viseme: str  # one of OCULUS_VISEMES
    start_ms: int
    duration_ms: int

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.duration_ms


def cues_from_phones(spans: list[PhoneSpan], end_ms: int) -> list[Cue]:
    """Phone spans (in time order) as merged viseme cues covering exactly [0, end_ms).

    Each phone's viseme holds from its start until the next change; a path that starts
    late begins with silence, and the last cue is stretched or cut to end_ms.
    """
    if end_ms <= 0:
        return []
    changes: list[tuple[int, str]] = [(0, SILENCE)]  # (start ms, viseme) where the mouth changes
    for span in spans:
        start_ms = max(span.start_frame * FRAME_MS, 0)
        if start_ms >= end_ms:
            break
        if start_ms == changes[-1][0]:
            changes.pop()  # the previous change lasted no time (e.g. the silent start at 0)
        if not changes or changes[-1][1] != viseme_of(span.phone):
            changes.append((start_ms, viseme_of(span.phone)))
    ends = [start for start, _ in changes[1:]] + [end_ms]
    return [Cue(viseme, start, end - start) for (start, viseme), end in zip(changes, ends)]


def continue_after(cues: list[Cue], frontier_ms: int, last_viseme: str | None) -> list[Cue]:
    """The part of `cues` after frontier_ms, joined to already-final cues that ended there.

    Final cues are never changed, so a newer path is cut at the frontier. If its first
    piece has the viseme the final cues ended with (the newer path moved that boundary
    later), the boundary stays where it was sent: the piece goes to the next cue, or is
    drawn as silence if nothing follows.
    """
    after = [Cue(c.viseme, max(c.start_ms, frontier_ms), c.end_ms - max(c.start_ms, frontier_ms))
             for c in cues if c.end_ms > frontier_ms]
    if after and after[0].viseme == last_viseme:
        if len(after) > 1:
            after[1] = Cue(after[1].viseme, frontier_ms, after[1].end_ms - frontier_ms)
            after = after[1:]
        else:
            # Only at finish(), when the newer path holds that viseme to the very end: the
            # tail must still be covered, so it rests the mouth (at worst sil follows sil,
            # the one case where a viseme repeats).
            after[0] = Cue(SILENCE, after[0].start_ms, after[0].duration_ms)
    return after


def to_int16(pcm16k: np.ndarray) -> np.ndarray:
    """float32 samples in [-1, 1] (shape [n]) as the int16 PCM pocketsphinx reads (shape [n])."""
    samples = np.asarray(pcm16k, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected mono audio of shape [n], got shape {samples.shape}")
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


class VisemeTracker:
    """One speaking session's lip-sync cues from raw 16 kHz PCM, streamed."""

    def __init__(self, pool: DecoderPool | None = None, hold_back_ms: int = DEFAULT_HOLD_BACK_MS,
                 max_text_hold_ms: int = 8000):
        self._pool = pool if pool is not None else default_pool()
        self._decoder = self._pool.take()
        self.hold_back_ms = hold_back_ms
        self.max_text_hold_ms = max_text_hold_ms
        self._start_state()

    def _start_state(self) -> None:
        """Nothing fed: the state of a tracker before its utterance's first sample."""
        self._utterance_open = False  # the decoder has an utterance started
        self._finished = False  # finish() ran; the next feed/set_text starts a new utterance
        self._fed_samples = 0
        self._decoded_samples = 0  # fed to pocketsphinx: a whole number of blocks until finish()
        self._pending = np.zeros(0, np.int16)  # shape [< BLOCK_SAMPLES]: waits for a full block
        self._audio: list[np.ndarray] = []  # int16 chunks of this utterance, kept for forced alignment
        self._text: str | None = None
        self._final: list[Cue] = []

    # ---- what the session engine reads

    @property
    def final_samples(self) -> int:
        """Samples of this utterance covered by final cues: audio before this may be sent."""
        if self._finished:
            return self._fed_samples
        final_ms = self._final[-1].end_ms if self._final else 0
        return min(self._fed_samples, final_ms * SAMPLES_PER_MS)

    @property
    def fed_samples(self) -> int:
        return self._fed_samples

    @property
    def cues(self) -> list[Cue]:
        """Every final cue of the current (or just finished) utterance."""
        return list(self._final)

    @property
    def text_pending(self) -> bool:
        return self._text is not None

    # ---- what the session engine calls

    def feed(self, pcm16k: np.ndarray) -> list[Cue]:
        """Audio (float32 in [-1, 1], mono, 16 kHz, any length); returns the cues that became final."""
        samples = to_int16(pcm16k)
        self._begin_if_finished()
        if not len(samples):
            return []
        if not self._utterance_open:
            start_utterance(self._decoder)
            self._utterance_open = True
        self._fed_samples += len(samples)
        self._audio.append(samples)
        waiting = np.concatenate([self._pending, samples])
        n_whole = len(waiting) // BLOCK_SAMPLES * BLOCK_SAMPLES
        self._pending = waiting[n_whole:]
        new_final: list[Cue] = []
        # One decision per block, never per caller chunk: the same audio makes the same
        # cues final at the same points however it was chunked.
        for start in range(0, n_whole, BLOCK_SAMPLES):
            process_blocks(self._decoder, waiting[start:start + BLOCK_SAMPLES])
            self._decoded_samples += BLOCK_SAMPLES
            new_final += self._settle_block()
        return new_final

    def set_text(self, text: str) -> None:
        """The sentence of this utterance: its cues come from forced alignment at finish()."""
        self._begin_if_finished()
        self._text = text

    def finish(self) -> list[Cue]:
        """End of utterance: every remaining cue, up to the last sample fed."""
        self._begin_if_finished()
        if not self._utterance_open:  # nothing fed: no cues
            self._finished = True
            return []
        process_blocks(self._decoder, self._pending)  # the last, partial block
        self._decoded_samples += len(self._pending)
        self._pending = self._pending[:0]
        self._decoder.end_utt()
        self._utterance_open = False
        spans = self._final_phones()
        end_ms = math.ceil(self._fed_samples / SAMPLES_PER_MS)  # the last cue covers a partial ms too
        rest = continue_after(cues_from_phones(spans, end_ms), self._final_end_ms(), self._last_final_viseme())
        self._final += rest
        self._finished = True
        return rest

    def reset(self) -> None:
        """Interrupt: drop the utterance; the next feed starts a new one from sample 0."""
        if self._utterance_open:
            self._decoder.end_utt()
        self._start_state()

    def close(self) -> None:
        """Give the decoder back to its pool; the tracker is unusable afterwards."""
        if self._decoder is None:
            return
        self.reset()
        self._pool.give_back(self._decoder)
        self._decoder = None

    # ---- inside

    def _begin_if_finished(self) -> None:
        if self._decoder is None:
            raise RuntimeError("VisemeTracker used after close()")
        if self._finished:
            self._start_state()

    def _final_end_ms(self) -> int:
        return self._final[-1].end_ms if self._final else 0

    def _last_final_viseme(self) -> str | None:
        return self._final[-1].viseme if self._final else None

    def _settle_block(self) -> list[Cue]:
        """After a block: the cues that are now final (none while waiting for text alignment)."""
        if self._text is not None:
            held_ms = self._decoded_samples // SAMPLES_PER_MS - self._final_end_ms()
            if held_ms <= self.max_text_hold_ms:
                return []
            log.info("visemes: text held %d ms of audio (limit %d); cues from recognition instead",
                     held_ms, self.max_text_hold_ms)
            self._text = None
        edge_ms = self._decoded_samples // SAMPLES_PER_MS
        cues = cues_from_phones(recognised_phones(self._decoder), edge_ms)
        open_cues = continue_after(cues, self._final_end_ms(), self._last_final_viseme())
        # The last cue is still growing at the edge: never final before finish().
        settled = [cue for cue in open_cues[:-1] if cue.end_ms <= edge_ms - self.hold_back_ms]
        self._final += settled
        return settled

    def _final_phones(self) -> list[PhoneSpan]:
        """At finish: the aligned phones of the known text, else the recognised ones."""
        recognised = recognised_phones(self._decoder)
        if self._text is None:
            return recognised
        text, self._text = self._text, None
        aligned = align_phones(self._decoder, np.concatenate(self._audio), text)
        return aligned if aligned is not None else recognised
