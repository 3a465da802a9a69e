"""The edge: what a client sends and receives.

- protocol.py  every REST body and WebSocket message as a typed model
- errors.py    ServiceError (a code and a reason, no HTTP status) and pipeline errors' codes
"""
