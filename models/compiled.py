"""`torch.compile` for a pipeline's per-frame networks: the `compile` option.

Each neural pipeline runs a few networks on every frame: LivePortrait's and Ditto's
renderer (the warping network W, the SPADE generator G) and LivePortrait's stitching,
lip and eye MLPs; MuseTalk's UNet and its VAE decoder. `compile_networks` compiles
those in place (`nn.Module.compile`: the module keeps its class, parameters, state dict
and `.to()`), so the pipeline code that calls them does not change. The networks that
run once per persona (LivePortrait's F and M, MuseTalk's VAE encoder) stay eager.

The option, in serve_config.yaml `backends.<mode>.options` (or the config dict):

    compile: off               # the default: eager, bit for bit what runs without the option
    compile: default           # inductor
    compile: reduce-overhead   # inductor and CUDA graphs (CUDA only; on CPU: "default", logged)
    compile: max-autotune      # inductor, autotuned kernels (and CUDA graphs on CUDA); slowest to compile

Shapes: W, G, the UNet and the VAE decoder see a handful of fixed shapes (a batch of at
most `max_batch` / `batch_size` frames), so they compile with `dynamic=False`: one graph
(and, with CUDA graphs, one recorded graph) per batch size and input layout met. The
MLPs see a frame count that varies with the chunk, so torch decides (`dynamic=None`:
static at first, dynamic after a second shape). Compiling is lazy: the first call at
each shape pays it (about a minute per network on 2 CPU cores, docs/modes/liveportrait.md).

fp16 on CUDA stays as it is: the pipelines' autocast (LivePortrait, Ditto) or fp16
weights (MuseTalk) are traced into the compiled graphs.

Threads: with CUDA graphs every call must come from the thread that recorded them
(`records_cuda_graphs`); the backend replica then gives its pipeline one thread.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

OFF = "off"
MODES = (OFF, "default", "reduce-overhead", "max-autotune")
# Graphs one compiled network may hold (torch's default is 8): W+G meet up to max_batch (8)
# batch sizes, each with a shared (expanded) or a stacked source volume.
RECOMPILE_LIMIT = 32


def compile_mode(value: str | bool | None) -> str | None:
    """The option's value as a torch.compile mode, or None for off.

    None, False, "off" and "none" are off; True is "default". Anything else not in MODES is
    a ValueError that lists them."""
    if value is None or value is False or (isinstance(value, str) and value.lower() in (OFF, "none", "")):
        return None
    if value is True:
        return "default"
    if value not in MODES:
        raise ValueError(f"unknown compile mode {value!r}; known: {', '.join(MODES)}")
    return value


# Modes whose compiled networks record CUDA graphs on CUDA (inductor's "cudagraph trees").
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class Compiled:
    """What `compile_networks` did: the mode asked for, the mode used, the networks compiled,
    and whether they record CUDA graphs."""

    asked: str | None
    mode: str | None
    networks: tuple[str, ...]
    cuda_graphs: bool = False


def records_cuda_graphs(pipeline) -> bool:
    """Whether a pipeline's compiled networks record CUDA graphs: then every call of the
    pipeline must come from one thread. Inductor keeps a CUDA graph's state per thread, and
    a graph replayed from another thread fails an assertion (pytorch/pytorch#123177, fixed
    after torch 2.11). A composite (photoreal) gives its parts' `compiled` as a tuple."""
    compiled = getattr(pipeline, "compiled", None)
    parts = compiled if isinstance(compiled, tuple) else (compiled,)
    return any(part is not None and part.cuda_graphs for part in parts)


def per_frame_networks(nets) -> dict[str, tuple[nn.Module, bool | None]]:
    """name -> (module, dynamic) of the networks a pipeline runs on every frame.

    Takes LivePortraitNetworks (also Ditto's renderer), MuseTalkNets, a single module, or a
    mapping of name -> module (compiled with dynamic=False)."""
    from .liveportrait.loading import LivePortraitNetworks
    from .musetalk.inference import MuseTalkNets

    if isinstance(nets, LivePortraitNetworks):
        s = nets.stitching
        return {"warping": (nets.warping, False), "generator": (nets.generator, False),
                "stitching.stitching": (s.stitching, None), "stitching.lip": (s.lip, None),
                "stitching.eye": (s.eye, None)}
    if isinstance(nets, MuseTalkNets):
        return {"unet": (nets.unet, False), "vae.decoder": (nets.vae.decoder, False)}
    if isinstance(nets, nn.Module):
        return {type(nets).__name__: (nets, False)}
    if isinstance(nets, Mapping):
        return {name: (module, False) for name, module in nets.items()}
    raise TypeError(f"no per-frame networks known for {type(nets).__name__}")


def _device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def compile_networks(nets, mode: str | bool | None) -> Compiled:
    """Compile `nets`' per-frame networks (`per_frame_networks`) in place with `mode`.

    Off (None, "off"): nothing is touched, and the pipeline is bit for bit the eager one.
    "reduce-overhead" on CPU networks: "default", with a warning in the log, as CUDA graphs
    need CUDA. Call it after the networks are on their device. Returns
    what was done (`Compiled`), which the pipeline keeps."""
    asked = compile_mode(mode)
    if asked is None:
        return Compiled(None, None, ())
    networks = per_frame_networks(nets)
    on_cuda = any(_device(module).type == "cuda" for module, _ in networks.values())
    used = asked
    if asked == "reduce-overhead" and not on_cuda:
        used = "default"
        log.warning("compile: %r records CUDA graphs, which need CUDA; these networks are on the CPU, "
                    "so they compile with mode 'default'", asked)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for module, dynamic in networks.values():
        module.compile(mode=used, dynamic=dynamic)
    log.info("compile: %s with mode %r", ", ".join(networks), used)
    return Compiled(asked, used, tuple(networks), cuda_graphs=on_cuda and used in CUDA_GRAPH_MODES)
