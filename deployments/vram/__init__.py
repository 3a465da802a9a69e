"""VRAM controller: which backends may hold GPU memory next to the LLMs (DESIGN section 5).

The policy is pure Python, no Ray: a function of (state, reading, requests) that
returns decisions, each with a machine-readable `code` and a prose `reason`. The
service around it is plain asyncio, with everything Ray-specific injected; the
VramController deployment (deployments/vram_controller.py) is a shim over it.

Modules, in data-flow order:

- config.py      ControllerConfig: neighbours (pid / process name / port, optional
                 cap), backends (load time, variants best first, substitutes, seats),
                 PolicyConfig knobs (floor, margin, allowance, min residency, idle TTL).
- data.py        DeviceReading, requests (SessionRequest, SessionEnded, LoadReport,
                 PeakReport) and Decision (Action + Code + reason).
- probes.py      NvmlProbe (pynvml + /proc for names and listening ports).
- neighbours.py  per-neighbour high-water marks and reservations.
- profiles.py    measured peaks per (mode, resolution, batch), persisted as JSON.
- eviction.py    the cheapest set of idle backends that frees enough.
- policy.py      Controller: budget, admission, eviction, degrade ladder, emergency.
- simulation.py  SimulatedDevice (same `read()` as NvmlProbe) and `run_trace`.
- testing.py     Rig: a hand-driven GPU for unit tests.

Around the policy (used by the deployments):

- setup.py       probe resolution, controlled modes and ControllerConfig from AppArgs.
- records.py     the controller's typed answers (Placement, Lease, Readiness) and the
                 JSON clients see (a session's `placement`, GET /v1/gpu's decisions).
- service.py     VramService: the step loop, placement and its waits, leases, host
                 heartbeats and orphaned sessions, demotion, snapshot, checkpoint
                 resume; the clock, probe, publishing, host notices, checkpoint store
                 and metrics are injected (ServicePorts).
- metrics.py     the counts GET /v1/gpu shows; Prometheus through ray.serve.metrics.
- checkpoint.py  the service's state across a replica restart, in any byte store
                 (Ray's internal KV in the deployment).
- autoscaling.py replica targets into Ray's internal KV, and the autoscaling policy
                 that follows them (defined in deployments/ray_private.py: Serve
                 pickles it by value).
- gate.py        VramGate, the SessionHost's side: placement on create (503 when
                 refused), SessionEnded on close, heartbeats, sheds pushed to it.
                 Its GatedBackend (rendering/gated.py) waits for a resident backend.

How VramService (service.py) drives it (one per GPU)
----------------------------------------------------

    config = ControllerConfig.model_validate(yaml_dict)   # or default_config()
    controller = Controller.from_config(config)            # loads config.profile_path
    probe = NvmlProbe(config.policy.gpu_index)             # or SimulatedDevice(...)

    # every ~0.5 s, and right after a request arrives:
    decisions = controller.step(now_s, probe.read(), requests)   # requests drained since last step
    # (a SimulatedDevice needs device.advance(now_s) before read())

    for d in decisions:
        Action.LOAD   -> scale backend `d.mode` to 1 replica, at d.resolution_px / d.fps /
                         d.batch; the backend caps itself with
                         torch.cuda.set_per_process_memory_fraction(d.cap_bytes / total_bytes),
                         loads, measures its peak (CUDA context + torch.cuda.max_memory_reserved()
                         + non-torch memory NVML shows for its pid), and replies with
                         LoadReport(mode, ok, pid=os.getpid(), peak_bytes=...) as a request
                         to the next step (ok=False, error=str(exc) on failure).
        Action.UNLOAD -> scale backend `d.mode` to 0. Do not report completion: the
                         controller confirms it from NVML (Code.UNLOAD_CONFIRMED, with
                         extra["time_to_free_s"]).
        Action.ASSIGN -> tell session `d.session_id` to render with `d.mode` ("still" is the
                         portrait with audio); emit `mode_changed` with d.code and d.reason.
        Action.QUEUE  -> the session waits; d.eta_s is a rough ETA.
        Action.REFUSE -> HTTP 503 with Retry-After: ceil(d.retry_after_s), body
                         {"error": d.reason, "code": d.code}.
        Action.NOTE   -> log it; it is in GET /v1/gpu's decision list too.

    controller.desired_replicas()  -> {"ditto": 0|1, ...}: what a custom autoscaling
        policy (AutoscalingConfig.policy = AutoscalingPolicy(policy_function=...), which
        gets an AutoscalingContext and returns (replicas, state)) or an external scaler
        should set for each backend deployment; backends use min_replicas 0, max 1.
    controller.save_profiles()     -> after a step with a LoadReport or Code.PROFILE_UPDATED.
    controller.snapshot()          -> JSON for GET /v1/gpu: budget, ledger, neighbours,
                                      backends, queue, sessions, profiles, last decisions.
    controller.metrics()           -> gauges (bytes per backend, budget, ledger, free,
                                      emergency, queued); count decisions by d.code for
                                      admissions / denials / evictions counters and
                                      extra["time_to_free_s"] for a histogram.

Sessions: send SessionRequest(session_id, mode, resolution_px, priority, allow_substitute,
allow_lower_quality, allow_still, max_wait_s) when one is created, SessionEnded when it
closes, and PeakReport(mode, peak_bytes) when a backend sees a new live peak.
"""
from .config import (
    GIB,
    MIB,
    STILL_MODE,
    BackendSpec,
    ControllerConfig,
    NeighbourSpec,
    PolicyConfig,
    VariantSpec,
    default_config,
)
from .data import (
    Action,
    Code,
    Decision,
    DeviceReading,
    LoadReport,
    PeakReport,
    ProcessReading,
    Request,
    SessionEnded,
    SessionRequest,
)
from .policy import Controller
from .probes import NvmlProbe, Probe
from .profiles import ProfileKey, ProfileStore
from .simulation import NeighbourScript, SimulatedDevice

__all__ = [
    "GIB", "MIB", "STILL_MODE", "Action", "BackendSpec", "Code", "Controller",
    "ControllerConfig", "Decision", "DeviceReading", "LoadReport", "NeighbourScript",
    "NeighbourSpec", "NvmlProbe", "PeakReport", "PolicyConfig", "Probe", "ProcessReading",
    "ProfileKey", "ProfileStore", "Request", "SessionEnded", "SessionRequest",
    "SimulatedDevice", "VariantSpec", "default_config",
]
