"""onnxruntime sessions for the face models: one place that picks providers.

The face models run once per persona (and per driving frame at most), so the
CPU provider is fine everywhere; CUDA is used when onnxruntime-gpu offers it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class OnnxSession(Protocol):
    """The part of `onnxruntime.InferenceSession` we use; tests pass stand-ins."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]: ...


def open_session(path: Path, prefer_cuda: bool = True, threads: int = 0) -> Any:
    """An InferenceSession over `path`: CUDA first when available and wanted, else CPU.

    threads: intra-op threads (0 lets onnxruntime decide).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    available = ort.get_available_providers()
    providers = ["CPUExecutionProvider"]
    if prefer_cuda and "CUDAExecutionProvider" in available:
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def model_input_name(session: OnnxSession, default: str) -> str:
    """The model's first input name when the session can tell (real sessions can), else `default`.

    Reading it from the file keeps us working if a re-export renames the input.
    """
    get_inputs = getattr(session, "get_inputs", None)
    return get_inputs()[0].name if get_inputs is not None else default
