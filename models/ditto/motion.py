"""Motion post-processing: LMDM motion vectors -> LivePortrait keypoints.

Motion layout (265 = LMDM space, 328 with the canonical keypoints):
    scale 1 | pitch 66 | yaw 66 | roll 66 | t 3 | exp 63 [| kp 63]
Angles are 66-bin logits (softmax expectation * 3 - 97.5 gives degrees).
In LMDM space column 0 holds scale - 1; an "info" dict holds scale itself.
"""
from __future__ import annotations

import copy

import numpy as np
from scipy.special import softmax

# (key, width) in vector order
LAYOUT = (("scale", 1), ("pitch", 66), ("yaw", 66), ("roll", 66), ("t", 3), ("exp", 63), ("kp", 63))
MOTION_DIM = 265  # everything but kp

Info = dict  # key -> (1, width) float32 array


def info_to_vec(info: Info, ignore: tuple[str, ...] = ("kp",)) -> np.ndarray:
    """Info dict -> flat vector in LAYOUT order (scale stored as scale - 1)."""
    parts = []
    for key, width in LAYOUT:
        if key in info and key not in ignore:
            v = np.asarray(info[key]).reshape(width)
            parts.append(v - 1 if key == "scale" else v)
    return np.concatenate(parts, -1)


def vec_to_info(vec: np.ndarray) -> Info:
    """Flat vector (>= 265 entries, scale - 1 first) -> info dict of (1, width) arrays."""
    assert vec.shape[0] >= MOTION_DIM, vec.shape
    out, start = {}, 0
    for key, width in LAYOUT:
        if start >= len(vec):
            break
        v = vec[start : start + width].reshape(1, width)
        out[key] = v + 1 if key == "scale" else v
        start += width
    return out


def bin66_to_degree(logits: np.ndarray) -> np.ndarray:
    """(B, 66) bin logits -> (B,) degrees; anything else is taken as degrees already."""
    if logits.ndim > 1 and logits.shape[1] == 66:
        p = softmax(logits, axis=1)
        return np.sum(p * np.arange(66, dtype=np.float32), axis=1) * 3 - 97.5
    return logits


# ---- pose and keypoints ----------------------------------------------------------


def rotation_matrix(pitch_deg, yaw_deg, roll_deg) -> np.ndarray:
    """Degrees, (B,) or (B, 1) each -> (B, 3, 3) = (Rz Ry Rx)^T, so that kp @ R rotates kp."""
    x, y, z = (np.asarray(a, np.float32).reshape(-1, 1) / 180 * np.pi for a in (pitch_deg, yaw_deg, roll_deg))
    b = x.shape[0]
    one, zero = np.ones((b, 1), np.float32), np.zeros((b, 1), np.float32)
    rx = np.concatenate([one, zero, zero, zero, np.cos(x), -np.sin(x), zero, np.sin(x), np.cos(x)], 1)
    ry = np.concatenate([np.cos(y), zero, np.sin(y), zero, one, zero, -np.sin(y), zero, np.cos(y)], 1)
    rz = np.concatenate([np.cos(z), -np.sin(z), zero, np.sin(z), np.cos(z), zero, zero, zero, one], 1)
    rot = rz.reshape(b, 3, 3) @ ry.reshape(b, 3, 3) @ rx.reshape(b, 3, 3)
    return np.transpose(rot, (0, 2, 1))


def transform_keypoint(info: Info) -> np.ndarray:
    """Implicit keypoints of a motion: s * (kp R + exp) + t (t on x, y only) -> (B, 21, 3)."""
    kp = info["kp"]
    b = kp.shape[0]
    n = kp.shape[1] // 3 if kp.ndim == 2 else kp.shape[1]
    rot = rotation_matrix(*(bin66_to_degree(info[k]) for k in ("pitch", "yaw", "roll")))
    out = kp.reshape(b, n, 3) @ rot + info["exp"].reshape(b, n, 3)
    out *= info["scale"][..., None]
    out[:, :, 0:2] += info["t"][:, None, 0:2]
    return out


