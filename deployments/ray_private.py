"""Every use of a Ray private API, in one module, checked against the pinned Ray at import.

Ray changes its private APIs between minor versions without notice, so each one we
rely on is listed here, with why, and this module refuses to import under a Ray
minor version other than the one pyproject.toml pins (`PINNED_RAY_MINOR`). After a
Ray upgrade: check each item below against the new version, then update
`PINNED_RAY_MINOR` and the pin together.

1. `ray.serve.context._get_serve_request_context` / `_serve_request_context`:
   `call` gives every handle call an internal request id of its own.
2. The handle option `_by_reference=False`: `direct` sends small calls over Serve's
   gRPC channel.
3. `ray.experimental.internal_kv._internal_kv_get/_put/_del`: the VramController's
   replica targets (read by `follow_vram_controller`) and its checkpoint.

Why 1: Ray Serve 2.60 tags every handle call made while a replica serves a request
with that request's internal id, and its request router files the calls waiting
for a replica under that id. Two calls waiting at once from one request (a
WebSocket's stream and its first audio push; the VRAM controller telling two
sessions of a shed) share the id, and only one is filed. The default router then
hands the replica to the oldest waiting call, but a custom router such as
`SessionAffinityRouter` only fulfils the call it chose a replica for: the unfiled
call is never assigned. It waits until it is cancelled, and holds one of the
router's routing tasks (two per replica) meanwhile, so a second such call stalls
every call from that Router replica to the session hosts.
`tests/graph/test_session_router.py` reproduces it. The log request id (`request_id`)
is kept, so a call still logs under the request that made it.

Why 2: Serve's default handle call is a Ray actor task whose result comes back as
an object; `_by_reference=False` sends it over the gRPC server every replica runs
instead. For a small call that is about half the CPU of both processes together
(benchmarks/serving_overhead.py: with the replica flags of graph.py, the overhead
ratio goes from 1.61 to 1.27 before the backend encoded its frames itself). The
payload is copied through gRPC, and large arrays cost more that way than through
Ray's object store: only calls whose arguments and results are small go direct
(audio messages under `DIRECT_MAX_BYTES`; frames as JPEGs). graph.py raises the
gRPC message limit (4 MiB by default) on every replica, so a direct call that
turns out large is slower, never refused.

Why 3: the controller's targets must reach Serve's own controller process, where
the autoscaling policy runs, every control-loop tick; the GCS's KV is the store
both can reach without an actor call. `follow_vram_controller` lives here because
Serve cloudpickles a policy's module BY VALUE into its controller, where our
package may not be importable: the function may use only names of this module and
of ray. Unpickling a function by value does not run this module's top level, so
the version check does not run (or fail) in Serve's controller.
"""
from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import ray
from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get, _internal_kv_put
from ray.serve import context as serve_context

PINNED_RAY_MINOR = "2.60"  # keep equal to the `ray[serve]==2.60.*` pin in pyproject.toml
DIRECT_MAX_BYTES = 1 << 20
KV_NAMESPACE = "lockn_bod_vram"


def check_ray_version(version: str) -> None:
    """Refuse a Ray whose private APIs this module was not checked against."""
    minor = ".".join(version.split(".")[:2])
    if minor != PINNED_RAY_MINOR:
        raise ImportError(
            f"Ray {version} is installed, but deployments/ray_private.py uses private Ray APIs "
            f"checked only against Ray {PINNED_RAY_MINOR}.*: check each one listed in that file "
            f"against Ray {minor}, then update PINNED_RAY_MINOR there and the ray[serve] pin in "
            "pyproject.toml together.")


check_ray_version(ray.__version__)


# ---------------------------------------------------------------- handle calls (1, 2)


def direct(handle: Any, **options: Any) -> Any:
    """`handle.options(**options)` over Serve's direct gRPC channel: for small payloads only."""
    return handle.options(_by_reference=False, **options)


def call(method: Any, *args: Any, **kwargs: Any) -> Any:
    """`method.remote(*args, **kwargs)` under an internal request id of its own.

    `method` is a handle method (`handle.some_method`, with any `.options(...)`
    applied to the handle); the result is its DeploymentResponse or
    DeploymentResponseGenerator, awaited as usual.
    """
    context = serve_context._get_serve_request_context()
    token = serve_context._serve_request_context.set(
        dataclasses.replace(context, _internal_request_id=str(uuid.uuid4())))
    try:
        return method.remote(*args, **kwargs)  # the handle reads the context here, synchronously
    finally:
        serve_context._serve_request_context.reset(token)


# ---------------------------------------------------------------- the GCS key-value store (3)


def kv_put(key: bytes, value: bytes) -> None:
    _internal_kv_put(key, value, overwrite=True, namespace=KV_NAMESPACE)


def kv_get(key: bytes) -> bytes | None:
    return _internal_kv_get(key, namespace=KV_NAMESPACE)


def kv_del(key: bytes) -> None:
    _internal_kv_del(key, namespace=KV_NAMESPACE)


def replica_key(app_name: str, deployment_name: str) -> bytes:
    """Where the VramController publishes one backend deployment's replica target."""
    return f"desired/{app_name}/{deployment_name}".encode()


def follow_vram_controller(ctx: Any) -> tuple[int, dict]:
    """Custom autoscaling policy: the replica count the VramController published
    (vram/autoscaling.py). Runs in Serve's controller process: see "Why 3" above.

    ctx is Serve's AutoscalingContext. Before the controller has published anything
    (it is starting), keep the current target.
    """
    raw = kv_get(replica_key(ctx.app_name, ctx.deployment_name))
    if raw is None:
        return ctx.target_num_replicas, {}
    return int(raw), {}
