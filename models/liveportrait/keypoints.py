"""Implicit-keypoint math of LivePortrait: pose, transforms, relative motion, stitching, retargeting.

Conventions (checked against the reference by tests/parity/test_liveportrait_keypoints.py):
- Head pose comes as 66 bins of 3°: deg = Σ softmax(logits)·[0..65] · 3 − 97.5.
- R = (Rz(roll) · Ry(yaw) · Rx(pitch))ᵀ and keypoints are ROW vectors: kp @ R.
- x = scale · (kp @ R + exp), then x[..., :2] += t[:, :2]; t_z is never used.
- Keypoint tensors are B×21×3 (K=21 in the official models), angles B×1 degrees.

A "kp info" is the dict M gives after `refine_kp_info`:
pitch/yaw/roll B×1 degrees, t B×3, exp B×K×3, scale B×1, kp B×K×3.
Driving motion for `relative_motion` is a dict with R B×3×3, exp B×K×3,
scale B×1 and t B×3 (the layout of upstream motion templates).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .stitching_retargeting import RetargetingMLP

NUM_BINS = 66
BIN_DEGREES = 3.0
BIN_OFFSET_DEGREES = 97.5


# --- head pose ----------------------------------------------------------------------------


def headpose_pred_to_degree(pred: torch.Tensor) -> torch.Tensor:
    """B×66 bin logits -> B degrees; anything else (already degrees) passes through unchanged."""
    if pred.ndim > 1 and pred.shape[1] == NUM_BINS:
        bins = torch.arange(NUM_BINS, dtype=pred.dtype, device=pred.device)
        return (torch.softmax(pred, dim=1) * bins).sum(dim=1) * BIN_DEGREES - BIN_OFFSET_DEGREES
    return pred


def _as_column(angle: torch.Tensor) -> torch.Tensor:
    # B or B×1 degrees -> B×1 radians
    angle = angle.reshape(angle.shape[0], 1) if angle.ndim != 2 else angle
    return angle / 180 * math.pi


def get_rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Angles in degrees (B or B×1) -> B×3×3 rotation for row vectors: (Rz·Ry·Rx)ᵀ."""
    x, y, z = _as_column(pitch), _as_column(yaw), _as_column(roll)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    b = x.shape[0]
    rot_x = torch.cat([one, zero, zero, zero, x.cos(), -x.sin(), zero, x.sin(), x.cos()], dim=1).view(b, 3, 3)
    rot_y = torch.cat([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()], dim=1).view(b, 3, 3)
    rot_z = torch.cat([z.cos(), -z.sin(), zero, z.sin(), z.cos(), zero, zero, zero, one], dim=1).view(b, 3, 3)
    return (rot_z @ rot_y @ rot_x).transpose(1, 2)


