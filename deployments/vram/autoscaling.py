"""How the controller's replica targets reach Ray Serve (DESIGN section 5, measured facts).

The VramController publishes `Controller.desired_replicas()` into Ray's internal
key-value store (GCS), one key per backend deployment; each backend deployment's
custom autoscaling policy (`AutoscalingPolicy(policy_function=follow_vram_controller)`)
reads its key on every Serve control-loop tick (0.1 s) and returns it. Serve
cloudpickles the policy by value into its own controller process, so this module
imports nothing of ours and holds no state.

Serve's own wrapper still applies min/max bounds and the up/downscale delays
(graph.py sets them to 0: the VRAM policy has its own minimum residency), and
its cold-start fast path starts a replica when a request waits on a deployment
at zero replicas. Sessions therefore call a backend only once the controller
says it is resident (`GatedBackend` in deployments/vram_controller.py), and a
replica started any other way waits for its load lease before touching the GPU.
"""
from __future__ import annotations

from typing import Any

KV_NAMESPACE = "lockn_bod_vram"


def replica_key(app_name: str, deployment_name: str) -> bytes:
    return f"desired/{app_name}/{deployment_name}".encode()


def publish_desired(app_name: str, desired: dict[str, int]) -> None:
    """Write one target per deployment name (e.g. {"Backend-ditto": 0})."""
    from ray.experimental.internal_kv import _internal_kv_put

    for deployment_name, replicas in desired.items():
        _internal_kv_put(replica_key(app_name, deployment_name), str(int(replicas)).encode(),
                         overwrite=True, namespace=KV_NAMESPACE)


def follow_vram_controller(ctx: Any) -> tuple[int, dict]:
    """Custom autoscaling policy: the replica count the VramController published.

    ctx is Serve's AutoscalingContext. Before the controller has published anything
    (it is starting), keep the current target.
    """
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(replica_key(ctx.app_name, ctx.deployment_name), namespace=KV_NAMESPACE)
    if raw is None:
        return ctx.target_num_replicas, {}
    return int(raw), {}
