"""How the VRAM controller is set up from the app's arguments: probe, controlled modes, policy config."""
from __future__ import annotations

import os
from pathlib import Path

from ..config import AppArgs, VramArgs
from .config import ControllerConfig, default_config
from .simulation import NeighbourScript, SimulatedDevice

# Scripted neighbours' PIDs start above Linux's pid_max (2**22): never a real process's.
SIMULATED_FIRST_PID = 10_000_000



def resolve_probe(vram: VramArgs) -> str:
    """'auto' becomes 'nvml' where NVML sees a GPU, else 'off'."""
    if vram.probe != "auto":
        return vram.probe
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return "nvml" if pynvml.nvmlDeviceGetCount() > 0 else "off"
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver, no device: nothing to protect here
        return "off"


def _specs(args: AppArgs) -> dict:
    return {b.mode: b for b in (args.vram.backends if args.vram.backends is not None
                                else default_config().backends)}


def controlled_modes(args: AppArgs) -> list[str]:
    """Backend modes the controller drives: those with a spec (vram.backends, or the
    shipped defaults for the neural modes). Others (the CPU `pattern` test mode without
    a spec) keep Serve's request-driven autoscaling and need no placement."""
    if args.vram.probe == "off":
        return []
    specs = _specs(args)
    return [m for m in args.backends if m in specs]


def controller_config(args: AppArgs) -> ControllerConfig:
    """The policy's config for the controlled backends (substitutes limited to those)."""
    modes = controlled_modes(args)
    specs = _specs(args)
    backends = tuple(specs[m].model_copy(update={"substitutes": tuple(s for s in specs[m].substitutes if s in modes)})
                     for m in modes)
    profile_path = args.data_dir / args.vram.profile_file if args.vram.profile_file else None
    return ControllerConfig(policy=args.vram.policy, neighbours=tuple(args.vram.neighbours),
                            backends=backends, profile_path=profile_path)


def simulated_device(vram: VramArgs) -> SimulatedDevice:
    sim = vram.simulated
    scripts = [NeighbourScript(n.name, tuple((float(t), int(b)) for t, b in n.steps),
                               (n.port,) if n.port is not None else ()) for n in sim.neighbours]
    return SimulatedDevice(sim.total_bytes, scripts, gpu_index=vram.policy.gpu_index,
                           per_process_available=sim.per_process_available, first_pid=SIMULATED_FIRST_PID)


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (its memory would be freed already)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