def mix_source_driving(x_s: Info, x_d: Info, use_d_keys=("exp", "pitch", "yaw", "roll", "t"), d0: Info | None = None) -> Info:
    """Driving motion relative to its first frame d0, applied on the source; keys not
    driven keep the source's value. A dict use_d_keys scales each key's motion."""
    if d0 is not None and isinstance(use_d_keys, dict):
        x_d = {k: x_s[k] + (v - d0[k]) * use_d_keys.get(k, 1) for k, v in x_d.items()}
    elif d0 is not None:
        x_d = {k: x_s[k] + (v - d0[k]) for k, v in x_d.items()}
    for k, v in x_s.items():
        if k not in x_d or k not in use_d_keys:
            x_d[k] = v
    if isinstance(use_d_keys, dict) and d0 is None:
        for k, alpha in use_d_keys.items():
            x_d[k] *= alpha
    return x_d


# ---- blinks, gaze, controls ------------------------------------------------------

EYE_KP = [11, 13, 15, 16, 18]  # keypoints whose expression moves the eyes
LIP_KP = [6, 12, 14, 17, 19, 20]


def eye_blink_index(n: int, blink_n: int = 15, open_n: int | list[int] = -1, rng=None) -> list[int]:
    """Per frame, which frame of the blink clip to show (0 = open).

    open_n: -1 no blinks; >0 fixed open gap; list: gaps in turn; 0: random gaps of
    60..100 frames drawn from `rng` (a `random.Random`, as the reference uses Python's).
    """
    idx = [0] * n
    if isinstance(open_n, int) and open_n < 0:
        return idx
    if isinstance(open_n, int):
        gaps = [open_n] if open_n > 0 else []
    elif isinstance(open_n, list):
        gaps = open_n
    else:
        raise ValueError(f"open_n must be an int or a list, got {open_n!r}")
    draw = (lambda: rng.randint(60, 100)) if not gaps else None
    first = gaps[0] if gaps else draw()
    last = gaps[-1] if gaps else draw()
    stop, cur, k = n - max(last, blink_n), first, 1
    while cur < stop:
        idx[cur : cur + blink_n] = list(range(blink_n))
        gap = gaps[k % len(gaps)] if gaps else draw()
        k += 1
        cur += blink_n + gap
    return idx


def fix_exp_weights(drive_eye: bool, has_blink_clip: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a1, a2, a3), each (1, 63): exp = a1 * driving + a2 * source + a3 * blink delta.
    Lips always follow the driving motion; eyes follow it, the blink clip, or the source."""
    a1 = np.zeros((21, 3), np.float32)
    a1[LIP_KP] = 1
    a2: np.ndarray | int = 0
    if drive_eye and not has_blink_clip:
        a1[EYE_KP] = 1
    elif drive_eye:
        a2 = np.zeros((21, 3), np.float32)
        a2[EYE_KP] = 1
        a2 = a2.reshape(1, -1)
    a1 = a1.reshape(1, -1)
    return a1 * (1 - a2), (1 - a1) + a1 * a2, a2 * np.ones((1, 63), np.float32)


def ctrl_motion(x_d: Info, **kw) -> Info:
    """delta_pitch/yaw/roll: degrees added (the key becomes degrees, (1,)); alpha_*: scale
    the key as it is; delta_exp: added to exp."""
    for k in ("pitch", "yaw", "roll"):
        if f"delta_{k}" in kw:
            x_d[k] = bin66_to_degree(x_d[k]) + kw[f"delta_{k}"]
    for k in ("pitch", "yaw", "roll"):
        if f"alpha_{k}" in kw:
            x_d[k] = x_d[k] * kw[f"alpha_{k}"]
    if "delta_exp" in kw:
        x_d["exp"] = x_d["exp"] + kw["delta_exp"]
    return x_d


def fade(x_d: Info, dst: Info, alpha: float, keys=None) -> Info:
    """Blend keys towards `dst` (alpha 1 = unchanged); kp never fades."""
    for k in list(x_d.keys()) if keys is None else keys:
        if k != "kp":
            x_d[k] = x_d[k] * alpha + dst[k] * (1 - alpha)
    return x_d


def ctrl_vad(x_d: Info, dst: Info, alpha: float) -> Info:
    """Voice activity: blend the whole expression towards dst (the reference builds a
    lip-only mask here but does not use it)."""
    x_d["exp"] = x_d["exp"] * alpha + dst["exp"] * (1 - alpha)
    return x_d


def _eye_delta(exp: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Move the pupils: x on exp[33], exp[45] (asymmetric gains), y on exp[34], exp[46]."""
    exp[0, 33] += dx * (0.0007 if dx > 0 else 0.001)
    exp[0, 45] += dx * (0.001 if dx > 0 else 0.0007)
    exp[0, 34] += dy * -0.001
    exp[0, 46] += dy * -0.001
    return exp


