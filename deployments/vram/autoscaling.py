"""How the controller's replica targets reach Ray Serve (DESIGN section 5, measured facts).

The VramController publishes `Controller.desired_replicas()` into Ray's internal
key-value store (GCS), one key per backend deployment; each backend deployment's
custom autoscaling policy (`AutoscalingPolicy(policy_function=follow_vram_controller)`)
reads its key on every Serve control-loop tick (0.1 s) and returns it. Serve
cloudpickles the policy's module by value into its own controller process, so the
policy and the KV access it needs live in deployments/ray_private.py (a module that
uses nothing of ours), and are re-exported here.

Serve's own wrapper still applies min/max bounds and the up/downscale delays
(graph.py sets them to 0: the VRAM policy has its own minimum residency), and
its cold-start fast path starts a replica when a request waits on a deployment
at zero replicas. Sessions therefore call a backend only once the controller
says it is resident (`GatedBackend` in deployments/rendering/gated.py), and a
replica started any other way waits for its load lease before touching the GPU.
"""
from __future__ import annotations

from ..ray_private import KV_NAMESPACE, follow_vram_controller, kv_put, replica_key

__all__ = ["KV_NAMESPACE", "follow_vram_controller", "publish_desired", "replica_key"]


def publish_desired(app_name: str, desired: dict[str, int]) -> None:
    """Write one target per deployment name (e.g. {"Backend-ditto": 0})."""
    for deployment_name, replicas in desired.items():
        kv_put(replica_key(app_name, deployment_name), str(int(replicas)).encode())
