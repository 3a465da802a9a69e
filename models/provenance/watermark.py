"""Per-frame invisible watermark: a 56-bit session tag hidden in the luma of every video frame.

Scheme (quantisation-index modulation of 8×8 block means of luma, "QIM"):

- The frame is cut into 8×8 blocks (rows/columns past the last whole block are left alone).
  Each block carries one of 64 payload bits: 8 fixed sync bits followed by the 56-bit tag.
  Which block carries which bit is a keyed permutation of the blocks, so every bit is spread
  over the whole frame (64 blocks a bit at 512², 16 at 256²) and a face covering part of the
  frame, or a damaged region, costs each bit only a few of its blocks.
- Embedding moves the block's mean luma to the nearest point of one of two interleaved
  lattices: ``dither + k·step`` carries a 0, ``dither + step/2 + k·step`` carries a 1.
  The dither is a keyed random offset per block in [0, step), so the lattice positions are
  unknown without the key and unmarked content does not look marked.
- The change in mean (at most ±step/2) is spread over the block with a smooth 8×8 window
  (lower at the block edges), and added equally to R, G and B: luma coefficients sum to 1,
  so the luma mean moves by exactly the change and hue is untouched.
- ``step`` (default 6 grey levels) trades visibility for robustness: the change per pixel is
  uniform in ±step/2, which gives PSNR ≈ 42.7 dB at step 6 (≈ 40 dB at step 8).

Reading turns each block mean ``m`` into a phasor ``exp(2πi·(m − dither)/step)``: it points
to angle 0 near a 0-lattice point and to π near a 1-lattice point. Phasors are summed per
bit over all blocks and all frames given (soft pooling: a bit's vote is its blocks' average
agreement), and the sign of the real part gives the bit.

Video pipelines change levels: an RGB→YUV420→RGB round trip shifts luma by about −1 level,
TV-range conversion scales by 219/255 and adds 16. The reader therefore searches a gain
(0.8–1.25) and an offset: for a gain ``g`` the marked means are ``g·m + o``; dividing by
``g`` leaves the offset as one common phase rotation of every phasor, so the offset search
is a rotation of 64 pooled sums (cheap) and only the gain needs a pass over the blocks.
The hypothesis kept is the one where the tag bits are most decisive and the sync bits agree;
the sync bits also resolve the half-step ambiguity (an offset of step/2 inverts every bit).

What breaks it (measured on a prototype): a crop or shift of the 8-pixel grid, reading at a
different frame size than was marked (the block layout depends on the size), several
re-encodes at small sizes.

False matches: unmarked content decodes to about 32 of 64 bits wrong; accepting a tag within
8 of 64 bit errors matches a wrong candidate with probability ≈ 3e-10 per candidate.

Is there a mark at all (without a candidate tag to compare)? The search picks the hypothesis
whose sync bits agree, so on unmarked content the sync bits alone pass about one time in four.
The reader therefore also gives a ``strength``: each bit's score divided by its standard
deviation were the content unmarked (the keyed dither makes each block's pooled phasor point
anywhere, so a bit's score is then a sum of random projections), averaged over the 64 bits.
Unmarked content gives ≈ 1.0 (0.8 for pure noise, lifted by the search; at most 1.15 in 300
random keys on photos, clips and flat frames), marked content 2–11 (a 128² frame through JPEG
q50: 2.0; a 256² clip at q50: 5; a 512² frame at q50: 8). Dividing by the pooled phasors' own size, not by the frame count,
keeps a still clip (the same frame 50 times) from looking 50 times as sure.
"""
from __future__ import annotations

import hashlib
import hmac
import threading
from dataclasses import dataclass

import numpy as np