def fix_gaze(pose_s: tuple[float, float], x_d: Info) -> Info:
    """Keep the eyes on the camera: counter the head's yaw/pitch change from the source."""
    yaw_s, pitch_s = pose_s
    dx = (bin66_to_degree(x_d["yaw"]).item() - yaw_s) * 0.26
    dy = (bin66_to_degree(x_d["pitch"]).item() - pitch_s) * 0.28
    x_d["exp"] = _eye_delta(x_d["exp"], dx, dy)
    return x_d


# ---- source smoothing (video personas) -------------------------------------------


def mean_filter(arr: np.ndarray, k: int) -> np.ndarray:
    """Centered mean over axis 0, window k, shrinking at the ends."""
    n, half = arr.shape[0], k // 2
    return np.stack([arr[max(0, i - half) : min(n, i + half + 1)].mean(0) for i in range(n)], 0)


def smooth_infos(infos: list[Info], k: int = 13, ignore: tuple[str, ...] = ()) -> list[Info]:
    """Mean-filter every key of a video persona's per-frame motion over time."""
    keys = infos[0].keys()
    smoothed = {
        key: [i[key] for i in infos] if key in ignore else mean_filter(np.stack([i[key] for i in infos]), k)
        for key in keys
    }
    return [{key: smoothed[key][j] for key in keys} for j in range(len(infos))]


def fade_schedule(n_frames: int, fade_in: int = -1, fade_out: int = -1) -> dict[int, float]:
    """frame -> fade alpha: 0 -> 1 over the first fade_in frames, 1 -> 0 over the last
    fade_out + 1 frames (the reference's setup_Nd); frames not listed do not fade."""
    alpha: dict[int, float] = {}
    for i in range(max(fade_in, 0)):
        alpha[i] = i / fade_in
    if fade_out > 0:
        first, last = n_frames - fade_out - 1, n_frames - 1
        for i in range(first, n_frames):
            alpha[i] = max((last - i) / (last - first), 0)
    return alpha


def stitch_keypoints(mlp, x_s: np.ndarray, x_d: np.ndarray) -> np.ndarray:
    """Ditto's StitchNetwork: LivePortrait's stitching MLP and wrapper on (1, 21, 3) numpy
    keypoints (x_d moved so the face border stays where the source has it)."""
    import torch

    from ..liveportrait.keypoints import stitching

    param = next(mlp.parameters())  # on the renderer's device (CUDA on a GPU), maybe fp16
    x_s, x_d = (torch.from_numpy(np.asarray(x, np.float32)).to(param.device, param.dtype) for x in (x_s, x_d))
    with torch.no_grad():
        out = stitching(mlp, x_s, x_d)
    return out.float().cpu().numpy()


# ---- the per-frame stitcher ------------------------------------------------------


