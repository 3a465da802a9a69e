"""Ray Serve deployments: the data flow is audio in -> session -> backend -> frames -> transports.

- router.py        Router: the HTTP/WebSocket entry (stateless, autoscaled)
- session_host.py  SessionHost: where sessions live (clock, buffers, carry, viewers)
- session.py       Session: one session's clock and render loop (plain asyncio, no Ray)
- backends.py      Backend: a thin shim over a models/ pipeline (one deployment per mode)
- streams.py       transports: WebSocket and MJPEG relays paced to the session clock
"""
