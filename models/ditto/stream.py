"""The Audio2Motion schemes (online, and offline for whole clips): audio features in, motion out.

Ditto samples motion in windows of 80 frames. Consecutive windows overlap by
`overlap` frames, so each new window adds `valid = 80 - overlap` frames:

    window k:      [ overlap (seen before) | valid (new) ]
    seam:          the last `fuse` frames of the result so far are blended
                   linearly into the new window's frames at the same place
                   (fuse = min(overlap, valid) online), then a 3-frame mean
                   filter runs across the seam on dims [0, 202) (pose + t).

A window is conditioned on one motion frame (`kp_cond`): after each window
it is reset to the source's motion, keeping dims [0, 202) from the motion
`overlap` frames before the end (fix_kp_cond = 1 online).

The stream starts with `overlap` frames of features of silence, so the first
window needs only `valid` real frames; online its output is held back, and a
frame is emitted once the window after it has blended it, so motion for
real frame 0 leaves after 2 * valid real frames. At end of speech the last,
shorter window is padded by repeating its last feature row.

Everything a stream needs between calls is in `StreamCarry` (numpy arrays and
ints, picklable), so any process holding the same weights continues it.
Windows are run as soon as they are complete (the reference waits for
`valid` new rows before it looks, which gives the same windows but can only be
later for chunk sizes that do not divide `valid`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .audio import FEAT_DIM
from .config import StreamConfig
from .motion import Info, info_to_vec
from .sampler import DDIMSampler

POSE_T_DIMS = 202  # scale, pitch, yaw, roll, t: the dims that get smoothed


@dataclass(frozen=True)
class SourceCond:
    """What a persona contributes to every LMDM condition row."""

    motion: np.ndarray  # (265,) source motion in LMDM space (scale - 1)
    eye_open: np.ndarray  # (2,)
    eye_ball: np.ndarray  # (6,)
    kp: np.ndarray  # (63,) canonical keypoints

    @classmethod
    def from_info(cls, info: Info, eye_open: np.ndarray, eye_ball: np.ndarray) -> "SourceCond":
        return cls(
            motion=info_to_vec(info).astype(np.float32),
            eye_open=np.asarray(eye_open, np.float32).reshape(2),
            eye_ball=np.asarray(eye_ball, np.float32).reshape(6),
            kp=np.asarray(info["kp"], np.float32).reshape(63),
        )


@dataclass
class StreamCarry:
    """State between calls. Row counts are small: <= 80 + new feature rows, and the
    motion tail that later windows still blend, smooth or emit."""

    rows: np.ndarray  # (n, 1024 + 8) features + emotion, from the next window's first frame
    motion: np.ndarray | None  # (m, 265) tail of the fused motion
    emit_from: int | None  # index in `motion` of the next frame to emit (None: first window pending)
    kp_cond: np.ndarray  # (265,) the frame the next window is conditioned on
    window: int = 0  # windows sampled so far (also picks each window's x_init)
    ended: bool = False
    d0: np.ndarray | None = None  # (265,) first frame of the first window, output format


class MotionStream:
    """Audio features -> motion frames (n, 265): LMDM space with scale + 1 restored,
    clipped to `clip` (2, 265) rows min/max when given, as the renderer takes them."""

    def __init__(self, sampler: DDIMSampler, cfg: StreamConfig, source: SourceCond, clip: np.ndarray | None = None):
        self.sampler, self.cfg, self.source = sampler, cfg, source
        self.seq = sampler.shape[1]
        self.valid = self.seq - cfg.overlap
        self.fuse = min(cfg.overlap, self.valid) if cfg.online else cfg.overlap
        self.clip = None if clip is None else np.asarray(clip, np.float32)[:2]

    # ---- public API -----------------------------------------------------

    def start(self, silence_feats: np.ndarray, emotion: np.ndarray) -> StreamCarry:
        """silence_feats: (overlap, 1024) features of silence (the start buffer); emotion: (8,)."""
        assert len(silence_feats) == self.cfg.overlap
        return StreamCarry(
            rows=self._rows(silence_feats, emotion),
            motion=None,
            emit_from=None if self.cfg.online else 0,
            kp_cond=self.source.motion.copy(),
        )

    def feed(self, carry: StreamCarry, feats: np.ndarray, emotion: np.ndarray) -> tuple[np.ndarray, StreamCarry]:
        """feats: (n, 1024) new features; emotion: (8,) or (n, 8) -> (k, 265) motion frames."""
        carry.rows = np.concatenate([carry.rows, self._rows(feats, emotion)])
        out = []
        while len(carry.rows) >= self.seq:
            out.append(self._window(carry, carry.rows[: self.seq], self.valid))
        return self._stack(out), carry

    def flush(self, carry: StreamCarry) -> tuple[np.ndarray, StreamCarry]:
        """End of speech: run the last, padded window (if any rows remain)."""
        out = []
        if len(carry.rows) > 0 and not carry.ended:
            n = len(carry.rows)
            padded = np.concatenate([carry.rows, np.repeat(carry.rows[-1:], self.seq - n, 0)])
            out.append(self._window(carry, padded, n))
        carry.ended = True
        return self._stack(out), carry

    def whole(self, feats: np.ndarray, emotion: np.ndarray) -> np.ndarray:
        """The reference's offline scheme: (n, 1024) features of a whole clip -> (n, 265).

        Windows start every `valid` frames from frame 0 (no silence buffer); the last
        is padded by repeating its last row. Each is blended and smoothed into the motion
        as online, conditioned on the frame before the overlap (kp-condition resets as
        configured); then the motion is cut to n frames and smoothed again as a whole.
        Offline settings upstream: overlap 10, fix_kp_cond 0, 50 steps, no clipping.
        """
        rows = self._rows(feats, emotion)
        n = len(rows)
        carry = StreamCarry(rows=rows, motion=None, emit_from=0, kp_cond=self.source.motion.copy())
        for start in range(0, n, self.valid):
            window = rows[start : start + self.seq]
            window = np.concatenate([window, np.repeat(window[-1:], self.seq - len(window), 0)])
            self._merge(carry, self._sample(carry, self.condition(window)))
            carry.window += 1
            carry.kp_cond = self._next_kp_cond(carry)
        motion = smooth(carry.motion[:n].copy(), 0, n, self.cfg.smooth_k)
        return self.to_output(motion)

    def to_output(self, motion: np.ndarray) -> np.ndarray:
        """(n, 265) LMDM space -> clipped, scale + 1 (the frames the stitcher takes)."""
        out = motion if self.clip is None else np.clip(motion, self.clip[0], self.clip[1])
        out = out.copy()
        out[:, 0] += 1
        return out

    # ---- one window -----------------------------------------------------

    def _rows(self, feats: np.ndarray, emotion: np.ndarray) -> np.ndarray:
        feats = np.asarray(feats, np.float32).reshape(-1, FEAT_DIM)
        emo = np.broadcast_to(np.asarray(emotion, np.float32), (len(feats), 8))
        return np.concatenate([feats, emo], 1)

    def condition(self, rows: np.ndarray) -> np.ndarray:
        """(80, 1032) features + emotion -> (80, 1103) = audio | emo | eye open | eye ball | kp."""
        s = self.source
        tail = np.concatenate([s.eye_open, s.eye_ball, s.kp])[None].repeat(len(rows), 0)
        return np.concatenate([rows, tail], 1)

    def _window(self, carry: StreamCarry, rows: np.ndarray, real_valid: int) -> np.ndarray:
        pred = self._sample(carry, self.condition(rows))  # (80, 265)
        self._merge(carry, pred)
        carry.window += 1
        carry.kp_cond = self._next_kp_cond(carry)
        emitted = self._emit(carry, real_valid)
        carry.rows = carry.rows[real_valid:]
        self._trim(carry)
        return emitted

    def _sample(self, carry: StreamCarry, cond: np.ndarray) -> np.ndarray:
        x_init = self.sampler.noise.x_init(carry.window, self.sampler.shape)
        out = self.sampler.sample(
            torch.from_numpy(carry.kp_cond[None].astype(np.float32)), torch.from_numpy(cond[None]), x_init
        )
        return out[0].float().cpu().numpy()

    def _merge(self, carry: StreamCarry, pred: np.ndarray) -> None:
        """Blend the new window into the motion so far, then smooth across the seam."""
        if carry.motion is None:
            carry.motion = smooth(pred, 0, len(pred), self.cfg.smooth_k)
            return
        res = fuse_windows(carry.motion.copy(), pred, self.seq, self.valid, self.fuse)
        n = len(res)
        carry.motion = smooth(res, n - self.valid - self.fuse, n - self.valid + 1, self.cfg.smooth_k)

    def _next_kp_cond(self, carry: StreamCarry) -> np.ndarray:
        """fix_kp_cond: every n-th window restart from the source, keeping some dims."""
        prev = carry.motion[len(carry.motion) - self.cfg.overlap - 1]
        k = self.cfg.fix_kp_cond
        if k > 0 and carry.window % k == 0:  # counted after this window
            cond = self.source.motion.copy()
            if self.cfg.fix_kp_cond_dim is not None:
                a, b = self.cfg.fix_kp_cond_dim
                cond[a:b] = prev[a:b]
            return cond
        return prev.copy()

    def _emit(self, carry: StreamCarry, real_valid: int) -> np.ndarray:
        if carry.d0 is None:
            carry.d0 = self.to_output(carry.motion[:1])[0]
        if carry.emit_from is None:  # online: the first window waits for the next blend
            carry.emit_from = len(carry.motion) - self.fuse
            return np.zeros((0, carry.motion.shape[1]), np.float32)
        out = carry.motion[carry.emit_from : carry.emit_from + real_valid]
        carry.emit_from += real_valid
        return self.to_output(out)

    def _trim(self, carry: StreamCarry) -> None:
        """Keep only what later windows blend (fuse), smooth (k // 2), condition on
        (overlap + 1) or emit."""
        keep = max(self.fuse + self.cfg.smooth_k // 2, self.cfg.overlap + 1, len(carry.motion) - carry.emit_from)
        cut = max(0, len(carry.motion) - keep)
        carry.motion = carry.motion[cut:]
        carry.emit_from -= cut

    @staticmethod
    def _stack(parts: list[np.ndarray]) -> np.ndarray:
        parts = [p for p in parts if len(p)]
        return np.concatenate(parts, 0) if parts else np.zeros((0, 265), np.float32)


def smooth(motion: np.ndarray, start: int, end: int, k: int) -> np.ndarray:
    """Mean filter of width k over frames [start, end) on the pose + t dims, reading
    the unsmoothed values (edges use the frames that exist)."""
    if k <= 1:
        return motion
    src = motion.copy()
    half = k // 2
    n = len(motion)
    for i in range(start, end):
        lo, hi = max(0, i - half), min(n, i + half + 1)
        motion[i, :POSE_T_DIMS] = src[lo:hi, :POSE_T_DIMS].mean(axis=0)
    return motion


def fuse_windows(res: np.ndarray, pred: np.ndarray, seq: int, valid: int, fuse: int) -> np.ndarray:
    """res: (m, D) motion so far; pred: (seq, D) new window -> (m + valid, D).

    The last `fuse` frames of res and the same frames of pred (they end where
    pred's new part starts) are mixed with weights rising linearly 0 -> (fuse-1)/fuse
    towards pred; pred's `valid` new frames are appended. res is changed in place.
    """
    alpha = (np.arange(fuse, dtype=np.float32) / fuse).reshape(-1, 1)
    old = slice(len(res) - fuse, len(res))
    new_start = seq - valid - fuse
    res[old] = res[old] * (1 - alpha) + pred[new_start : new_start + fuse] * alpha
    return np.concatenate([res, pred[seq - valid :]], 0)


def mirror_index(i: int, size: int) -> int:
    """Loop a video persona's frames forth and back: 0 1 2 3 3 2 1 0 0 1 ..."""
    turn, rest = divmod(i, size)
    return rest if turn % 2 == 0 else size - rest - 1


def window_condition(
    aud: np.ndarray, idx: int, emo: np.ndarray, eye_open: np.ndarray, eye_ball: np.ndarray, kp: np.ndarray
) -> np.ndarray:
    """The reference's ConditionHandler for frames idx .. idx + n - 1 (idx < 0: the
    silence buffer, clamped to frame 0).

    aud: (n, 1024); emo: (k, 8) cycled; eye_open (m, 2) / eye_ball (m, 6) mirror-looped
    over a video persona's frames; kp: (63,) -> (n, 1103).
    """
    frames = [max(i, 0) for i in range(idx, idx + len(aud))]
    emo_rows = emo[[f % len(emo) for f in frames]]
    eye_rows = [mirror_index(f, len(eye_open)) for f in frames]
    ball_rows = [mirror_index(f, len(eye_ball)) for f in frames]
    sc = np.broadcast_to(np.asarray(kp, np.float32).reshape(1, -1), (len(aud), 63))
    return np.concatenate([aud, emo_rows, eye_open[eye_rows], eye_ball[ball_rows], sc], -1)


def first_frame_delay_frames(overlap: int, seq_frames: int = 80, online: bool = True) -> int:
    """Frames of audio features needed before motion for frame 0 comes out.

    The first window needs `valid = seq - overlap` real frames (the rest is the
    silence buffer); online, its frames wait for the second window's blend.
    Add HuBERT's own lookahead (2 frames + 80 samples) for the audio delay.
    """
    valid = seq_frames - overlap
    return 2 * valid if online else valid
