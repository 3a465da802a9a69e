"""Calling another deployment: every call carries an internal request id of its own,
and small calls on the hot path go over Serve's direct gRPC channel.

Why: Ray Serve 2.60 tags every handle call made while a replica serves a request
with that request's internal id, and its request router files the calls waiting
for a replica under that id. Two calls waiting at once from one request (a
WebSocket's stream and its first audio push; the VRAM controller telling two
sessions of a shed) share the id, and only one is filed. The default router then
hands the replica to the oldest waiting call, but a custom router such as
`SessionAffinityRouter` only fulfils the call it chose a replica for: the unfiled
call is never assigned. It waits until it is cancelled, and holds one of the
router's routing tasks (two per replica) meanwhile, so a second such call stalls
every call from that Router replica to the session hosts.
`tests/test_session_router.py` reproduces it.

The log request id (`request_id`) is kept, so a call still logs under the request
that made it.

`direct(handle)`: Serve's default handle call is a Ray actor task whose result comes
back as an object; the handle option `_by_reference=False` sends it over the gRPC
server every replica runs instead. For a small call that is about half the CPU of
both processes together (benchmarks/serving_overhead.py: with the replica flags of
graph.py, the overhead ratio goes from 1.61 to 1.27 before the backend encoded its
frames itself). The payload is copied through gRPC, and large arrays cost more that
way than through Ray's object store: only calls whose arguments and results are
small go direct (audio messages under `DIRECT_MAX_BYTES`; frames as JPEGs). graph.py
raises the gRPC message limit (4 MiB by default) on every replica, so a direct call
that turns out large is slower, never refused.
"""
from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from ray.serve import context as serve_context

DIRECT_MAX_BYTES = 1 << 20


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
