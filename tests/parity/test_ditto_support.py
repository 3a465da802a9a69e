"""Shared helpers of the Ditto tests: seeded weights and fixtures from the oracle folder."""
from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import numpy as np


def load_seeded(oracle: Path):
    """The oracle's seeded.py as a module (imported by path, never copied)."""
    spec = importlib.util.spec_from_file_location("oracle_seeded", Path(oracle) / "seeded.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def seeded_lmdm_state(oracle: Path, model) -> dict:
    """seeded_state_dict of the model, rotary freqs kept at their constructed values (README)."""
    sd = load_seeded(oracle).seeded_state_dict(model.state_dict(), seed=0, gain=1.0)
    for k, v in model.state_dict().items():
        if k.endswith("rotary.freqs"):
            sd[k] = v.clone()
    return sd


def npz(oracle: Path, name: str) -> dict:
    with np.load(Path(oracle) / "ditto" / name) as z:
        return {k: z[k] for k in z.files}


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@contextlib.contextmanager
def one_torch_thread():
    """One torch thread for a test module, restored after: the reference fixtures were
    made with one thread, and on a shared 2-core CI box more threads oversubscribe
    (measured here: the S50 run went from 8 s to 237 s)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
