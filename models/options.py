"""Typed configs from JSON-able options (serve_config.yaml `backends.<mode>.options`)."""
from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from typing import Any


def override_fields(base: Any, changes: dict, where: str) -> Any:
    """A copy of the frozen dataclass `base` with `changes` applied.

    Nested dicts set nested dataclasses; JSON lists become tuples; numbers and booleans
    are checked against the field's current type. ValueError names the field and, for an
    unknown one, lists the known fields.
    """
    if not isinstance(changes, dict):
        raise ValueError(f"{where} must be a dict of fields, got {type(changes).__name__}")
    known = {f.name for f in fields(base)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(f"unknown {where} field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return replace(base, **{name: _field_value(getattr(base, name), new, f"{where}.{name}")
                            for name, new in changes.items()})


def _field_value(current: Any, new: Any, path: str) -> Any:
    if is_dataclass(current):
        return override_fields(current, new, path)
    if isinstance(current, tuple) or isinstance(new, list):  # also an optional tuple now None
        if not isinstance(new, (list, tuple)):
            raise ValueError(f"{path} must be a list, got {new!r}")
        return as_tuples(new)
    if isinstance(current, bool):
        if not isinstance(new, bool):
            raise ValueError(f"{path} must be true or false, got {new!r}")
        return new
    if isinstance(current, (int, float)):
        if isinstance(new, bool) or not isinstance(new, (int, float)) or (isinstance(current, int) and new != int(new)):
            kind = "an integer" if isinstance(current, int) else "a number"
            raise ValueError(f"{path} must be {kind}, got {new!r}")
        return type(current)(new)
    return new


def as_tuples(value: Any) -> Any:
    """JSON lists (nested) -> tuples, as the frozen configs hold them."""
    return tuple(as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def preset_name(config: Any, default: str = "official") -> str:
    """The preset a pipeline's JSON `config` option names: the string itself, or a dict's
    "preset" field; None (and a dict without one) names `default`."""
    if isinstance(config, dict):
        config = config.get("preset")
    return config if isinstance(config, str) else default


def resolve_device(device: Any):
    """The `device` option as a torch.device: "auto"/None -> CUDA when available, else CPU;
    "cuda" without a GPU is a clear error (PipelineError, code "no_gpu")."""
    import torch  # here: the rest of this module is read by code without torch (mode listing)

    from .base import PipelineError

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"device {device!r} asked for, but torch sees no CUDA device", code="no_gpu")
    return target
