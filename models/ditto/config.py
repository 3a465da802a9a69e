"""Ditto configuration: official files, typed settings, and the safe cfg reader.

Ditto ships its settings as pickles (`ditto_cfg/*.pkl`). A pickle can name any
importable callable, so a downloaded one is never given to `pickle.load`:
`read_cfg_pkl` uses an unpickler that admits only plain data (builtin
containers and scalars, numpy arrays and dtypes) and refuses everything else.
The values we use are then copied into typed dataclasses.
"""
from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..options import preset_name
from ..weights import WeightFile
from .lmdm import LMDMConfig

HF_REPO = "digital-avatar/ditto-talkinghead"
MODE = "ditto"

# Licences as stated by the publishers: Ditto's code and weights are Apache-2.0
# (model card of digital-avatar/ditto-talkinghead); the face detector and 106-point
# landmarker it redistributes come from InsightFace (buffalo_l), whose models are
# for non-commercial research only; face_landmarker.task is Google MediaPipe (Apache-2.0).
_DITTO = "Apache-2.0"
_INSIGHTFACE = "InsightFace models: non-commercial research use only"


def _f(path: str, licence: str = _DITTO) -> WeightFile:
    return WeightFile(HF_REPO, path, licence)


@dataclass(frozen=True)
class DittoFiles:
    """Exactly the files the PyTorch path of Ditto needs."""

    lmdm: WeightFile = _f("ditto_pytorch/models/lmdm_v0.4_hubert.pth")
    appearance_extractor: WeightFile = _f("ditto_pytorch/models/appearance_extractor.pth")
    motion_extractor: WeightFile = _f("ditto_pytorch/models/motion_extractor.pth")
    warp_network: WeightFile = _f("ditto_pytorch/models/warp_network.pth")
    decoder: WeightFile = _f("ditto_pytorch/models/decoder.pth")
    stitch_network: WeightFile = _f("ditto_pytorch/models/stitch_network.pth")
    hubert: WeightFile = _f("ditto_pytorch/aux_models/hubert_streaming_fix_kv.onnx")
    face_det: WeightFile = _f("ditto_pytorch/aux_models/det_10g.onnx", _INSIGHTFACE)
    landmark106: WeightFile = _f("ditto_pytorch/aux_models/2d106det.onnx", _INSIGHTFACE)
    landmark203: WeightFile = _f("ditto_pytorch/aux_models/landmark203.onnx")
    landmark478: WeightFile = _f("ditto_pytorch/aux_models/face_landmarker.task", "Apache-2.0 (Google MediaPipe)")
    cfg_pkl: WeightFile = _f("ditto_cfg/v0.4_hubert_cfg_pytorch.pkl")

    def all(self) -> list[WeightFile]:
        return [getattr(self, f.name) for f in fields(self)]


@dataclass(frozen=True)
class StreamConfig:
    """The online Audio2Motion scheme. Defaults: the official online settings
    (overlap 70, kp-condition reset every window on dims [0, 202), 10 DDIM steps)."""

    overlap: int = 70  # overlap_v2: frames each window shares with the previous one
    fix_kp_cond: int = 1  # reset the conditioning frame to the source every n windows (0: never)
    fix_kp_cond_dim: tuple[int, int] | None = (0, 202)  # ...but keep these dims from the motion
    sampling_steps: int = 10
    smooth_k: int = 3  # smo_k_d: mean filter width over the first 202 dims
    online: bool = True  # fuse only min(overlap, valid) frames at the window seam
    seed: int = 0  # of the sampler's noise


# The reference's offline code defaults (the offline cfg pickle's values are unknown).
OFFLINE_STREAM = StreamConfig(overlap=10, fix_kp_cond=0, fix_kp_cond_dim=None, sampling_steps=50, online=False)


@dataclass(frozen=True)
class DittoConfig:
    lmdm: LMDMConfig = field(default_factory=LMDMConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    files: DittoFiles = field(default_factory=DittoFiles)
    emo: int = 4  # neutral, the reference default

    @classmethod
    def tiny(cls) -> "DittoConfig":
        return cls(lmdm=LMDMConfig.tiny())


# ---- restricted pickle reading -------------------------------------------------

_ALLOWED_GLOBALS = {
    ("builtins", n)
    for n in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes", "bool", "slice")
} | {
    ("collections", "OrderedDict"),
    # numpy array / scalar reconstruction (module moved to numpy._core in numpy 2)
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the plain-data allow list."""


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(f"refusing global {module}.{name} in a config pickle")
        return super().find_class(module, name)


def read_cfg_pkl(data: bytes | Path) -> dict:
    """Plain data of a Ditto cfg pickle (bytes or a path); refuses any other global."""
    raw = Path(data).read_bytes() if isinstance(data, (str, Path)) else data
    return _PlainDataUnpickler(io.BytesIO(raw)).load()


def stream_config_from_cfg(cfg: dict, base: StreamConfig = StreamConfig()) -> StreamConfig:
    """Take the Audio2Motion settings of a cfg's `default_kwargs` into a StreamConfig."""
    kw = cfg.get("default_kwargs", {})
    dims = kw.get("fix_kp_cond_dim", base.fix_kp_cond_dim)
    return replace(
        base,
        overlap=int(kw.get("overlap_v2", base.overlap)),
        fix_kp_cond=int(kw.get("fix_kp_cond", base.fix_kp_cond)),
        fix_kp_cond_dim=None if dims is None else (int(dims[0]), int(dims[1])),
        sampling_steps=int(kw.get("sampling_timesteps", base.sampling_steps)),
        smooth_k=int(kw.get("smo_k_d", base.smooth_k)),
        online=bool(kw.get("online_mode", base.online)),
    )


def lmdm_config_from_cfg(cfg: dict, base: LMDMConfig = LMDMConfig()) -> LMDMConfig:
    a2m = cfg.get("audio2motion_cfg", {})
    return replace(
        base,
        motion_dim=int(a2m.get("motion_feat_dim", base.motion_dim)),
        cond_dim=int(a2m.get("audio_feat_dim", base.cond_dim)),
        seq_frames=int(a2m.get("seq_frames", base.seq_frames)),
    )


def clip_from_cfg(cfg: dict):
    """(2, 265) v_min / v_max rows the online cfg clips motion with (it stores 4 rows;
    the reference reads rows 0 and 1), or None."""
    clip = cfg.get("default_kwargs", {}).get("v_min_max_for_clip")
    return None if clip is None else clip[:2]


def is_tiny(config: Any) -> bool:
    """Whether a pipeline's JSON `config` option names the file-free tiny preset."""
    return preset_name(config) == "tiny"


def weight_files(cache_dir: str | Path | None = None, config: Any = None, **options) -> list[WeightFile]:
    """What `lockn-bod weights fetch ditto` downloads (the mode registry's hook).

    Takes the backend's options: the tiny preset needs no file; with `cache_dir` the
    files are looked for (and loaded) there instead of the standard HF cache.
    """
    if is_tiny(config):
        return []
    files = DittoFiles().all()
    return files if cache_dir is None else [replace(f, cache_dir=str(cache_dir)) for f in files]
