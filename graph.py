"""The LockN Bod application graph: `build_app(args)` binds the deployments.

    Router (HTTP entry, autoscaled) -> SessionHost (sessions, session-affinity routed)
        -> one Backend deployment per neural mode (fractional GPU, min_replicas 0)
           └─ lease / report ─► VramController (one replica; AppArgs.vram.probe != off)

With the VramController on, each backend's replica count follows the controller
(a custom autoscaling policy, deployments/vram/autoscaling.py) and its replicas load
only under a lease; with it off, backends scale on their request load.

`serve run serve_config.yaml` imports `graph:build_app` with the `args` of the
config; `AppArgs` (deployments/config.py) documents every argument.
"""
from __future__ import annotations

from ray import serve
from ray.serve import Application
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy, RequestRouterConfig

from deployments.backend import BackendDeployment, LeasedBackendDeployment
from deployments.config import AppArgs, BackendArgs
from deployments.router import RouterImpl
from deployments.session_host import SessionHostImpl
from deployments.vram.autoscaling import follow_vram_controller
from deployments.vram.setup import controlled_modes, resolve_probe
from deployments.vram_controller import CONTROLLER_NAME, VramControllerImpl, backend_deployment_name
from models.modes import build_pipeline

# Scale-down must not wait Serve's default 600 s; scale-up reacts within seconds.
DOWNSCALE_DELAY_S = 30.0
UPSCALE_DELAY_S = 1.0
# Under the VramController a stopping replica has nothing to drain: its sessions left.
VRAM_SHUTDOWN_WAIT_LOOP_S = 0.1
# Serve's cold-start path starts a replica of a deployment at zero replicas while its
# handles' request counts, averaged over look_back_period_s, are above zero; a short
# window lets that average fall soon after the last call. Serve keeps an idle handle's
# last report for RAY_SERVE_MIN_HANDLE_METRICS_TIMEOUT_S (10 s), so a backend unloaded
# within that time of its last session's call may be started once more: that replica
# waits for a lease that is not granted, holds no GPU memory, and goes when the report
# expires.
VRAM_LOOK_BACK_S = 1.0
# Serve runs a replica's user code and its handles' request routing each on an event loop
# of its own thread by default; every call then crosses threads four times. Our methods
# never block their loop (the work is in threads), so they share the replica's main loop.
# Measured with direct (gRPC) calls on the hot path (deployments/ray_private.py: direct): per-frame
# serving overhead 1.66 -> 1.27 of in-process on 2 cores; with these flags and no direct
# calls, no gain (1.61).
# The gRPC message limit is raised from 4 MiB so that a direct call whose carry grows
# large is slower, not refused. Serve's metrics (the Ray dashboard's) are exported each
# second, not ten times: an idle replica costs ~9 ms of CPU a second at 0.1 s, ~7.5 at 1 s,
# and a scrape interval is 10 s or more anyway.
# glibc's malloc, with fixed thresholds for frame-sized buffers (mallopt(3)). A render call's
# frames are allocated in a worker thread and freed on the event loop's thread; with glibc's
# defaults that memory goes back to the kernel and each call faults it in anew: ~110 page
# faults a frame in a backend's render thread, ~5 us each on this VM, 0.5 ms a frame (as much
# as all the rest of the serving path). With fixed thresholds the freed frames stay in the
# process for the next call (tests/unit/test_replica_malloc.py). Arrays up to 32 MiB (glibc's
# largest mmap threshold) come from the heap, and a heap keeps up to 64 MiB free at its top.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}
REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
               "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(256 << 20),
               "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000", **MALLOC_ENV}


# Serve logs every handle call a replica serves ("access log"): renders, audio pushes and
# stream items. The hosts' and backends' calls are internal (the Router logs the HTTP
# requests), and at 25 fps the lines cost CPU in the replica and in Ray's log monitor.
INTERNAL_LOGGING = {"enable_access_log": False}


def actor_options(num_cpus: float, num_gpus: float = 0.0) -> dict:
    return {"num_cpus": num_cpus, "num_gpus": num_gpus, "runtime_env": {"env_vars": dict(REPLICA_ENV)}}


def backend_kwargs(b: BackendArgs, args: AppArgs) -> dict:
    """What every backend deployment is built with besides its mode's options: the real
    pipeline factory (tests construct the deployment with their own), its persona cache, and
    where the provenance keys are (it marks its sessions' frames) unless provenance is off."""
    return {"pipeline_factory": build_pipeline, "max_personas": b.max_personas_per_replica,
            "data_dir": str(args.data_dir) if args.provenance.enabled else None, "batch_sessions": b.batch_sessions}


