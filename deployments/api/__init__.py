"""The edge: what a client sends and receives.

- protocol.py  every REST body and WebSocket message as a typed model
- errors.py    ServiceError (a code and a reason, no HTTP status) and pipeline errors' codes
- edge.py      the one table code -> HTTP status / WebSocket close code, and the error handlers
- guard.py     Host allowlist, Origin checks, API token and body limits, before any route runs
"""
