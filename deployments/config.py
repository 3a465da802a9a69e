"""Typed application arguments (`build_app(args)`), with secure defaults."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .transports.encode import DEFAULT_JPEG_QUALITY
from .vram.config import BackendSpec, NeighbourSpec, PolicyConfig, default_config


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_sessions: int = Field(16, ge=1, description="concurrent sessions over all hosts")
    max_viewers_per_session: int = Field(8, ge=1)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="persona image upload")
    max_avatar_bytes: int = Field(30 * 1024 * 1024, ge=1024, description="avatar3d GLB upload")
    max_audio_upload_bytes: int = Field(50 * 1024 * 1024, ge=1024, description="one audio POST or render")
    max_image_side_px: int = Field(4096, ge=64, description="larger images are refused")
    min_image_side_px: int = Field(64, ge=16)
    portrait_max_side_px: int = Field(1024, ge=64, description="portraits are downscaled to this")
    max_buffered_audio_s: float = Field(120.0, gt=0, description="speech queued ahead per session")
    max_render_audio_s: float = Field(600.0, gt=0, description="one-shot render length")


class SessionTimeouts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    idle_ttl_s: float = Field(300.0, gt=0, description="closed after this long with no viewer and no input")
    disconnect_grace_s: float = Field(
        60.0, gt=0, description="closed this long after its last viewer left; longer than HAProxy's restart "
                                "after a crash (~30 s: Serve's three failed health checks, 10 s apart), so a "
                                "client that reconnects once port 8000 answers again finds its session")
    unused_persona_ttl_s: float = Field(600.0, gt=0, description="ephemeral persona never used by a session")
    speech_gap_s: float = Field(0.4, gt=0, description="audio pause that ends an utterance")
    backend_call_timeout_s: float = Field(30.0, gt=0)
    backend_ready_timeout_s: float = Field(120.0, gt=0, description="cold start of a backend")


class BackendArgs(BaseModel):
    """One neural backend deployment."""

    model_config = ConfigDict(extra="forbid")

    num_gpus: float = Field(0.3, ge=0, le=1)
    num_cpus: float = Field(0.5, ge=0)
    max_replicas: int = Field(2, ge=1)
    chunk_frames: int = Field(5, ge=1, description="frames per render chunk (the pipeline's step)")
    max_chunks_per_call: int = Field(
        4, ge=1, description="most buffered chunks sent in one backend call once the video is well ahead, "
                             "as many as the backend renders within half the lead (the backend renders "
                             "them one by one; fewer calls cost less CPU)")
    max_personas_per_replica: int = Field(
        4, ge=1, description="prepared personas a replica keeps (Serve's multiplexing, least recently used "
                             "dropped); calls for a persona go to a replica that holds it")
    batch_sessions: int = Field(
        1, ge=1, le=32, description="render calls of up to this many sessions that queue while the replica "
                                    "renders are drawn in one network pass (1: off; docs/architecture.md)")
    options: dict = Field(default_factory=dict, description="keyword options of the pipeline")


class IceServer(BaseModel):
    """A STUN or TURN server, as in the browser's RTCIceServer."""

    model_config = ConfigDict(extra="forbid")

    urls: list[str] = Field(..., min_length=1, description="stun:host:port, turn:host:port?transport=udp|tcp, turns:")
    username: str | None = Field(None, description="TURN only")
    credential: str | None = Field(None, description="TURN only")


class WebRtcArgs(BaseModel):
    """WebRTC out (deployments/transports/webrtc.py): where the session host's peers listen and who they may reach."""

    model_config = ConfigDict(extra="forbid")

    host_addresses: list[str] | None = Field(
        ["127.0.0.1"],
        description="local addresses to offer as host candidates; null: every non-loopback interface "
                    "(aioice's own choice), for browsers on the LAN")
    ice_servers: list[IceServer] = Field(
        default_factory=list, description="STUN/TURN servers; none by default (nothing leaves the machine)")
    max_peers_per_session: int = Field(2, ge=1)
    gather_timeout_s: float = Field(10.0, gt=0, description="ICE gathering before the answer is sent")
    connect_timeout_s: float = Field(30.0, gt=0, description="a peer not connected by then is closed")


