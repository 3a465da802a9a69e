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

`Checkpoints` works over any byte store: Ray's internal KV in the deployment
(`ray_kv`, through deployments/ray_private.py), a dict in unit tests (`dict_kv`),
so a test still pickles what it saves.
"""
from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field
from typing import Any, Callable

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


@dataclass(frozen=True)
class ByteStore:
    """The three operations of a key-value store of bytes that a checkpoint needs."""

    put: Callable[[bytes, bytes], None]
    get: Callable[[bytes], bytes | None]
    delete: Callable[[bytes], None]


def ray_kv() -> ByteStore:
    """The cluster's GCS (imported here, so the policy modules import without Ray)."""
    from ..ray_private import kv_del, kv_get, kv_put

    return ByteStore(kv_put, kv_get, kv_del)


def dict_kv(data: dict[bytes, bytes] | None = None) -> ByteStore:
    data = {} if data is None else data
    return ByteStore(data.__setitem__, data.get, lambda key: data.pop(key, None))


class Checkpoints:
    """One app's checkpoint in a byte store."""

    def __init__(self, app_name: str, store: ByteStore, wall_clock: Callable[[], float] = time.time):
        self.key = f"checkpoint/{app_name}".encode()
        self.store, self.wall_clock = store, wall_clock

    def save(self, checkpoint: Checkpoint) -> None:
        self.store.put(self.key, pickle.dumps(checkpoint))

    def load(self, config_key: str) -> Checkpoint | None:
        """The last checkpoint if there is a recent one, saved under the same configuration."""
        raw = self.store.get(self.key)
        if raw is None:
            return None
        checkpoint = pickle.loads(raw)
        if self.wall_clock() - checkpoint.saved_at > MAX_AGE_S or checkpoint.config_key != config_key:
            return None
        return checkpoint

    def delete(self) -> None:
        self.store.delete(self.key)


def save(app_name: str, checkpoint: Checkpoint) -> None:
    Checkpoints(app_name, ray_kv()).save(checkpoint)


def load(app_name: str, config_key: str) -> Checkpoint | None:
    return Checkpoints(app_name, ray_kv()).load(config_key)


def delete(app_name: str) -> None:
    Checkpoints(app_name, ray_kv()).delete()