TAG_BITS = 56
SYNC_BITS = 8
PAYLOAD_BITS = SYNC_BITS + TAG_BITS  # 64 bits carried by every frame
SYNC_PATTERN = 0b10110010  # known to the reader; fixes the half-step (all bits inverted) ambiguity
BLOCK = 8  # block side in pixels
# At least 4 blocks a bit, so that one frame still votes each bit with several blocks:
# 128 px gives 16×16 = 256 blocks for 64 bits. Smaller frames are left unmarked.
MIN_SIDE = 128

# Luma weights (BT.601). They sum to 1, so adding the same value to R, G and B moves luma by it.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# (24,) float32: the luma weight of each R, G, B value in a row of 8 pixels, divided by the 64
# pixels of a block, so that one dot product turns a block's row sums into its mean luma.
LUMA_OF_ROW_SUMS = np.tile(LUMA_WEIGHTS, BLOCK) / np.float32(BLOCK * BLOCK)

# Reader search grids.
GAIN_RANGE = (0.8, 1.25)
GAIN_STEP = 0.006  # relative; a 0.6 % gain error turns a 128-level span by ~0.13 of a step
PHASE_STEPS = 64  # offset search: 64 rotations of a step (≈ 0.1 level at step 6)
# A reading below this strength is "no mark found" (unmarked content ≈ 1.0; see the module notes).
MIN_STRENGTH = 1.6
# Of the 8 sync bits: more wrong than this and the decoded tag is noise.
MAX_SYNC_ERRORS = 1