def refine_kp_info(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """M's raw heads -> kp info: angles B×1 in degrees, kp and exp B×K×3."""
    b = raw["kp"].shape[0]
    info = dict(raw)
    for name in ("pitch", "yaw", "roll"):
        info[name] = headpose_pred_to_degree(raw[name])[:, None]
    info["kp"] = raw["kp"].reshape(b, -1, 3)
    info["exp"] = raw["exp"].reshape(b, -1, 3)
    return info


def kp_info_rotation(info: dict[str, torch.Tensor]) -> torch.Tensor:
    """B×3×3 rotation of a kp info (angles in degrees or as 66-bin logits)."""
    return get_rotation_matrix(*(headpose_pred_to_degree(info[k]) for k in ("pitch", "yaw", "roll")))


def transform_keypoint(info: dict[str, torch.Tensor]) -> torch.Tensor:
    """Canonical keypoints to posed ones: scale·(kp@R + exp) + [tx, ty, 0] -> B×K×3.

    kp/exp may be B×K×3 or flattened B×3K; angles B×1 degrees or B×66 logits.
    """
    kp = info["kp"]
    b = kp.shape[0]
    kp = kp.reshape(b, -1, 3)
    x = kp @ kp_info_rotation(info) + info["exp"].reshape(b, -1, 3)
    x = x * info["scale"][..., None]
    return _add_txy(x, info["t"])


def _add_txy(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # x: B×K×3, t: B×3 -> x with t_x, t_y added (t_z ignored, as upstream)
    shift = torch.zeros_like(x[:, :1, :])
    shift[..., :2] = t[:, None, :2]
    return x + shift


# --- relative motion ----------------------------------------------------------------------


def relative_motion(
    source: dict[str, torch.Tensor],
    source_rotation: torch.Tensor,
    driving: dict[str, torch.Tensor],
    driving_ref: dict[str, torch.Tensor],
    neutral_exp: torch.Tensor | None = None,
) -> torch.Tensor:
    """Driving keypoints x_d (B×K×3) that move the source the way driving moved from driving_ref.

    R = R_d · R_ref^T · R_s, δ = exp_s + exp_d − exp_ref, s = s_s·s_d/s_ref,
    t = t_s + t_d − t_ref with t_z zeroed; x_d = s·(kp_s @ R + δ) + t.
    Image-driven mode passes the single driving frame as both driving and
    driving_ref and `neutral_exp` = the lip array, so δ = exp_s + (exp_d − lip_array).
    """
    rot = driving["R"] @ driving_ref["R"].transpose(1, 2) @ source_rotation
    ref_exp = driving_ref["exp"] if neutral_exp is None else neutral_exp
    delta = source["exp"] + (driving["exp"] - ref_exp)
    scale = source["scale"] * (driving["scale"] / driving_ref["scale"])
    t = source["t"] + (driving["t"] - driving_ref["t"])
    t = torch.cat([t[:, :2], torch.zeros_like(t[:, 2:])], dim=1)
    x = scale[..., None] * (source["kp"] @ rot + delta)
    return x + t[:, None, :]


def motion_multiplier(x_s: torch.Tensor, x_d_ref: torch.Tensor) -> float:
    """sqrt(hull volume of x_s) / sqrt(hull volume of x_d_ref), for 1×K×3 keypoints.

    Expression-friendly driving rescales motion by this, computed once on frame 0.
    """
    from scipy.spatial import ConvexHull

    src = x_s.detach().cpu().numpy().astype(np.float32).reshape(-1, 3)
    ref = x_d_ref.detach().cpu().numpy().astype(np.float32).reshape(-1, 3)
    return float(np.sqrt(ConvexHull(src).volume) / np.sqrt(ConvexHull(ref).volume))


def expression_friendly(x_d: torch.Tensor, x_d_ref: torch.Tensor, x_s: torch.Tensor, multiplier: float) -> torch.Tensor:
    """(x_d − x_d,0)·mult + x_s: the driving motion, scaled to the source's face size."""
    return (x_d - x_d_ref) * multiplier + x_s


def apply_driving_multiplier(x_s: torch.Tensor, x_d: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
    """x_s + (x_d − x_s)·multiplier, the last step before warping."""
    return x_s + (x_d - x_s) * multiplier


# --- stitching and retargeting -------------------------------------------------------------


def concat_feat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[a.flatten, b.flatten] per batch row: B×(…+…)."""
    n = a.shape[0]
    return torch.cat([a.reshape(n, -1), b.reshape(n, -1)], dim=1)


def stitch(mlp: RetargetingMLP, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
    """The stitching MLP's raw output: B×(3K+2)."""
    return mlp(concat_feat(x_s, x_d))


def stitching(mlp: RetargetingMLP, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
    """x_d + Δexp, with Δtx, Δty added to every keypoint's x, y: B×K×3.

    Keeps the animated face's shoulders and border aligned with the source.
    """
    b, k = x_s.shape[:2]
    delta = stitch(mlp, x_s, x_d)
    delta_exp = delta[:, : 3 * k].reshape(b, k, 3)
    delta_txy = delta[:, 3 * k : 3 * k + 2].reshape(b, 1, 2)
    shift = torch.cat([delta_txy, torch.zeros_like(delta_txy[..., :1])], dim=2)
    return x_d + delta_exp + shift


def retarget_eye(mlp: RetargetingMLP, x_s: torch.Tensor, eye_ratio: torch.Tensor) -> torch.Tensor:
    """Keypoint offset B×K×3 that sets eye openness; eye_ratio: B×3 = [c_s_left, c_s_right, c_d]."""
    return mlp(concat_feat(x_s, eye_ratio)).reshape(-1, x_s.shape[1], 3)


def retarget_lip(mlp: RetargetingMLP, x_s: torch.Tensor, lip_ratio: torch.Tensor) -> torch.Tensor:
    """Keypoint offset B×K×3 that sets lip openness; lip_ratio: B×2 = [c_s_lip, c_d_lip]."""
    return mlp(concat_feat(x_s, lip_ratio)).reshape(-1, x_s.shape[1], 3)


# --- eye and lip ratios from 203-point landmarks -------------------------------------------


def _distance_ratio(lmk: np.ndarray, i1: int, i2: int, i3: int, i4: int, eps: float = 1e-6) -> np.ndarray:
    # lmk: B×203×2 -> B×1 = |p1 − p2| / (|p3 − p4| + eps)
    top = np.linalg.norm(lmk[:, i1] - lmk[:, i2], axis=1, keepdims=True)
    return top / (np.linalg.norm(lmk[:, i3] - lmk[:, i4], axis=1, keepdims=True) + eps)


def eye_close_ratio(lmk: np.ndarray, target_eye_ratio: np.ndarray | None = None) -> np.ndarray:
    """B×203×2 landmarks -> B×2 [left, right] lid gap / eye width (B×3 with a B×1 target appended)."""
    left = _distance_ratio(lmk, 6, 18, 0, 12)
    right = _distance_ratio(lmk, 30, 42, 24, 36)
    parts = [left, right] if target_eye_ratio is None else [left, right, target_eye_ratio]
    return np.concatenate(parts, axis=1)


def lip_close_ratio(lmk: np.ndarray) -> np.ndarray:
    """B×203×2 landmarks -> B×1 lip gap / mouth width."""
    return _distance_ratio(lmk, 90, 102, 48, 66)


def combined_eye_ratio(c_d_eye: float, source_lmk: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """Eye MLP condition 1×3 = [c_s_left, c_s_right, c_d] from 203 source landmarks (203×2)."""
    c_s = torch.from_numpy(eye_close_ratio(source_lmk[None])).float()
    c_d = torch.tensor([[float(np.asarray(c_d_eye).reshape(-1)[0])]], dtype=torch.float32)
    return torch.cat([c_s, c_d], dim=1).to(device)


def combined_lip_ratio(c_d_lip: float, source_lmk: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """Lip MLP condition 1×2 = [c_s_lip, c_d] from 203 source landmarks (203×2)."""
    c_s = torch.from_numpy(lip_close_ratio(source_lmk[None])).float()
    c_d = torch.tensor([[float(np.asarray(c_d_lip).reshape(-1)[0])]], dtype=torch.float32)
    return torch.cat([c_s, c_d], dim=1).to(device)
