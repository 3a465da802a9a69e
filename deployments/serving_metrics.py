"""Serving metrics: what the sessions and backends do, on Ray's Prometheus endpoint next to the
VRAM controller's `lockn_vram_*` (docs/architecture.md#metrics lists them).

| metric | kind | tags | what |
|---|---|---|---|
| `lockn_sessions` | gauge | mode | live sessions on a session host, by the mode streaming now |
| `lockn_frames_rendered_total` | counter | mode | frames sessions got from their backend (or the still mode) |
| `lockn_frames_sent_total` | counter | mode | frames handed to viewers (a frame with two viewers counts twice) |
| `lockn_frames_late_total` | counter | mode | frames published more than one frame interval after they were due |
| `lockn_first_frame_seconds` | histogram | mode | a session's creation to its first frame published |
| `lockn_audio_to_frame_seconds` | histogram | mode | speech audio received to the frame that shows it being due |
| `lockn_backend_render_seconds` | histogram | mode | one render call in a backend replica (a chunk of frames) |
| `lockn_backend_batch_frames` | histogram | mode | frames in one backend render call |
| `lockn_backend_batch_sessions` | histogram | mode | sessions whose chunks one batched render call drew together |
| `lockn_webrtc_av_offset_seconds` | histogram | | a WebRTC peer: how far apart a frame's audio and its video went to aiortc |

Ray Serve adds the deployment and replica tags. Sessions and backends get a sink
(`ServingMetrics`); outside Ray (unit tests, the CLI) it is `NoServingMetrics`.
"""
from __future__ import annotations

from typing import Protocol

# Seconds: a frame interval is 0.04 s; first frames wait for a backend's warm-up (seconds).
LATENCY_BOUNDARIES_S = [0.02, 0.04, 0.08, 0.12, 0.16, 0.24, 0.32, 0.5, 0.75, 1, 1.5, 2, 3, 5]
FIRST_FRAME_BOUNDARIES_S = [0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30]
RENDER_BOUNDARIES_S = [0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56]
BATCH_BOUNDARIES = [1, 2, 3, 4, 5, 8, 10, 16, 25, 50]
AV_OFFSET_BOUNDARIES_S = [0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16]  # Prometheus buckets: positive only


class ServingMetrics(Protocol):
    def sessions(self, by_mode: dict[str, int]) -> None:
        """Live sessions now, by mode (every mode the host serves, zeros included)."""

    def frames_published(self, mode: str, frames: int, late: int, viewers: int) -> None: ...

    def first_frame(self, mode: str, seconds: float) -> None: ...

    def audio_to_frame(self, mode: str, seconds: float) -> None: ...

    def backend_render(self, mode: str, seconds: float, frames: int, sessions: int = 1) -> None: ...

    def webrtc_av_offset(self, seconds: float) -> None: ...


class NoServingMetrics:
    """Drops everything: unit tests and processes outside Ray."""

    def sessions(self, by_mode: dict[str, int]) -> None:
        pass

    def frames_published(self, mode: str, frames: int, late: int, viewers: int) -> None:
        pass

    def first_frame(self, mode: str, seconds: float) -> None:
        pass

    def audio_to_frame(self, mode: str, seconds: float) -> None:
        pass

    def backend_render(self, mode: str, seconds: float, frames: int, sessions: int = 1) -> None:
        pass

    def webrtc_av_offset(self, seconds: float) -> None:
        pass


class PrometheusServingMetrics:
    """The metrics through ray.serve.metrics (created in a Serve replica)."""

    def __init__(self):
        from ray.serve import metrics

        by_mode = ("mode",)
        self._sessions = metrics.Gauge("lockn_sessions", tag_keys=by_mode,
                                       description="live sessions on a session host, by the mode streaming now")
        self._rendered = metrics.Counter("lockn_frames_rendered_total", tag_keys=by_mode,
                                         description="frames sessions got from their backend")
        self._sent = metrics.Counter("lockn_frames_sent_total", tag_keys=by_mode,
                                     description="frames handed to viewers (once per viewer)")
        self._late = metrics.Counter("lockn_frames_late_total", tag_keys=by_mode,
                                     description="frames published more than one interval after they were due")
        self._first_frame = metrics.Histogram("lockn_first_frame_seconds", boundaries=FIRST_FRAME_BOUNDARIES_S,
                                              tag_keys=by_mode,
                                              description="a session's creation to its first frame published")
        self._audio_to_frame = metrics.Histogram("lockn_audio_to_frame_seconds", boundaries=LATENCY_BOUNDARIES_S,
                                                 tag_keys=by_mode,
                                                 description="speech audio received to its frame being due")
        self._render = metrics.Histogram("lockn_backend_render_seconds", boundaries=RENDER_BOUNDARIES_S,
                                         tag_keys=by_mode, description="one render call in a backend replica")
        self._batch = metrics.Histogram("lockn_backend_batch_frames", boundaries=BATCH_BOUNDARIES,
                                        tag_keys=by_mode, description="frames in one backend render call")
        self._batch_sessions = metrics.Histogram("lockn_backend_batch_sessions", boundaries=BATCH_BOUNDARIES,
                                                 tag_keys=by_mode,
                                                 description="sessions drawn together in one batched render call")
        self._av_offset = metrics.Histogram("lockn_webrtc_av_offset_seconds", boundaries=AV_OFFSET_BOUNDARIES_S,
                                            description="a WebRTC peer: how far apart a frame's audio and video went out")

    def sessions(self, by_mode: dict[str, int]) -> None:
        for mode, count in by_mode.items():
            self._sessions.set(count, tags={"mode": mode})

    def frames_published(self, mode: str, frames: int, late: int, viewers: int) -> None:
        tags = {"mode": mode}
        self._rendered.inc(frames, tags=tags)
        if late:
            self._late.inc(late, tags=tags)
        if viewers:
            self._sent.inc(frames * viewers, tags=tags)

    def first_frame(self, mode: str, seconds: float) -> None:
        self._first_frame.observe(seconds, tags={"mode": mode})

    def audio_to_frame(self, mode: str, seconds: float) -> None:
        self._audio_to_frame.observe(seconds, tags={"mode": mode})

    def backend_render(self, mode: str, seconds: float, frames: int, sessions: int = 1) -> None:
        self._render.observe(seconds, tags={"mode": mode})
        self._batch.observe(frames, tags={"mode": mode})
        self._batch_sessions.observe(sessions, tags={"mode": mode})

    def webrtc_av_offset(self, seconds: float) -> None:
        self._av_offset.observe(abs(seconds))  # Ray's histograms take positive boundaries only


def replica_metrics() -> ServingMetrics:
    """Prometheus metrics inside a Serve replica; nothing elsewhere (a backend built by a test)."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        serve.get_replica_context()
    except RayServeException:
        return NoServingMetrics()
    return PrometheusServingMetrics()
