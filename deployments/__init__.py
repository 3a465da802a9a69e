"""The server, in the order data flows through it:

    HTTP / WebSocket ─► api/ ─► inputs/ ─► session/ ─► rendering/ ─► (a backend deployment)
                                               │
                                               └─► transports/ ─► WebSocket, MJPEG, WebRTC
                         vram/ decides which backends may hold GPU memory beside the LLMs.

The Serve deployments are thin shims, one module each, over the plain objects of
those subpackages (plain asyncio and numpy, no Ray, unit-tested without a cluster):

- router.py          Router: the only HTTP entry (stateless, autoscaled)
- session_host.py    SessionHost: where sessions live for their whole lifetime
- backend.py         Backend-<mode>: one per neural mode, a pipeline behind a GPU share
- vram_controller.py VramController: the VRAM policy on live readings
- session_router.py  Serve request router: a session's calls reach its host
- config.py          AppArgs: every argument of serve_config.yaml
- ray_private.py     every use of a Ray private API, checked against the pinned Ray

Subpackages:

- api/         the wire: typed messages (protocol.py), errors as values (errors.py)
- inputs/      what comes in: audio decoding, the WebSocket input forwarder, portraits
- session/     one session's clock, speech buffer, scheduler and render loop; a host's sessions
- rendering/   what a session renders with: the Backend interface, local/remote/gated
- transports/  frames out: JPEG/MP4 encoding, paced WebSocket/MJPEG relays, WebRTC, HAProxy
- vram/        the VRAM policy (pure), its probes, and the host-side gate
"""
