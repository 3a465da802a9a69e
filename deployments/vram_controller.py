"""VramController: the VRAM policy (deployments/vram) as one Serve replica, on live readings.

    SessionHost ── place / ended ──►  VramController  ◄── lease / report_loaded ── Backend-<mode>
                                       │ step every step_period_s: probe.read() -> policy -> decisions
                                       ▼
                     Ray internal KV: desired replicas per backend deployment
                                       ▼
               Serve's control loop: follow_vram_controller (ray_private.py)

This module is only the Serve shim: `VramControllerImpl` builds a `VramService`
(vram/service.py, plain asyncio, unit-tested without Ray) with the Ray-backed
pieces and forwards every method to it. Where each role lives:

- vram/service.py     the step loop, placement, leases, host heartbeats and
                      orphans, demotion, snapshot, checkpoint resume;
- vram/policy.py      the decisions themselves (budget, admission, eviction, degrade);
- vram/records.py     the typed answers (Placement, Lease, Readiness) and the JSON
                      clients see (a session's `placement`, GET /v1/gpu's decisions);
- vram/setup.py       probe resolution and the policy's config from AppArgs;
- vram/autoscaling.py replica targets published to Ray's internal KV, and the custom
                      autoscaling policy (`follow_vram_controller`, in ray_private.py:
                      Serve pickles it by value) that each backend deployment follows;
                      unload is scale-to-zero: the replica process exits, the driver
                      frees everything, and the probe confirms it (Code.UNLOAD_CONFIRMED);
- vram/checkpoint.py  the state saved after every step, resumed by a new replica;
- vram/metrics.py     the counts GET /v1/gpu shows, Prometheus through ray.serve.metrics
                      (lockn_vram_*, shown by the Ray dashboard when it runs);
- vram/gate.py        the SessionHost's side (`VramGate`): placement on create,
                      SessionEnded on close, a refusal as 503 + Retry-After, the
                      heartbeat (`host_sessions` every HEARTBEAT_PERIOD_S) and the
                      sheds this controller pushes (`vram_notice`);
- rendering/gated.py  `GatedBackend`: a session's backend, called only once
                      `wait_session` says it is resident (still mode until then);
- backend.py          `LeasedBackendDeployment`: asks for its lease before loading,
                      caps itself at it (torch's per-process memory fraction, on CUDA),
                      loads, measures its peak and reports it (`report_loaded`);
- ray_private.py      the Ray private APIs all this needs (handle calls, internal KV).

Probes: NVML on a GPU; the simulated device (AppArgs.vram.simulated) in tests, where
backend replicas attach their memory through `lease` and lose it when their process
exits, as on a real GPU.
"""
from __future__ import annotations

from functools import partial

from ray import serve

from .config import AppArgs
from .ray_private import call
from .vram.autoscaling import publish_desired
from .vram.checkpoint import Checkpoints, ray_kv
from .vram.data import Decision, SessionRequest
from .vram.metrics import PrometheusMetrics
from .vram.records import Lease, Placement, Readiness
from .vram.service import (  # noqa: F401  (re-exported: graph.py, session_host.py)
    HEARTBEAT_PERIOD_S,
    HOST_TIMEOUT_S,
    UNLISTED_GRACE_S,
    ServicePorts,
    VramService,
    backend_deployment_name,
    host_of,
)

CONTROLLER_NAME = "VramController"
SESSION_HOST_NAME = "SessionHost"


class VramControllerImpl:
    """Serve deployment body (one replica per GPU): a `VramService` on Ray's pieces."""

    def __init__(self, args: dict):
        self.app_name = serve.get_replica_context().app_name
        self._hosts = None  # SessionHost handle, made on first use (it binds us, not we it)
        ports = ServicePorts(publish=partial(publish_desired, self.app_name), tell_host=self._tell_host,
                             checkpoints=Checkpoints(self.app_name, ray_kv()), metrics=PrometheusMetrics())
        self.service = VramService.from_args(AppArgs.model_validate(args), ports)
        self.service.start()

    def _tell_host(self, decision: Decision) -> None:
        """Push a decision to the SessionHost that holds the session (session-affinity
        routed by its id); fire and forget, the host logs what it cannot apply."""
        if self._hosts is None:
            self._hosts = serve.get_deployment_handle(SESSION_HOST_NAME, app_name=self.app_name)
        call(self._hosts.vram_notice, session_id=decision.session_id, decision=decision)

    # ---------------- sessions (SessionHost) ----------------
    async def place(self, request: SessionRequest | dict, wait_s: float) -> Placement:
        """`request` is a SessionRequest, or its fields as a dict (tests, operators)."""
        if isinstance(request, dict):
            request = SessionRequest(**request)
        return await self.service.place(request, wait_s)

    async def ended(self, session_id: str) -> None:
        await self.service.ended(session_id)

    async def host_sessions(self, host_id: str, session_ids: list[str]) -> None:
        await self.service.host_sessions(host_id, session_ids)

    async def demote(self, session_id: str) -> None:
        await self.service.demote(session_id)

    async def wait_session(self, session_id: str, timeout_s: float) -> Readiness:
        return await self.service.wait_session(session_id, timeout_s)

    # ---------------- backends (LeasedBackendDeployment) ----------------
    async def lease(self, mode: str, pid: int) -> Lease:
        return await self.service.lease(mode, pid)

    async def report_loaded(self, mode: str, ok: bool, pid: int, peak_bytes: int | None, error: str = "") -> None:
        await self.service.report_loaded(mode, ok, pid, peak_bytes, error)

    # ---------------- operators ----------------
    async def snapshot(self) -> dict:
        return self.service.snapshot()

    async def set_neighbour(self, name: str, wanted_bytes: int) -> dict:
        return await self.service.set_neighbour(name, wanted_bytes)

    async def __del__(self):  # idempotent: Serve may call it more than once
        service = getattr(self, "service", None)
        if service is not None:
            service.close()
