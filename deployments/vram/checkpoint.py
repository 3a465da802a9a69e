"""The VramController's memory across a replica restart, kept in Ray's internal KV (GCS).

Serve restarts a controller replica that dies. Without its memory the new one
would publish zero replicas for every backend (scaling away backends that live
sessions render on) and forget the neighbours' high-water marks. So the
controller saves its state after every step and a new replica resumes from it:
the ledger, the sessions, the backends and their PIDs, the simulated device.

The checkpoint is pickled: it is our own process's data, written to and read from
the cluster's GCS, never a downloaded file (anyone who can write the GCS can run
code on the cluster anyway). A replica that shuts down cleanly (the app is deleted
or redeployed) deletes it; one older than MAX_AGE_S, or saved under another
configuration (`config_key`), is ignored.
"""
from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field
from typing import Any

from .autoscaling import KV_NAMESPACE

MAX_AGE_S = 120.0


@dataclass
class Checkpoint:
    state: Any  # policy.ControllerState
    device: Any  # simulation.SimulatedDevice, or None on a real GPU
    by_session: dict[str, list]  # session id -> its latest decisions (for `place`)
    placed_at_s: dict[str, float]  # session id -> when it was placed (policy clock)
    hosts_seen_s: dict[str, float]  # SessionHost id -> its last heartbeat (policy clock)
    now_s: float  # the policy clock when saved
    config_key: str  # the controller's configuration it was saved under
    saved_at: float = field(default_factory=time.time)  # wall clock, to resume the policy clock


def _key(app_name: str) -> bytes:
    return f"checkpoint/{app_name}".encode()


def save(app_name: str, checkpoint: Checkpoint) -> None:
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(_key(app_name), pickle.dumps(checkpoint), overwrite=True, namespace=KV_NAMESPACE)


def load(app_name: str, config_key: str) -> Checkpoint | None:
    """The last checkpoint if there is a recent one, saved under the same configuration."""
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(_key(app_name), namespace=KV_NAMESPACE)
    if raw is None:
        return None
    checkpoint = pickle.loads(raw)
    if time.time() - checkpoint.saved_at > MAX_AGE_S or checkpoint.config_key != config_key:
        return None
    return checkpoint


def delete(app_name: str) -> None:
    from ray.experimental.internal_kv import _internal_kv_del

    _internal_kv_del(_key(app_name), namespace=KV_NAMESPACE)