def session_tag(secret: bytes, session_id: str) -> int:
    """The 56-bit tag of a session: HMAC-SHA256(secret, session_id), first 7 bytes, big-endian."""
    digest = hmac.new(secret, session_id.encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[: TAG_BITS // 8], "big")


def payload_bits(tag: int) -> np.ndarray:
    """The 64 bits a frame carries, sync first then the tag, most significant bit first: (64,) uint8."""
    if not 0 <= tag < 1 << TAG_BITS:
        raise ValueError(f"tag must fit in {TAG_BITS} bits")
    word = (SYNC_PATTERN << TAG_BITS) | tag
    return np.array([(word >> (PAYLOAD_BITS - 1 - i)) & 1 for i in range(PAYLOAD_BITS)], dtype=np.uint8)


def bits_to_int(bits: np.ndarray) -> int:
    """Inverse of the bit order in payload_bits, for any length (most significant first)."""
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return value


def smooth_profile() -> np.ndarray:
    """One side of the separable 8×8 spreading window, mean exactly 1: (8,) float32.

    The window is outer(profile, profile); its mean is 1, so the block mean moves by the full
    change. A raised sine, lower at the edges (0.58) than the middle (1.32): neighbouring blocks
    that move in opposite directions meet with a smaller step than a flat window would give
    (costs ~0.6 dB of PSNR against a flat window).
    """
    x = np.arange(BLOCK)
    profile = 0.3 + 0.7 * np.sin(np.pi * (x + 0.5) / BLOCK)
    return (profile / profile.mean()).astype(np.float32)


@dataclass(frozen=True)
class BlockLayout:
    """What the key and the frame size fix, cached per size so embedding does no set-up work."""

    blocks_high: int
    blocks_wide: int
    bit_of_block: np.ndarray  # (blocks_high, blocks_wide) int64: which payload bit each block carries
    dither: np.ndarray  # (blocks_high, blocks_wide) float32 in [0, step): lattice offset per block
    blocks_per_bit: np.ndarray  # (64,) float64: how many blocks carry each bit (for normalising votes)


def make_layout(key: bytes, height: int, width: int, step: float) -> BlockLayout:
    """Keyed block→bit permutation and per-block dither for one frame size."""
    blocks_high, blocks_wide = height // BLOCK, width // BLOCK
    count = blocks_high * blocks_wide
    # Seed from the key and the grid size: another key gives an unrelated layout and dither.
    seed_bytes = hmac.new(key, f"layout:{blocks_high}x{blocks_wide}".encode(), hashlib.sha256).digest()
    rng = np.random.default_rng(int.from_bytes(seed_bytes, "big"))
    # Permutation mod 64: every bit gets count // 64 blocks (or one more), scattered over the frame.
    bit_of_block = (rng.permutation(count) % PAYLOAD_BITS).reshape(blocks_high, blocks_wide)
    dither = (rng.random(count) * step).astype(np.float32).reshape(blocks_high, blocks_wide)
    blocks_per_bit = np.bincount(bit_of_block.ravel(), minlength=PAYLOAD_BITS).astype(np.float64)
    return BlockLayout(blocks_high, blocks_wide, bit_of_block, dither, blocks_per_bit)


def block_mean_luma(frame_rgb: np.ndarray, layout: BlockLayout) -> np.ndarray:
    """Mean luma of each whole 8×8 block: H×W×3 uint8 -> (blocks_high, blocks_wide) float32."""
    bh, bw = layout.blocks_high, layout.blocks_wide
    region = frame_rgb[: bh * BLOCK, : bw * BLOCK]
    # Sum the 8 rows of each block first: contiguous rows of W·3 values, uint16 holds 8·255.
    row_sums = region.reshape(bh, BLOCK, bw * BLOCK * 3).sum(axis=1, dtype=np.uint16)  # (bh, bw·24)
    # Each block is now 24 values (8 columns × RGB); one dot product applies the luma weights
    # and the 1/64 of the mean at once (much faster than a strided sum over columns).
    per_block = row_sums.reshape(bh, bw, BLOCK * 3).astype(np.float32)
    # einsum, not `@`: a matrix product may wake BLAS threads, which spin and burn CPU.
    return np.einsum("hwk,k->hw", per_block, LUMA_OF_ROW_SUMS)


@dataclass
class Reading:
    """What the reader decoded from a group of frames.

    tag: the decoded 56-bit tag (None when no frame was big enough to carry one);
    bit_errors_sync: how many of the 8 sync bits came out wrong (0 on a marked clip);
    confidence: mean agreement of the blocks with their bit's decision, 0..1 (≈1 clean,
    near 0 for unmarked content, though the search biases it slightly up);
    frames: how many frames contributed;
    strength: how far the bits stand out from what unmarked content gives (≈1 unmarked, see
    the module notes).
    """

    tag: int | None
    bit_errors_sync: int
    confidence: float
    frames: int
    strength: float = 0.0

    @property
    def found(self) -> bool:
        """A mark is there: the sync bits agree and the bits stand out from unmarked content."""
        return (self.tag is not None and self.bit_errors_sync <= MAX_SYNC_ERRORS
                and self.strength >= MIN_STRENGTH)

    def matches(self, tag: int, max_bit_errors: int = 8) -> bool:
        """True when the decoded 64 bits (sync + tag) are within max_bit_errors of those of `tag`."""
        if self.tag is None:
            return False
        tag_errors = ((self.tag ^ tag) & ((1 << TAG_BITS) - 1)).bit_count()
        return tag_errors + self.bit_errors_sync <= max_bit_errors


class FrameMarker:
    """Embeds and reads the watermark with one server secret.

    key: the server's watermark secret (keys the block permutation and the dither; a reader
    needs the same key). step: QIM lattice step in grey levels (bigger: more robust, more visible).
    """

    def __init__(self, key: bytes, step: float = 6.0):
        self.key = bytes(key)
        self.step = float(step)
        self.profile = smooth_profile()  # (8,) float32: window along one axis
        self.profile_rgb = np.repeat(self.profile, 3)  # (24,) float32: the same per column, for R, G, B
        self._layouts: dict[tuple[int, int], BlockLayout] = {}
        self._scratch = threading.local()  # work buffers per size (see scratch())

    def layout(self, height: int, width: int) -> BlockLayout:
        """The cached layout for a frame size (built on first use)."""
        size = (height, width)
        if size not in self._layouts:
            self._layouts[size] = make_layout(self.key, height, width, self.step)
        return self._layouts[size]

    # -- embedding ---------------------------------------------------------------------------

    def embed(self, frame_rgb: np.ndarray, tag: int) -> np.ndarray:
        """Marked copy of an H×W×3 uint8 RGB frame (frames under MIN_SIDE come back as an unchanged copy)."""
        check_frame(frame_rgb)
        height, width = frame_rgb.shape[:2]
        if min(height, width) < MIN_SIDE:
            return frame_rgb.copy()
        layout = self.layout(height, width)
        change = self.mean_changes(block_mean_luma(frame_rgb, layout), layout, payload_bits(tag))
        return self.apply_changes(frame_rgb, change, layout)

    def mean_changes(self, means: np.ndarray, layout: BlockLayout, bits: np.ndarray) -> np.ndarray:
        """How far each block mean must move to sit on its bit's lattice: (bh, bw) float32."""
        step = self.step
        lattice_offset = layout.dither + bits[layout.bit_of_block].astype(np.float32) * (step / 2)
        # Distance from the nearest lattice point, in [-step/2, step/2).
        error = np.mod(means - lattice_offset + step / 2, step) - step / 2
        target = means - error
        # A lattice point outside 0..255 cannot be reached (pixels clip); take the next one inward.
        target = np.where(target > 255, target - step, target)
        target = np.where(target < 0, target + step, target)
        return (target - means).astype(np.float32)

    def apply_changes(self, frame_rgb: np.ndarray, change: np.ndarray, layout: BlockLayout) -> np.ndarray:
        """Spread each block's change with the window and add it to R, G and B: -> H×W×3 uint8 copy."""
        bh, bw = change.shape
        height, width = bh * BLOCK, bw * BLOCK
        field, summed = self.scratch(height, width)  # (bh, 8, W·3) float32, (H, W·3) int16
        # The window is separable, so build the field in two cheap broadcasts over contiguous
        # rows laid out like the frame's (row, column·RGB) memory: columns first, then rows.
        across = (change[:, :, None] * self.profile_rgb).reshape(bh, 1, width * 3)  # (bh, 1, W·3)
        np.multiply(across, self.profile[None, :, None], out=field)
        np.rint(field, out=field)  # whole levels, so the int16 sum below is exact
        marked = frame_rgb.copy()
        region = marked[:height, :width].reshape(height, width * 3)  # a view when W is a multiple of 8
        np.copyto(summed, region)
        np.add(summed, field.reshape(height, width * 3), out=summed, casting="unsafe")
        np.clip(summed, 0, 255, out=summed)
        marked[:height, :width] = summed.reshape(height, width, 3)  # values are 0..255: exact uint8 cast
        return marked

    def scratch(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-thread work buffers for one marked size, reused between frames.

        Allocating these ~5 MB afresh every frame (at 512²) costs more than the arithmetic:
        the allocator hands big blocks back to the OS, and touching new pages costs ~3 ms.
        Thread-local, so one FrameMarker can serve several threads.
        """
        buffers = self._scratch.__dict__.setdefault("by_size", {})
        if (height, width) not in buffers:
            buffers[(height, width)] = (np.empty((height // BLOCK, BLOCK, width * 3), np.float32),
                                        np.empty((height, width * 3), np.int16))
        return buffers[(height, width)]

    # -- reading -----------------------------------------------------------------------------

    def read(self, frames_rgb: list[np.ndarray] | np.ndarray) -> Reading:
        """Decode the tag pooled over the frames given (e.g. one second of video).

        Frames must all have one size (the size they were marked at). Searches gain and offset.
        """
        frames = [f for f in frames_rgb if min(f.shape[:2]) >= MIN_SIDE]
        if not frames:
            return Reading(tag=None, bit_errors_sync=SYNC_BITS, confidence=0.0, frames=0)
        for frame in frames:
            check_frame(frame)
        height, width = frames[0].shape[:2]
        if any(f.shape[:2] != (height, width) for f in frames):
            raise ValueError("read() needs frames of one size")
        layout = self.layout(height, width)
        means = np.stack([block_mean_luma(f, layout) for f in frames]).reshape(len(frames), -1)  # (F, blocks)
        scores, votes, null_std = self.best_hypothesis(means.astype(np.float64), layout)
        bits = (scores < 0).astype(np.uint8)  # positive real part: near the 0 lattice
        sync_expected = payload_bits(0)[:SYNC_BITS]
        confidence = float(np.mean(np.abs(scores) / votes))
        strength = float(np.mean(np.abs(scores) / np.maximum(null_std, 1e-12)))
        return Reading(tag=bits_to_int(bits[SYNC_BITS:]),
                       bit_errors_sync=int(np.count_nonzero(bits[:SYNC_BITS] != sync_expected)),
                       confidence=round(confidence, 4), frames=len(frames), strength=round(strength, 3))

    def best_hypothesis(self, means: np.ndarray,
                        layout: BlockLayout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Search gain and offset; -> per-bit soft scores, votes behind each bit, and each
        score's standard deviation on unmarked content (all (64,)).

        means: (F, blocks) float64 block means of the frames read.
        """
        frame_count = means.shape[0]
        bit_index = layout.bit_of_block.ravel()
        dither_phase = 2 * np.pi * layout.dither.ravel().astype(np.float64) / self.step  # (blocks,)
        # Sync bits must agree with the known pattern (signed); tag bits just need to be decisive.
        sync_sign = 1.0 - 2.0 * payload_bits(0)[:SYNC_BITS].astype(np.float64)  # bit 0 -> +1, bit 1 -> -1
        rotations = np.exp(-2j * np.pi * np.arange(PHASE_STEPS) / PHASE_STEPS)  # (P,) offset hypotheses
        votes = layout.blocks_per_bit * frame_count
        best = (-np.inf, None, None)
        for gain in gain_grid():
            phase = 2 * np.pi * means / (gain * self.step) - dither_phase  # (F, blocks)
            phasors = np.exp(1j * phase).sum(axis=0)  # pool over frames first: (blocks,)
            pooled = (np.bincount(bit_index, phasors.real, PAYLOAD_BITS)
                      + 1j * np.bincount(bit_index, phasors.imag, PAYLOAD_BITS))  # (64,)
            scores = (pooled[:, None] * rotations[None, :]).real / votes[:, None]  # (64, P)
            objective = (np.abs(scores[SYNC_BITS:]).sum(axis=0)
                         + (sync_sign[:, None] * scores[:SYNC_BITS]).sum(axis=0))  # (P,)
            index = int(np.argmax(objective))
            if objective[index] > best[0]:
                best = (objective[index], scores[:, index] * votes, phasors)
        _, scores, phasors = best
        # Unmarked, a block's pooled phasor has a uniformly random angle: its projection on
        # any axis has variance |phasor|²/2, and a bit's score sums its blocks'.
        null_std = np.sqrt(np.bincount(bit_index, np.abs(phasors) ** 2, PAYLOAD_BITS) / 2)
        return scores, votes, null_std


def gain_grid() -> np.ndarray:
    """Gains the reader tries, geometric from 0.8 to 1.25 (always including 1.0): (G,) float64."""
    low, high = np.log(GAIN_RANGE[0]), np.log(GAIN_RANGE[1])
    below = np.arange(0.0, low, -GAIN_STEP)
    above = np.arange(GAIN_STEP, high, GAIN_STEP)
    return np.exp(np.concatenate([below, above]))


def check_frame(frame_rgb: np.ndarray) -> None:
    """Reject anything that is not an H×W×3 uint8 image (a float frame would silently mark wrong)."""
    if frame_rgb.dtype != np.uint8 or frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3:
        raise ValueError(f"expected H×W×3 uint8 RGB, got {frame_rgb.dtype} {frame_rgb.shape}")
