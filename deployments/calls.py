"""Calling another deployment: every call carries an internal request id of its own.

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
"""
from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from ray.serve import context as serve_context


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