def backend_app(mode: str, b: BackendArgs, args: AppArgs) -> Application:
    deployment = serve.deployment(
        BackendDeployment,
        name=f"Backend-{mode}",
        ray_actor_options=actor_options(b.num_cpus, b.num_gpus),
        autoscaling_config={
            "min_replicas": 0, "initial_replicas": 0, "max_replicas": b.max_replicas,
            "target_ongoing_requests": 2, "upscale_delay_s": UPSCALE_DELAY_S,
            "downscale_delay_s": DOWNSCALE_DELAY_S,
        },
        max_ongoing_requests=64,  # one held call per live session plus its renders
        health_check_period_s=10,
        logging_config=INTERNAL_LOGGING,
    )
    return deployment.bind(mode, str(args.persona_dir), b.options, b.chunk_frames, **backend_kwargs(b, args))


def leased_backend_app(mode: str, b: BackendArgs, args: AppArgs, controller: Application) -> Application:
    """A backend whose replica count is the VramController's (0 or 1): its delays are 0
    because the policy has its own minimum residency and idle TTL."""
    deployment = serve.deployment(
        LeasedBackendDeployment,
        name=backend_deployment_name(mode),
        ray_actor_options=actor_options(b.num_cpus, b.num_gpus),
        autoscaling_config=AutoscalingConfig(
            min_replicas=0, initial_replicas=0, max_replicas=1, upscale_delay_s=0.0,
            downscale_delay_s=0.0, downscale_to_zero_delay_s=0.0, look_back_period_s=VRAM_LOOK_BACK_S,
            policy=AutoscalingPolicy(policy_function=follow_vram_controller)),
        max_ongoing_requests=64,  # one held call per live session plus its renders
        health_check_period_s=10,
        logging_config=INTERNAL_LOGGING,
        graceful_shutdown_wait_loop_s=VRAM_SHUTDOWN_WAIT_LOOP_S,
        graceful_shutdown_timeout_s=5.0,
    )
    return deployment.bind(mode, str(args.persona_dir), b.options, b.chunk_frames, vram=controller,
                           **backend_kwargs(b, args))


def vram_controller_app(args: AppArgs) -> Application:
    return serve.deployment(
        VramControllerImpl,
        name=CONTROLLER_NAME,
        num_replicas=1,  # one per GPU: it owns the budget
        ray_actor_options=actor_options(0.1),
        max_ongoing_requests=10_000,  # sessions and starting replicas wait on it
    ).bind(args.model_dump(mode="json"))


def build_app(raw_args: dict) -> Application:
    args = AppArgs.model_validate(raw_args or {})
    args.persona_dir.mkdir(parents=True, exist_ok=True)
    args.vram = args.vram.model_copy(update={"probe": resolve_probe(args.vram)})
    controlled = controlled_modes(args)
    controller = vram_controller_app(args) if controlled else None
    backends = {mode: leased_backend_app(mode, b, args, controller) if mode in controlled
                else backend_app(mode, b, args) for mode, b in args.backends.items()}
    vram = {"vram": controller} if controller is not None else {}
    hosts = serve.deployment(
        SessionHostImpl,
        name="SessionHost",
        num_replicas=args.session_hosts,  # fixed: a session lives on its host for its lifetime
        ray_actor_options=actor_options(0.25),
        max_ongoing_requests=10_000,  # viewers hold long-lived streaming calls
        logging_config=INTERNAL_LOGGING,
        request_router_config=RequestRouterConfig(
            request_router_class="deployments.session_router:SessionAffinityRouter"),
    ).bind(args.model_dump(mode="json"), backends, **vram)
    router = serve.deployment(
        RouterImpl,
        name="Router",
        ray_actor_options=actor_options(0.25),
        max_ongoing_requests=1000,
        autoscaling_config={
            "min_replicas": args.router_replicas, "initial_replicas": args.router_replicas,
            "max_replicas": max(args.router_replicas, args.router_max_replicas),
            "target_ongoing_requests": 50, "upscale_delay_s": UPSCALE_DELAY_S,
            "downscale_delay_s": DOWNSCALE_DELAY_S,
        },
    ).bind(args.model_dump(mode="json"), hosts, **vram)
    return router
