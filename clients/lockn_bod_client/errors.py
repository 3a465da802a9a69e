"""Errors from the server, as one exception type.

Every HTTP error of LockN Bod is JSON `{"error": "<reason>", "code": "<machine code>"}` with a
4xx or 5xx status, and a refused WebSocket message gets an `error` event with the same code
(docs/api.md#errors). The client raises both as `LockNBodError`: `code` is the machine code
to branch on, `status` the HTTP status (or the WebSocket close code's 4000 + status, less
4000), `retry_after` the seconds the server asked for, where it did.
"""
from __future__ import annotations

import json
from typing import Any, Mapping


class LockNBodError(Exception):
    """The server refused a request or a message, or a session failed.

    Attributes: `code` (e.g. `invalid_event`, `unknown_session`), `reason` (the server's
    words), `status` (HTTP status; None for a WebSocket `error` event on an open socket),
    `retry_after` (seconds, from `Retry-After`), `body` (the whole JSON body)."""

    def __init__(self, code: str, reason: str, status: int | None = None, retry_after: float | None = None,
                 body: Mapping[str, Any] | None = None):
        self.code, self.reason, self.status, self.retry_after = code, reason, status, retry_after
        self.body = dict(body or {})
        where = f"{status} " if status is not None else ""
        super().__init__(f"{where}{code}: {reason}")

    @classmethod
    def from_http(cls, status: int, content: bytes, headers: Mapping[str, str] | None = None) -> "LockNBodError":
        """From an HTTP error answer. A body that is not the server's JSON (a proxy's HTML page)
        still gives an error, with code `http_<status>`."""
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            text = content[:200].decode(errors="replace").strip()
            return cls(f"http_{status}", text or "no body", status)
        retry_after = None
        raw = (headers or {}).get("retry-after")
        if raw is not None:
            try:
                retry_after = float(raw)
            except ValueError:
                pass
        return cls(str(body.get("code", f"http_{status}")), str(body.get("error", "")), status, retry_after, body)


class ProtocolError(LockNBodError):
    """The server sent something this client cannot parse (a bug on one side)."""

    def __init__(self, reason: str):
        super().__init__("protocol", reason)
