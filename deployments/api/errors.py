"""Errors as values: a machine code, a reason, an optional retry hint; statuses at the edge."""
from __future__ import annotations

from models.base import PipelineError, WeightsMissingError


def error_event(code: str, reason: str) -> dict:
    """An `error` event for a stream: the reason under `error` (as in HTTP error bodies)
    and under `reason` (as in every other event)."""
    return {"type": "error", "code": code, "error": reason, "reason": reason}


class ServiceError(Exception):
    """An error a client can act on; `status` is the HTTP status at the edge."""

    def __init__(self, status: int, code: str, reason: str, retry_after_s: float | None = None):
        super().__init__(reason)
        self.status, self.code, self.reason, self.retry_after_s = status, code, reason, retry_after_s

    def to_json(self) -> dict:
        return {"error": self.reason, "code": self.code}

    def to_event(self) -> dict:
        return error_event(self.code, self.reason)

    def __reduce__(self):  # picklable across Ray processes
        return ServiceError, (self.status, self.code, self.reason, self.retry_after_s)


# A pipeline's error (models.base.PipelineError) keeps its code end to end; its HTTP status is
# chosen here, at the edge: missing weights are a conflict with the server's state (409); any
# other (no_face, bad_media, ...) is media the mode cannot use, unprocessable (422).
# How deep to look through Ray's wrappers (a backend's error reaches the Router through the
# SessionHost: RayTaskError(RayTaskError(PersonaError))).
_MAX_WRAPPING = 6


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


def pipeline_service_error(err: BaseException) -> ServiceError | None:
    """A pipeline's error as the ServiceError the edge answers with, or None if there is none."""
    found = pipeline_error(err)
    if found is None:
        return None
    return ServiceError(409 if isinstance(found, WeightsMissingError) else 422, found.code, str(found))