class ProvenanceArgs(BaseModel):
    """Machine-readable marks on what we render (docs/security.md#provenance)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="false: no marks and no signatures (an operator's explicit choice; "
                                            "session_ready and /v1/modes say so)")
    tsa_url: str | None = Field(None, description="an RFC 3161 timestamp authority for C2PA signatures; unset, "
                                                  "nothing leaves the machine")


class EdgeArgs(BaseModel):
    """The HTTP edge (deployments/api/guard.py): which Host names and browser origins are
    served, the API token, and the body size of small requests. docs/security.md#the-http-edge."""

    model_config = ConfigDict(extra="forbid")

    listen_host: str = Field(
        "127.0.0.1", description="the address http_options.host binds (set both together); beyond loopback "
                                 "(e.g. 0.0.0.0) the server refuses to start without api_token")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host names (any port) served besides localhost, 127.0.0.1 and "
                                          "[::1], e.g. the LAN address clients type; '*': any (no DNS-rebinding "
                                          "defence). A name beyond loopback needs api_token")
    allowed_origins: list[str] = Field(
        default_factory=list, description="browser origins (scheme://host[:port]) besides the server's own "
                                          "that may POST, DELETE or open a WebSocket")
    api_token: str | None = Field(
        None, min_length=16, description="clients send `Authorization: Bearer <token>` (or ?access_token= for "
                                         "a WebSocket or <img>); the page takes it from /#token=<token>")
    max_json_bytes: int = Field(128 * 1024, ge=4096, description="bodies of routes that take JSON or text")

    @field_validator("allowed_origins")
    @classmethod
    def _origins_are_origins(cls, origins: list[str]) -> list[str]:
        from .api.guard import normalize_origin

        bad = [o for o in origins if normalize_origin(o) is None]
        if bad:
            raise ValueError(f"origins are http(s)://host[:port]; not {', '.join(bad)}")
        return origins

    @model_validator(mode="after")
    def _beyond_loopback_needs_a_token(self) -> EdgeArgs:
        """Refuse to start: the Host check stops browsers, not a client on the network that
        sends `Host: localhost`."""
        from .api.guard import is_loopback_host

        exposed = [h for h in (self.listen_host, *self.allowed_hosts) if not is_loopback_host(h)]
        if exposed and not self.api_token:
            raise ValueError(f"edge.api_token is required to serve beyond loopback ({', '.join(exposed)})")
        return self


class SimulatedNeighbourArgs(BaseModel):
    """A scripted process on the simulated GPU: at `at_s` after start it wants `bytes`."""

    model_config = ConfigDict(extra="forbid")

    name: str
    port: int | None = Field(None, description="a port it listens on (how a NeighbourSpec may match it)")
    steps: list[tuple[float, int]] = Field(default_factory=list, description="[[at_s, bytes], ...]; 0 bytes: exits")


class SimulatedGpuArgs(BaseModel):
    """The simulated device (tests, demos): scripted neighbours; our backend replicas
    attach their memory through the controller and lose it when their process exits."""

    model_config = ConfigDict(extra="forbid")

    total_bytes: int = Field(24 * 1024**3, gt=0)
    neighbours: list[SimulatedNeighbourArgs] = Field(default_factory=list)
    per_process_available: bool = True


def _default_vram_neighbours() -> list[NeighbourSpec]:
    return list(default_config().neighbours)


class VramArgs(BaseModel):
    """The VRAM controller (DESIGN section 5; deployments/vram_controller.py)."""

    model_config = ConfigDict(extra="forbid")

    probe: Literal["auto", "nvml", "simulated", "off"] = Field(
        "auto", description="auto: NVML where a GPU is visible, else off (backends scale on load only)")
    step_period_s: float = Field(0.5, gt=0, le=10, description="how often the policy runs on fresh readings")
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    neighbours: list[NeighbourSpec] = Field(default_factory=_default_vram_neighbours,
                                            description="the LLMs we share the GPU with")
    backends: list[BackendSpec] | None = Field(
        None, description="per-mode load time, variants and peaks; null: the shipped defaults")
    profile_file: str | None = Field("vram_profiles.json",
                                     description="measured peaks, under data_dir; null: memory only")
    lease_timeout_s: float = Field(60.0, gt=0, description="a replica waits this long for its load lease")
    simulated: SimulatedGpuArgs = Field(default_factory=SimulatedGpuArgs)


def _default_backends() -> dict[str, BackendArgs]:
    return {
        "liveportrait": BackendArgs(num_gpus=0.25, chunk_frames=5),
        "musetalk": BackendArgs(num_gpus=0.3, chunk_frames=8),
        "ditto": BackendArgs(num_gpus=0.3, chunk_frames=5),
    }


class AppArgs(BaseModel):
    """Everything `graph.build_app` needs; serve_config.yaml sets these under `args`."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Field(Path("var"), description="personas live under data_dir/personas")
    router_replicas: int = Field(1, ge=1, description="min Router replicas (autoscaled up to max)")
    router_max_replicas: int = Field(2, ge=1)
    session_hosts: int = Field(1, ge=1, description="SessionHost replicas (fixed: sessions live there)")
    jpeg_quality: int = Field(DEFAULT_JPEG_QUALITY, ge=10, le=100)
    enable_test_modes: bool = Field(False, description="adds the `pattern` mode (tests, benchmarks)")
    backends: dict[str, BackendArgs] = Field(default_factory=_default_backends)
    limits: Limits = Field(default_factory=Limits)
    timeouts: SessionTimeouts = Field(default_factory=SessionTimeouts)
    webrtc: WebRtcArgs = Field(default_factory=WebRtcArgs)
    vram: VramArgs = Field(default_factory=VramArgs)
    edge: EdgeArgs = Field(default_factory=EdgeArgs)
    provenance: ProvenanceArgs = Field(default_factory=ProvenanceArgs)

    @property
    def persona_dir(self) -> Path:
        return self.data_dir / "personas"

    def modes(self) -> list[str]:
        """Modes this app serves: avatar3d and still (no GPU, no weights), the configured
        backends, and test modes if enabled."""
        extra = ["pattern"] if self.enable_test_modes else []
        return list(dict.fromkeys(["avatar3d", "still", *self.backends, *extra]))

    def max_sessions_per_host(self) -> int:
        return -(-self.limits.max_sessions // self.session_hosts)