class MotionStitch:
    """Per frame: driving motion (LMDM output) + source -> keypoints (x_s, x_d) for the warp.

    Order, as the reference: relative to the first driving frame d0 -> lips from the
    driving motion, eyes from it or from a blink clip -> voice-activity damping ->
    pose/exp controls -> fade -> gaze fix -> keypoints -> stitching.
    State between frames (d0, fade target, frame index) is plain data, so the
    object pickles with a session's carry.
    """

    def __init__(
        self,
        x_s_info: Info | None,
        *,
        is_image: bool = True,
        use_d_keys=None,
        relative_d: bool = True,
        drive_eye: bool | None = None,
        blink_clip: np.ndarray | None = None,  # (n, 63) exp deltas of one blink
        blink_open_n: int | list[int] = -1,
        fade_type: str = "",  # "" | "d0" | "s"
        fade_out_keys=("exp",),
        stitching: bool = True,
        overall_ctrl: dict | None = None,
        n_frames: int = -1,
        rng=None,
    ):
        self.is_image = is_image
        self.use_d_keys = use_d_keys if use_d_keys is not None else (("exp", "pitch", "yaw", "roll", "t") if is_image else ("exp",))
        self.drive_eye = is_image if drive_eye is None else drive_eye
        self.relative_d, self.blink_clip, self.blink_open_n = relative_d, blink_clip, blink_open_n
        self.fade_type, self.fade_out_keys, self.stitching = fade_type, fade_out_keys, stitching
        self.overall_ctrl = overall_ctrl or {}
        self.a1, self.a2, self.a3 = fix_exp_weights(self.drive_eye, blink_clip is not None)
        self.n_frames, self.blink_idx = None, None
        self.set_n_frames(n_frames, rng)
        self.pose_s, self.x_s, self.fade_dst = None, None, None
        if is_image and x_s_info is not None:
            self.pose_s = [bin66_to_degree(x_s_info[k]).item() for k in ("yaw", "pitch")]
            self.x_s = transform_keypoint(x_s_info)
            if fade_type == "s":
                self.fade_dst = copy.deepcopy(x_s_info)
        self.d0: Info | None = None
        self.idx = 0

    def set_n_frames(self, n_frames: int, rng=None) -> None:
        """Known clip length (-1: open-ended, blinks planned for 3000 frames)."""
        if n_frames == self.n_frames:
            return
        self.n_frames = n_frames
        if self.drive_eye and self.blink_clip is not None:
            n = 3000 if n_frames == -1 else n_frames
            self.blink_idx = eye_blink_index(n, len(self.blink_clip), self.blink_open_n, rng)

    def __call__(self, x_s_info: Info, x_d_info: Info, mlp=None, **ctrl) -> tuple[np.ndarray, np.ndarray]:
        """-> (x_s, x_d), each (1, 21, 3). mlp: the stitching MLP (needed if stitching)."""
        ctrl = {**self.overall_ctrl, **ctrl}
        if self.relative_d and self.d0 is None:
            self.d0 = copy.deepcopy(x_d_info)
        x_d = mix_source_driving(x_s_info, x_d_info, self.use_d_keys, self.d0)
        x_d["exp"] = x_d["exp"] * self.a1 + x_s_info["exp"] * self.a2 + self._blink_delta() * self.a3
        if ctrl.get("vad_alpha", 1) < 1:
            x_d = ctrl_vad(x_d, x_s_info, ctrl["vad_alpha"])
        x_d = ctrl_motion(x_d, **ctrl)
        x_d = self._fade(x_s_info, x_d, ctrl)
        if self.drive_eye:
            if self.pose_s is None:
                self.pose_s = [bin66_to_degree(x_s_info[k]).item() for k in ("yaw", "pitch")]
            x_d = fix_gaze(self.pose_s, x_d)
        x_s = self.x_s if self.x_s is not None else transform_keypoint(x_s_info)
        if self.is_image:
            self.x_s = x_s
        kp_d = transform_keypoint(x_d)
        if self.stitching:
            kp_d = stitch_keypoints(mlp, x_s, kp_d)
        self.idx += 1
        return x_s, kp_d

    def _blink_delta(self):
        if not (self.drive_eye and self.blink_clip is not None):
            return 0
        return self.blink_clip[self.blink_idx[self.idx % len(self.blink_idx)]][None]

    def _fade(self, x_s_info: Info, x_d: Info, ctrl: dict) -> Info:
        if self.fade_type == "d0" and self.fade_dst is None:
            self.fade_dst = copy.deepcopy(x_d)  # the first frame's final motion
        if "fade_alpha" not in ctrl or self.fade_type not in ("d0", "s"):
            return x_d
        dst = self.fade_dst
        if dst is None:  # "s" on a video persona: this frame's source
            dst = copy.deepcopy(x_s_info)
            if self.is_image:
                self.fade_dst = dst
        return fade(x_d, dst, ctrl["fade_alpha"], ctrl.get("fade_out_keys", self.fade_out_keys))
