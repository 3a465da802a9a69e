"""Errors as values: inside the graph an error is a machine code, a reason and an optional
retry hint. Which HTTP status or WebSocket close code a code becomes is decided once, at
the edge (api/edge.py)."""
from __future__ import annotations

from models.base import PipelineError

from .protocol import ErrorEvent

# How deep to look through Ray's wrappers (a backend's error reaches the Router through the
# SessionHost: RayTaskError(RayTaskError(PersonaError))).
_MAX_WRAPPING = 6


def error_event(code: str, reason: str) -> ErrorEvent:
    """An `error` event for a stream: the reason under `error` (as in HTTP error bodies)
    and under `reason` (as in every other event)."""
    return ErrorEvent(code=code, error=reason, reason=reason)


class ServiceError(Exception):
    """An error a client can act on: `code` (machine), `reason` (prose), `retry_after_s`."""

    def __init__(self, code: str, reason: str, retry_after_s: float | None = None):
        super().__init__(reason)
        self.code, self.reason, self.retry_after_s = code, reason, retry_after_s

    def to_json(self) -> dict:
        return {"error": self.reason, "code": self.code}

    def to_event(self) -> ErrorEvent:
        return error_event(self.code, self.reason)

    def __reduce__(self):  # picklable across Ray processes
        return ServiceError, (self.code, self.reason, self.retry_after_s)


def pipeline_error(err: BaseException | None) -> PipelineError | None:
    """The PipelineError inside `err`: itself, under Ray's `cause` or under a `raise ... from`."""
    for _ in range(_MAX_WRAPPING):
        if err is None:
            return None
        inner = getattr(err, "cause", None)  # Ray's task error: the original exception
        if isinstance(inner, BaseException):
            err = inner
        elif isinstance(err, PipelineError):
            return err
        else:
            err = err.__cause__
    return None


def service_error(err: BaseException) -> ServiceError | None:
    """The error a client is told of: a ServiceError, or a pipeline's error (its own code,
    e.g. `no_face`), found inside Ray's wrappers; None for anything else (a fault)."""
    cause = getattr(err, "cause", None)
    if isinstance(err, ServiceError):
        return err
    if isinstance(cause, ServiceError):
        return cause
    found = pipeline_error(err)
    return ServiceError(found.code, str(found)) if found is not None else None
