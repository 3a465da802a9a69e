"""The edge: each error code's HTTP status and WebSocket close code, in one table.

Inside the graph an error is a `ServiceError` (code, reason, retry hint) or a pipeline's
error with its own code (`no_face`); only here does it become a status. A WebSocket
closes with 4000 + the status (4404: no such session), the private-use range of RFC 6455.
`tests/unit/test_errors_table.py` fails when a code raised anywhere is missing here.
"""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from .errors import ServiceError, service_error

HTTP_STATUS: dict[str, int] = {
    # 400: the request cannot be read
    "bad_audio": 400, "bad_multipart": 400, "bad_pacing": 400, "bad_sdp": 400, "no_media": 400,
    "bad_request": 400,
    # 401, 403: not from a client or a page this server serves (api/guard.py)
    "unauthorized": 401, "forbidden_host": 403, "forbidden_origin": 403,
    # 404: nothing by that name
    "not_found": 404, "unknown_persona": 404, "unknown_session": 404, "unknown_avatar": 404, "unknown_peer": 404,
    # 409: in conflict with the server's state
    "method_not_allowed": 405, "request_timeout": 408,
    "mode_unavailable": 409, "not_simulated": 409, "persona_in_use": 409, "weights_missing": 409,
    "mode_has_no_video": 409, "avatar3d_only": 409, "control_not_supported": 409, "provenance_off": 409, "no_frame_yet": 409,
    "length_required": 411,
    # 413: over a limit of size or length
    "too_large": 413, "too_long": 413,
    # 415: a type or format we do not take
    "not_an_image": 415, "unsupported_audio": 415, "unsupported_media_type": 415,
    # 422: well-formed, but not usable
    "consent_required": 422, "invalid_consent": 422, "invalid_event": 422, "invalid_request": 422,
    "missing_audio": 422, "missing_image": 422, "too_small": 422, "truncated_audio": 422, "undecodable_audio": 422,
    "unknown_emotion": 422, "unknown_mode": 422,
    "missing_persona": 422, "missing_glb": 422, "invalid_avatar": 422, "licence_required": 422, "invalid_licence": 422,
    # ... including media a mode cannot use (models' PipelineError codes)
    "no_face": 422, "face_too_small": 422, "bad_persona": 422, "bad_media": 422, "empty_media": 422,
    "pipeline_error": 422, "no_gpu": 422,
    # 429: this session or connection has enough
    "session_lost": 410,
    "audio_buffer_full": 429, "too_many_peers": 429, "too_many_viewers": 429,
    # 5xx: the server cannot serve it now (with Retry-After where it knows when)
    "internal": 500, "no_ice_candidates": 500, "webrtc_unavailable": 501, "not_implemented": 501,
    "bad_gateway": 502, "unavailable": 503,
    "too_many_sessions": 503, "queued": 503, "refused_no_room": 503, "refused_queue_timeout": 503,
    "ice_gathering_timeout": 504, "timeout": 504,
}
# A code missing from the table (a new pipeline's, say) is media a mode cannot use.
DEFAULT_STATUS = 422
WS_CLOSE_BASE = 4000
# Starlette's own refusals (no such route, a method the route lacks, a body it cannot parse)
# as codes, by status; the status itself is kept.
STARLETTE_CODES: dict[int, str] = {
    400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
    413: "too_large", 415: "unsupported_media_type", 422: "invalid_request",
}
INTERNAL_ERROR = {"error": "internal error", "code": "internal"}


def http_status(code: str) -> int:
    return HTTP_STATUS.get(code, DEFAULT_STATUS)


def ws_close_code(code: str) -> int:
    return WS_CLOSE_BASE + http_status(code)


def error_response(err: ServiceError) -> JSONResponse:
    headers = {"Retry-After": str(int(err.retry_after_s))} if err.retry_after_s else None
    return JSONResponse(err.to_json(), status_code=http_status(err.code), headers=headers)


def stream_failure(err: BaseException) -> ServiceError:
    """Why a session's stream broke, as the error its client is told: a refusal by the host
    (e.g. `too_many_viewers`), else the host itself is gone (`session_lost`)."""
    return service_error(err) or ServiceError(
        "session_lost", f"the session's host is gone ({type(err).__name__}); create a new session")


def unwrap(err: BaseException) -> BaseException:
    """The ServiceError inside a Ray task error, or a pipeline's error as one (e.g. no_face);
    anything else unchanged (a fault: the app answers 500)."""
    return service_error(err) or err


def first_error(err: ValidationError) -> str:
    """A pydantic error as one line: `where: what`."""
    e = err.errors()[0]
    where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
    return f"{where}: {e['msg']}" if where else e["msg"]


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app raises answers `{error, code}` with its status."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, err: ServiceError):
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _request_validation_error(request: Request, err: RequestValidationError):
        return error_response(ServiceError("invalid_request", first_error(err)))

    @app.exception_handler(ValidationError)
    async def _validation_error(request: Request, err: ValidationError):
        return error_response(ServiceError("invalid_request", first_error(err)))

    install_fallback_handlers(app)


def starlette_code(status: int) -> str:
    return STARLETTE_CODES.get(status, "internal" if status >= 500 else "bad_request")


def starlette_reason(request: Request, err: HTTPException) -> str:
    """Starlette's detail, or for a missing route or method, what was asked for."""
    if err.status_code == 404:
        return f"no route {request.method} {request.url.path[:200]}"
    if err.status_code == 405:
        return f"{request.method} is not allowed on {request.url.path[:200]}"
    return str(err.detail)


def http_exception_response(request: Request, err: HTTPException) -> JSONResponse:
    body = {"error": starlette_reason(request, err), "code": starlette_code(err.status_code)}
    return JSONResponse(body, status_code=err.status_code, headers=err.headers)


def install_fallback_handlers(app: FastAPI) -> None:
    """Starlette's and FastAPI's own errors, and faults, in the same `{error, code}` shape."""

    @app.exception_handler(HTTPException)
    async def _http_exception(request: Request, err: HTTPException):
        return http_exception_response(request, err)

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception):
        # Starlette logs the traceback (it re-raises to the server); the client learns nothing of it.
        return JSONResponse(INTERNAL_ERROR, status_code=500)
