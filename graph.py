"""The LockN Bod application graph: `build_app(args)` binds the deployments.

    Router (HTTP entry, autoscaled) -> SessionHost (sessions, session-affinity routed)
        -> one Backend deployment per neural mode (fractional GPU, min_replicas 0)

`serve run serve_config.yaml` imports `graph:build_app` with the `args` of the
config; `AppArgs` (deployments/config.py) documents every argument.
"""
from __future__ import annotations

from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from deployments.backends import BackendDeployment
from deployments.config import AppArgs, BackendArgs
from deployments.router import RouterImpl
from deployments.session_host import SessionHostImpl

# Scale-down must not wait Serve's default 600 s; scale-up reacts within seconds.
DOWNSCALE_DELAY_S = 30.0
UPSCALE_DELAY_S = 1.0


def backend_app(mode: str, b: BackendArgs, args: AppArgs) -> Application:
    deployment = serve.deployment(
        BackendDeployment,
        name=f"Backend-{mode}",
        ray_actor_options={"num_cpus": b.num_cpus, "num_gpus": b.num_gpus},
        autoscaling_config={
            "min_replicas": 0, "initial_replicas": 0, "max_replicas": b.max_replicas,
            "target_ongoing_requests": 2, "upscale_delay_s": UPSCALE_DELAY_S,
            "downscale_delay_s": DOWNSCALE_DELAY_S,
        },
        max_ongoing_requests=16,
        health_check_period_s=10,
    )
    return deployment.bind(mode, str(args.persona_dir), b.options)


def build_app(raw_args: dict) -> Application:
    args = AppArgs.model_validate(raw_args or {})
    args.persona_dir.mkdir(parents=True, exist_ok=True)
    backends = {mode: backend_app(mode, b, args) for mode, b in args.backends.items()}
    hosts = serve.deployment(
        SessionHostImpl,
        name="SessionHost",
        num_replicas=args.session_hosts,  # fixed: a session lives on its host for its lifetime
        ray_actor_options={"num_cpus": 0.25},
        max_ongoing_requests=10_000,  # viewers hold long-lived streaming calls
        request_router_config=RequestRouterConfig(
            request_router_class="deployments.session_router:SessionAffinityRouter"),
    ).bind(args.model_dump(mode="json"), backends)
    router = serve.deployment(
        RouterImpl,
        name="Router",
        ray_actor_options={"num_cpus": 0.25},
        max_ongoing_requests=1000,
        autoscaling_config={
            "min_replicas": args.router_replicas, "initial_replicas": args.router_replicas,
            "max_replicas": max(args.router_replicas, args.router_max_replicas),
            "target_ongoing_requests": 50, "upscale_delay_s": UPSCALE_DELAY_S,
            "downscale_delay_s": DOWNSCALE_DELAY_S,
        },
    ).bind(args.model_dump(mode="json"), hosts)
    return router
