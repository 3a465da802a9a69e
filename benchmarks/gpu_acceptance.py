"""The GPU acceptance run: every GPU figure of the issue in one command and one JSON document.

Sections, each under its own time budget (a section that runs out records what it skipped
and why; one that fails records its error; the JSON is always printed, and written to
`--out FILE` if given):

- env: the device, torch, CUDA;
- liveportrait, musetalk, ditto, photoreal: official-size networks (`--config official`) on
  seeded weights, built by the mode's own benchmark script (benchmarks/<mode>.py):
  fp16 against fp32 agreement (max/mean abs difference of the network output or frames),
  per-stage ms at batch 1/8/16, frames/s, eager against `torch.compile` of the per-frame
  networks (`--compile`, on by default on CUDA), and the VRAM peak around a warm render
  at batch 8;
- vram: each mode's measured peak, and the rows the VRAM controller's profile file
  (`data_dir/vram_profiles.json`, deployments/vram/profiles.py) would hold for it;
- nvml: the VRAM controller against real NVML (benchmarks/vram_nvml_check.py);
- serving: sessions held at 25 fps through the real graph (Ray Serve, graph.build_app),
  with cross-session batching on and off where the backend has it (`batch_sessions`).

On CUDA each mode (and the NVML check and the serving section) runs in a process of its
own: a clean CUDA context for its memory peak, and a hung compile is killed at its budget
(what it measured until then is kept). Nothing here is hard-coded: every figure is measured.

    python benchmarks/gpu_acceptance.py --out gpu.json                    # on the GPU: < 8 min
    python benchmarks/gpu_acceptance.py --device cpu --config tiny --skip serving   # the dry run
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

MODES = ("liveportrait", "musetalk", "ditto", "photoreal")
SECTIONS = ("env", *MODES, "vram", "nvml", "serving")
# Seconds per section on an H100 (the whole run: under 8 minutes with start-up), and on the dry run.
# On CUDA a section past its budget is killed KILL_GRACE_S later: at most 470 s in all.
BUDGET_CUDA = {"env": 10, "liveportrait": 65, "musetalk": 55, "ditto": 55, "photoreal": 60, "nvml": 35,
               "serving": 130}
BUDGET_CPU = {"env": 10, "liveportrait": 60, "musetalk": 60, "ditto": 60, "photoreal": 60, "nvml": 10,
              "serving": 150}
KILL_GRACE_S = 10.0  # a child past its budget gets this long to finish its step before it is killed
VRAM_BATCH = 8


# ------------------------------------------------------------------ recording, budgets

class Budget:
    """A section's deadline; `step` runs one measurement unless the deadline has passed."""

    def __init__(self, seconds: float, out: dict, partial: Path | None = None):
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds
        self.out = out
        self.partial = partial

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def step(self, name: str, fn, *, needs_cuda: bool = False, on_cuda: bool = True):
        if needs_cuda and not on_cuda:
            self.out[name] = {"skipped": "no CUDA"}
        elif self.left() <= 0:
            self.out[name] = {"skipped": f"section budget of {self.seconds:.0f} s used"}
        else:
            t0 = time.monotonic()
            try:
                value = fn()
                self.out[name] = value
            except Exception as err:  # a failing step is recorded; the section goes on
                self.out[name] = {"error": f"{type(err).__name__}: {err}",
                                  "traceback": traceback.format_exc(limit=4).splitlines()[-6:]}
            if isinstance(self.out[name], dict):
                self.out[name].setdefault("step_s", round(time.monotonic() - t0, 2))
        self.flush()
        return self.out.get(name)

    def flush(self) -> None:
        if self.partial is not None:  # what the parent reads if this process is killed
            tmp = self.partial.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.out, default=str))
            os.replace(tmp, self.partial)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def diff(a, b) -> dict:
    """max and mean absolute difference of two tensors or arrays, as float64."""
    import numpy as np
    import torch

    to_np = (lambda x: x.detach().float().cpu().numpy()) if isinstance(a, torch.Tensor) else np.asarray
    d = np.abs(to_np(a).astype(np.float64) - to_np(b).astype(np.float64))
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean())}


def peak_memory(fn, device) -> dict:
    """torch's peak memory over one call of fn (already warm), and what NVML shows for this process."""
    import gc

    import torch

    fn()
    sync(device)
    # reset_peak_memory_stats only lowers the peaks to what is held now, and the caching allocator
    # still holds the blocks of earlier, larger runs (batch 16, fp32): release them first.
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    out = {"batch": VRAM_BATCH, "max_memory_allocated_bytes": int(torch.cuda.max_memory_allocated(device)),
           "max_memory_reserved_bytes": int(torch.cuda.max_memory_reserved(device))}
    out["nvml_process_bytes"] = nvml_process_bytes(device)
    if out["nvml_process_bytes"] is not None:
        # What the backend reports and the profile file keeps (docs/vram.md): CUDA context +
        # max_memory_reserved + non-torch memory, i.e. all NVML sees for the process at its peak.
        out["profile_peak_bytes"] = max(out["nvml_process_bytes"], out["max_memory_reserved_bytes"])
        out["context_and_non_torch_bytes"] = out["nvml_process_bytes"] - int(torch.cuda.memory_reserved(device))
    return out


def nvml_process_bytes(device) -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid():
                    return int(proc.usedGpuMemory)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None
    return None


def compiled_vs_eager(time_fn, modules: dict, check_fn=None) -> dict:
    """Time with the per-frame networks eager, then torch.compile'd in place (`modules`:
    name -> (owner, attribute)); the first compiled call's time is the compile time."""
    import torch

    eager_ms = time_fn()
    reference = check_fn() if check_fn else None
    originals = {name: getattr(owner, attr) for name, (owner, attr) in modules.items()}
    try:
        for name, (owner, attr) in modules.items():
            setattr(owner, attr, torch.compile(originals[name]))
        t0 = time.perf_counter()
        compiled_out = check_fn() if check_fn else time_fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the first call's kernels, not only their launch
        compile_s = time.perf_counter() - t0
        compiled_ms = time_fn()
    finally:
        for name, (owner, attr) in modules.items():
            setattr(owner, attr, originals[name])
    out = {"compiled": sorted(modules), "eager_ms": round(eager_ms, 3), "compiled_ms": round(compiled_ms, 3),
           "speedup": round(eager_ms / compiled_ms, 3), "first_compiled_call_s": round(compile_s, 2)}
    if check_fn:
        out["compiled_vs_eager"] = diff(reference, compiled_out)
    return out


# ------------------------------------------------------------------ the modes

def mode_liveportrait(o: argparse.Namespace, b: Budget, device) -> None:
    import torch

    from liveportrait import build_pipeline, measure, stage_inputs, time_ms
    from models.liveportrait.config import LivePortraitConfig
    from models.liveportrait.loading import LivePortraitNetworks

    on_cuda = device.type == "cuda"
    config = LivePortraitConfig() if o.config == "official" else LivePortraitConfig.tiny()
    torch.manual_seed(0)
    nets = LivePortraitNetworks.random(config, device=device)
    b.out["what"] = ("W (warping) + G (SPADE generator) + S (stitching, eye and lip MLPs) + paste-back into a "
                     f"{o.portrait}² portrait; pipeline_render is LivePortraitPipeline.render of a chunk")

    def agreement():
        with torch.no_grad():
            inp = stage_inputs(nets, 4, device)

            def wg():
                return nets.generator(nets.warping(inp["volume"], kp_driving=inp["x_d"], kp_source=inp["x_s"])["out"])

            full = wg()
            with torch.autocast("cuda", dtype=torch.float16):
                half = wg()
        return {"output": "W+G image, batch 4, in (0, 1)", **diff(full, half)}

    b.step("fp16_vs_fp32", agreement, needs_cuda=True, on_cuda=on_cuda)
    precisions = ["fp16", "fp32"] if on_cuda else ["fp32"]
    runs = b.out["runs"] = []
    pipelines = {}
    for precision in precisions:
        pipelines[precision] = build_pipeline(nets, config, precision, max(o.sizes), (o.portrait, o.portrait))
        for batch in o.sizes:
            b.step(f"_{precision}_b{batch}", lambda: measure(nets, *pipelines[precision], batch, precision,
                                                                  device, o.warmup, o.repeats))
            r = b.out.pop(f"_{precision}_b{batch}")
            r.setdefault("batch", batch)
            r.setdefault("precision", precision)
            if "pipeline_render_ms_per_frame" in r:
                r["frames_per_s_pipeline"] = round(1000 / r["pipeline_render_ms_per_frame"], 1)
                r["frames_per_s_W+G+S+paste_back"] = round(1000 / r["W+G+S+paste_back_ms_per_frame"], 1)
            runs.append(r)
            b.flush()
    best = precisions[0]
    pipeline, persona = pipelines[best]
    b.step("vram_peak", lambda: peak_memory(lambda: lp_render(pipeline, persona, VRAM_BATCH), device),
           needs_cuda=True, on_cuda=on_cuda)

    def compiled():
        inp = stage_inputs(nets, VRAM_BATCH, device)
        autocast = torch.autocast("cuda", dtype=torch.float16) if on_cuda else contextlib.nullcontext()

        def wg():
            with torch.no_grad(), autocast:
                return nets.generator(nets.warping(inp["volume"], kp_driving=inp["x_d"], kp_source=inp["x_s"])["out"])

        out = compiled_vs_eager(lambda: time_ms(wg, device, o.warmup, o.repeats) / VRAM_BATCH,
                                {"warping": (nets, "warping"), "generator": (nets, "generator")}, wg)
        return {"what": f"W+G ms a frame at batch {VRAM_BATCH}, {best}", **out}

    b.step("compile", compiled) if o.compile else b.out.update(compile={"skipped": "--no-compile"})


def lp_render(pipeline, persona, n: int):
    from liveportrait import speech
    from models.base import Controls

    carry = pipeline.start(persona, Controls(emotion="happy", intensity=0.7))
    return pipeline.render(persona, carry, speech(n), Controls(emotion="happy", intensity=0.7))[0]


def mode_musetalk(o: argparse.Namespace, b: Budget, device) -> None:
    import torch

    from liveportrait import time_ms
    from models.musetalk import vae as vae_ops
    from models.musetalk.inference import predict_latents
    from musetalk import build_nets, stage_times, whisper_encoder

    on_cuda = device.type == "cuda"
    full = o.config == "official"
    torch.manual_seed(0)
    nets32 = build_nets(full, str(device), torch.float32)
    b.out["what"] = ("audio features (streaming whisper), UNet step, VAE decode, blending into 720p; "
                     "frames_per_s is UNet + VAE decode + blending")

    def inputs(batch: int, dtype):
        gen = torch.Generator().manual_seed(1)
        return (torch.randn(batch, 8, 32, 32, generator=gen).to(device, dtype),
                torch.randn(batch, 50, 384, generator=gen).to(device, dtype))

    def generate(nets, batch: int):
        latents, prompts = inputs(batch, nets.dtype)
        pred = predict_latents(nets, latents, prompts)
        return pred, vae_ops.to_bgr_uint8(vae_ops.decode(nets.vae, pred))

    nets = {"fp32": nets32}
    if on_cuda:
        nets["fp16"] = copy.deepcopy(nets32).to(device, torch.float16)

    def agreement():
        (p32, f32), (p16, f16) = generate(nets["fp32"], 4), generate(nets["fp16"], 4)
        return {"unet_latents": diff(p32, p16), "decoded_faces_uint8": diff(f32, f16), "batch": 4}

    b.step("fp16_vs_fp32", agreement, needs_cuda=True, on_cuda=on_cuda)
    runs = b.out["runs"] = []
    for precision in (["fp16", "fp32"] if on_cuda else ["fp32"]):
        encoder, source = whisper_encoder(str(device), nets[precision].dtype)
        b.out["whisper_weights"] = source
        for batch in o.sizes:
            b.step("_run", lambda: stage_times(nets[precision], encoder, batch, str(device), o.repeats))
            runs.append({"batch": batch, "precision": precision, **b.out.pop("_run")})
            b.flush()
    best = nets["fp16" if on_cuda else "fp32"]
    if on_cuda:  # the fp32 reference would count in the fp16 networks' memory peak
        del nets["fp32"], nets32
    b.step("vram_peak", lambda: {"what": "UNet + VAE decode", **peak_memory(lambda: generate(best, VRAM_BATCH),
                                                                           device)},
           needs_cuda=True, on_cuda=on_cuda)

    def compiled():
        def run():
            with torch.no_grad():
                return generate(best, VRAM_BATCH)[0]

        out = compiled_vs_eager(lambda: time_ms(run, device, o.warmup, o.repeats) / VRAM_BATCH,
                                {"unet": (best, "unet"), "vae_decoder": (best.vae, "decoder")}, run)
        return {"what": f"UNet + VAE decode ms a frame at batch {VRAM_BATCH}", **out}

    b.step("compile", compiled) if o.compile else b.out.update(compile={"skipped": "--no-compile"})


def mode_ditto(o: argparse.Namespace, b: Budget, device) -> None:
    import numpy as np
    import torch

    from ditto import build, lmdm_window_ms, renderer_ms, stream_timings
    from liveportrait import time_ms
    from models.base import PersonaMedia
    from models.ditto.testing import face_like_portrait
    from models.liveportrait.decode import warp_decode

    on_cuda = device.type == "cuda"
    pipe = build("full" if o.config == "official" else "tiny", str(device))
    persona = pipe.prepare(PersonaMedia([face_like_portrait(512)]), "bench")
    source = persona.features["ditto"]
    x_s = torch.from_numpy(np.asarray(source.cond.kp, np.float32).reshape(1, 21, 3)).to(device)
    b.out["what"] = ("LMDM: one DDIM window of motion; renderer: LivePortrait W+G per frame "
                     f"({'fp16' if pipe.config.fp16 and on_cuda else 'fp32'}); stream: the whole pipeline fed "
                     "200 ms chunks (real-time factor, first frame)")

    def wd(batch: int, fp16: bool):
        # On CUDA, prepare ran F under fp16 autocast: the fp32 reference needs a float32 volume.
        f_s = source.f_s if fp16 else source.f_s.float()
        return warp_decode(pipe.networks, f_s, x_s, x_s.expand(batch, 21, 3) + 0.01, fp16)["image"]

    b.step("fp16_vs_fp32", lambda: {"output": "W+G image, batch 4, in (0, 1)", **diff(wd(4, False), wd(4, True))},
           needs_cuda=True, on_cuda=on_cuda)
    b.step("lmdm", lambda: {"ms_per_window": lmdm_window_ms(pipe, device, o.repeats),
                            "frames_per_window": pipe.lmdm.cfg.seq_frames - pipe.config.stream.overlap})
    b.step("renderer", lambda: {f"b{batch}_ms_per_frame": renderer_ms(pipe, persona, device, batch, o.repeats)
                                for batch in o.sizes})
    if o.ditto_seconds > 0:
        b.step("stream", lambda: stream_timings(pipe, persona, device, o.ditto_seconds))
    else:
        b.out["stream"] = {"skipped": "--ditto-seconds 0"}
    stream = b.out.get("stream", {})
    if isinstance(stream.get("ms_per_frame"), float) and stream["ms_per_frame"] > 0:
        stream["frames_per_s"] = round(1000 / stream["ms_per_frame"], 1)
    b.step("vram_peak", lambda: {"what": f"renderer W+G at batch {VRAM_BATCH}",
                                 **peak_memory(lambda: wd(VRAM_BATCH, pipe.config.fp16), device)},
           needs_cuda=True, on_cuda=on_cuda)

    def compiled():
        def run():
            return wd(VRAM_BATCH, pipe.config.fp16)

        nets = pipe.networks
        out = compiled_vs_eager(lambda: time_ms(run, device, o.warmup, o.repeats) / VRAM_BATCH,
                                {"warping": (nets, "warping"), "generator": (nets, "generator")}, run)
        return {"what": f"renderer W+G ms a frame at batch {VRAM_BATCH}", **out}

    b.step("compile", compiled) if o.compile else b.out.update(compile={"skipped": "--no-compile"})


def mode_photoreal(o: argparse.Namespace, b: Budget, device) -> None:
    import gc

    import torch

    from liveportrait import speech, time_ms
    from photoreal import CONTROLS, build, first_frames_ms, stage_times

    on_cuda = device.type == "cuda"
    official = o.config == "official"
    hw = (o.portrait, o.portrait)
    b.out["what"] = ("LivePortrait S+W+G, MuseTalk VAE encode, UNet, VAE decode, jaw-mask blend, paste-back; "
                     "render_ms_per_frame is PhotorealPipeline.render of a chunk, the stream warm")

    def first_frames(pipeline, persona):
        frames, _ = pipeline.render(persona, pipeline.start(persona, CONTROLS), speech(8), CONTROLS)
        return frames

    def agreement():
        p32, s32 = build(official, device, max(o.sizes), hw, fp16=False)
        f32 = first_frames(p32, s32)
        del p32, s32
        gc.collect()
        p16, s16 = build(official, device, max(o.sizes), hw, fp16=True)
        f16 = first_frames(p16, s16)
        return {"output": f"the first {len(f16)} frames of a stream, uint8 {o.portrait}²", **diff(f32, f16)}

    b.step("fp16_vs_fp32", agreement, needs_cuda=True, on_cuda=on_cuda)
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
    pipeline, persona = build(official, device, max(o.sizes), hw)
    b.out["precision"] = "fp16" if on_cuda else "fp32"
    runs = b.out["runs"] = []
    for batch in o.sizes:
        b.step("_run", lambda: stage_times(pipeline, persona, batch, device, o.warmup, o.repeats))
        r = b.out.pop("_run")
        if isinstance(r.get("render_ms_per_frame"), float):
            r["frames_per_s"] = round(1000 / r["render_ms_per_frame"], 1)
        runs.append(r)
        b.flush()
    b.step("first_call", lambda: first_frames_ms(pipeline, persona, device, o.repeats))

    def warm_render():
        carry = pipeline.start(persona, CONTROLS)
        _, carry = pipeline.render(persona, carry, speech(8), CONTROLS)
        return pipeline.render(persona, carry, speech(VRAM_BATCH), CONTROLS)[0]

    b.step("vram_peak", lambda: {"what": f"render of {VRAM_BATCH} frames, the stream warm",
                                 **peak_memory(warm_render, device)}, needs_cuda=True, on_cuda=on_cuda)

    def compiled():
        lp, mt = pipeline.liveportrait.networks, pipeline.musetalk.nets
        out = compiled_vs_eager(lambda: time_ms(warm_render, device, o.warmup, o.repeats) / VRAM_BATCH,
                                {"lp_warping": (lp, "warping"), "lp_generator": (lp, "generator"),
                                 "mt_unet": (mt, "unet")})
        return {"what": f"render ms a frame at batch {VRAM_BATCH}", **out}

    b.step("compile", compiled) if o.compile else b.out.update(compile={"skipped": "--no-compile"})


MODE_FNS = {"liveportrait": mode_liveportrait, "musetalk": mode_musetalk, "ditto": mode_ditto,
            "photoreal": mode_photoreal}


def run_mode(name: str, o: argparse.Namespace, seconds: float, partial: Path | None) -> dict:
    import torch

    device = torch.device(o.device)
    out = {"config": o.config, "device": o.device}
    b = Budget(seconds, out, partial)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 is the reference of the agreement figures
        torch.backends.cudnn.allow_tf32 = False
    b.step("_build_and_measure", lambda: MODE_FNS[name](o, b, device) or {})
    if out.get("_build_and_measure", {}).get("error"):
        out["error"] = out["_build_and_measure"]["error"]
        out["traceback"] = out["_build_and_measure"].get("traceback")
    out.pop("_build_and_measure", None)
    out["section_s"] = round(seconds - b.left(), 1)
    b.flush()
    return out


# ------------------------------------------------------------------ env, nvml, serving

def section_env(o: argparse.Namespace) -> dict:
    import torch

    on_cuda = o.device.startswith("cuda")
    out = {"device": o.device, "config": o.config, "torch": torch.__version__, "python": sys.version.split()[0],
           "cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads(),
           "compile": o.compile, "sizes": o.sizes}
    if on_cuda:
        props = torch.cuda.get_device_properties(torch.device(o.device))
        out.update(gpu=props.name, gpu_memory_bytes=int(props.total_memory), cuda=torch.version.cuda,
                   multiprocessors=props.multi_processor_count)
    with contextlib.suppress(Exception):
        out["commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True, timeout=5).stdout.strip()
    # The device tool's copy of the tree may have no .git: the bundle's commands name the commit.
    out["commit"] = out.get("commit") or os.environ.get("LOCKN_COMMIT")
    out["packages"] = package_versions()
    return out


# The packages whose versions explain a figure or a failure: on the device tool's machine some
# come from its image and some from the carried bundle (benchmarks/gpu_bundle.py).
REPORTED_PACKAGES = ("torch", "numpy", "ray", "pydantic", "fastapi", "av", "diffusers", "transformers",
                     "huggingface-hub", "onnxruntime", "opencv-python-headless", "grpcio", "protobuf")


def package_versions() -> dict:
    from importlib import metadata

    versions = {}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def section_nvml(o: argparse.Namespace, seconds: float) -> dict:
    import vram_nvml_check

    args = vram_nvml_check.build_parser().parse_args([
        # --leave-gib 2: NVML's total is ~0.5 GiB over what torch can allocate, and the neighbour
        # has its own CUDA context: a target 1 GiB under the total may never be reached.
        "--backend-gib", "4", "--llm-start-gib", "4", "--leave-gib", "2",
        "--grow-gib-per-s", str(o.nvml_grow_gib_per_s),
        "--timeout-s", str(max(5.0, seconds - 15.0))])
    return vram_nvml_check.run_check(args)


def section_vram(results: dict) -> dict:
    """Each mode's measured peak, and the rows the controller's profile file would hold for it."""
    from deployments.vram.profiles import ProfileKey, ProfileStore

    store, peaks = ProfileStore(), {}
    for mode in MODES:
        peak = results.get(mode, {}).get("vram_peak")
        if not isinstance(peak, dict) or "max_memory_allocated_bytes" not in peak:
            peaks[mode] = peak if isinstance(peak, dict) else {"skipped": "the mode's section did not measure it"}
            continue
        peaks[mode] = {k: v for k, v in peak.items() if k != "step_s"}
        if "profile_peak_bytes" in peak:
            resolution = 512 if mode in ("liveportrait", "photoreal", "ditto") else 256
            store.observe(ProfileKey(mode, resolution, VRAM_BATCH), peak["profile_peak_bytes"], time.time())
    return {"peak_by_mode": peaks,
            "profile_file_holds": "per (mode, resolution_px, batch): peak_bytes = CUDA context + "
                                  "max_memory_reserved + the non-torch memory NVML shows for the backend's "
                                  "PID (docs/vram.md); measurements only raise it",
            "profile_rows": store.as_dict() or {"skipped": "no NVML reading of a mode's process"}}


def batching_settings() -> tuple[list[int | None], str]:
    from deployments.config import BackendArgs

    if "batch_sessions" not in BackendArgs.model_fields:
        return [None], "not built"
    return [1, 4], "batch_sessions 1 (off) and 4"


def section_serving(o: argparse.Namespace, seconds: float, base: str | None = None) -> dict:
    """Sessions of speech through the graph at 25 fps: the most held with no frame a frame late.

    base: a running cluster's Serve address to deploy on (the graph tests' own cluster: a
    second cluster on 2 busy cores timed out starting); None: start one here and stop it after."""
    import asyncio
    import shutil

    try:
        import ray  # noqa: F401
    except ImportError as err:
        return {"skipped": f"Ray is not importable here ({err}): bring its wheels (docs/benchmarks.md)"}
    from ray import serve

    from tests.local_cluster import deploy_app, haproxy_launcher, start_local_serve

    deadline = time.monotonic() + seconds
    out: dict = {"modes": o.serving_modes, "counts": o.serving_counts, "speech_s": o.serving_speech_s}
    own_cluster = base is None
    try:
        haproxy_launcher()
        out["ingress"] = "haproxy"
    except RuntimeError:  # no HAProxy from Ray's wheel: Serve's own proxy
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "0"
        out["ingress"] = "serve-proxy"
    settings, out["batching"] = batching_settings()
    data_dir = tempfile.mkdtemp(prefix="lockn-gpu-acceptance-")
    base = start_local_serve(num_cpus=os.cpu_count() or 2) if own_cluster else base  # the GPU machine's cores
    out["runs"] = []
    try:
        from tests.graph_client import create_persona

        for batch_sessions in settings:
            backends = {}
            for mode in o.serving_modes:
                backend = {"num_gpus": o.serving_num_gpus, "num_cpus": 0.1, "chunk_frames": 5,
                           # A neural mode through the graph: its tiny seeded networks (official ones
                           # need the official files, which do not travel to the GPU machine).
                           "options": ({"size": 256, "work_ms_per_frame": o.serving_work_ms} if mode == "pattern"
                                       else tiny_options(mode, o.device))}
                if batch_sessions is not None:
                    backend["batch_sessions"] = batch_sessions
                backends[mode] = backend
            deploy_app(base, {"data_dir": data_dir, "enable_test_modes": True,
                              "limits": {"max_sessions": 64}, "vram": {"probe": "off"}, "backends": backends})
            persona = create_persona(base, save=True, size=256)
            for mode in o.serving_modes:
                for n in o.serving_counts:
                    row = {"mode": mode, "sessions": n, "batch_sessions": batch_sessions}
                    if time.monotonic() + o.serving_speech_s + 20 > deadline:
                        row["skipped"] = f"section budget of {seconds:.0f} s used"
                    else:
                        try:
                            row.update(asyncio.run(asyncio.wait_for(
                                speaking_sessions(base, persona, mode, n, o.serving_speech_s),
                                max(5.0, deadline - time.monotonic()))))
                        except Exception as err:
                            row["error"] = f"{type(err).__name__}: {err}"
                    out["runs"].append(row)
    finally:
        if own_cluster:
            with contextlib.suppress(Exception):
                serve.shutdown()
            with contextlib.suppress(Exception):
                import ray as _ray

                _ray.shutdown()
        shutil.rmtree(data_dir, ignore_errors=True)
    held = {}
    for row in out["runs"]:
        if row.get("held_at_25fps"):
            key = f"{row['mode']}/batch_sessions={row['batch_sessions']}"
            held[key] = max(held.get(key, 0), row["sessions"])
    out["most_sessions_held_at_25fps"] = held
    return out


def tiny_options(mode: str, device: str) -> dict:
    """A neural mode's backend options for the serving section: its tiny seeded networks, on the
    run's device (MuseTalk's tiny preset is pinned to the CPU unless told otherwise)."""
    if mode == "musetalk":
        return {"config": {"preset": "tiny", "device": device}}
    return {"config": "tiny"}


async def speaking_sessions(base: str, persona: str, mode: str, n: int, speech_s: float) -> dict:
    """n sessions of `mode`, all speaking at once (speech sent as a TTS does): each speech frame's
    lateness against the 25 fps clock from that session's first speech frame, and frames skipped."""
    import asyncio

    from lockn_bod_client import LockNBodClient, VideoFrame
    from serving_overhead import send_speech, until
    from tests.streaming import coded_pcm16, frame_info

    async with LockNBodClient(base) as client:
        sessions = [(await client.create_session(persona, mode))["session_id"] for _ in range(n)]
        try:
            streams = [await client.connect(s) for s in sessions]
            t_ready = time.time()
            await asyncio.gather(*(until(s, lambda m, s=s: s.mode == mode, 300) for s in streams))
            ready_s = time.time() - t_ready

            async def speak(stream) -> list:
                frames: list[VideoFrame] = []
                t_send = time.time()
                sending = asyncio.create_task(send_speech(stream, coded_pcm16(int(speech_s * 25)), "burst", t_send))
                await until(stream, lambda m: getattr(m, "type", None) == "speech_ended", speech_s + 60, frames)
                await sending
                return [f for f in frames if mode != "pattern" or frame_info(f.jpeg)[0]]

            results = await asyncio.gather(*(speak(s) for s in streams))
            for stream in streams:
                await stream.close()
        finally:
            for s in sessions:
                with contextlib.suppress(Exception):
                    await client.delete_session(s)
    late_ms, skipped, counted = 0.0, 0, 0
    for frames in results:
        if not frames:
            continue
        p0, t0 = frames[0].pts, frames[0].t_recv
        late_ms = max(late_ms, max(1000 * ((f.t_recv - t0) - (f.pts - p0) / 25) for f in frames))
        skipped += sum(b.pts - a.pts - 1 for a, b in zip(frames, frames[1:]))
        counted += len(frames)
    return {"frames": counted, "max_late_ms": round(late_ms, 1), "skipped_frames": skipped,
            "backend_ready_s": round(ready_s, 1),
            "held_at_25fps": counted > 0 and late_ms <= 40 and skipped == 0}


# ------------------------------------------------------------------ the run

def child_command(section: str, o: argparse.Namespace, seconds: float, partial: Path) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", section, "--child-seconds", str(seconds),
            "--child-partial", str(partial)]
    return argv + o.passthrough


def run_isolated(section: str, o: argparse.Namespace, seconds: float) -> dict:
    """The section in a process of its own, killed KILL_GRACE_S after its budget; what it
    measured until then is kept (it writes its partial results after every step)."""
    with tempfile.TemporaryDirectory(prefix="gpu-acceptance-") as tmp:
        partial = Path(tmp) / "partial.json"
        log = Path(tmp) / "log"
        with open(log, "w") as logf:
            proc = subprocess.Popen(child_command(section, o, seconds, partial), stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=seconds + KILL_GRACE_S)
                killed = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                rc, killed = proc.wait(), True
        out = json.loads(partial.read_text()) if partial.exists() else {}
        if killed:
            out["killed"] = f"still running {seconds + KILL_GRACE_S:.0f} s after its start: killed (budget)"
        if rc != 0 and not killed:
            out.setdefault("error", f"exited with {rc}")
        if rc != 0:
            out["log_tail"] = log.read_text(errors="replace")[-2000:].splitlines()[-15:]
        return out


def run_child(o: argparse.Namespace) -> int:
    partial = Path(o.child_partial)
    if o.child in MODES:
        run_mode(o.child, o, o.child_seconds, partial)
        return 0
    out: dict = {}
    b = Budget(o.child_seconds, out, partial)
    fn = {"nvml": lambda: section_nvml(o, o.child_seconds), "serving": lambda: section_serving(o, o.child_seconds)}
    b.step("result", fn[o.child])
    partial.write_text(json.dumps(out["result"], default=str))
    return 0


def reusable_sections(path: Path) -> dict:
    """The sections an earlier run's JSON measured (`--reuse`): every one that was not skipped,
    failed or killed. The device tool's machine runs the acceptance in two calls (its carry
    limit splits the wheels in two, docs/benchmarks.md): the second reuses the first's sections."""
    if not path.exists():
        raise SystemExit(f"--reuse {path}: no such file (on the device tool's machine: the first call's "
                         "machine was given back before this call; run both calls again)")
    earlier = json.loads(path.read_text())
    return {name: result for name, result in earlier.items()
            if name in SECTIONS and isinstance(result, dict) and not {"skipped", "error", "killed"} & set(result)}


def finite_or_none(value):
    """JSON with NaN and infinities as null (a strict parser rejects them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def parse(argv: list[str] | None) -> argparse.Namespace:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--config", choices=("official", "tiny"), default=None,
                   help="network widths: official (default on CUDA) or tiny (the dry run)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="eager against torch.compile of the per-frame networks (default: on on CUDA)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="batch sizes (default 1 8 16)")
    p.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections not run (recorded)")
    p.add_argument("--budget-scale", type=float, default=1.0, help="every section's budget times this")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="each section in a process of its own (default: on on CUDA)")
    p.add_argument("--portrait", type=int, default=None, help="portrait side for paste-back (default 720; dry 256)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--ditto-seconds", type=float, default=None, help="speech through Ditto's stream")
    p.add_argument("--nvml-grow-gib-per-s", type=float, default=8.0)
    p.add_argument("--serving-modes", nargs="+", default=None,
                   help="modes served in the serving section (default: pattern musetalk on CUDA, pattern on CPU)")
    p.add_argument("--serving-counts", type=int, nargs="+", default=None, help="concurrent sessions tried")
    p.add_argument("--serving-speech-s", type=float, default=None, help="speech each session says")
    p.add_argument("--serving-work-ms", type=float, default=2.0, help="the pattern backend's stand-in cost a frame")
    p.add_argument("--serving-num-gpus", type=float, default=0.25, help="each backend's fractional num_gpus")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--reuse", type=Path, default=None,
                   help="an earlier run's JSON: its measured sections are kept, the others run")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-seconds", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-partial", default=None, help=argparse.SUPPRESS)
    o = p.parse_args(argv)
    on_cuda = o.device.startswith("cuda")
    o.config = o.config or ("official" if on_cuda else "tiny")
    o.compile = on_cuda if o.compile is None else o.compile
    o.isolate = on_cuda if o.isolate is None else o.isolate
    o.sizes = o.sizes or ([1, 8, 16] if on_cuda else [1, 2])
    o.portrait = o.portrait or (720 if on_cuda else 256)
    o.warmup = o.warmup if o.warmup is not None else (3 if on_cuda else 1)
    o.repeats = o.repeats if o.repeats is not None else (10 if on_cuda else 1)
    o.ditto_seconds = o.ditto_seconds if o.ditto_seconds is not None else (4.0 if on_cuda else 1.2)
    o.serving_modes = o.serving_modes or (["pattern", "musetalk"] if on_cuda else ["pattern"])
    # Both batching settings must fit the section's budget: 4 and 8 sessions answer the target (>= 4).
    o.serving_counts = o.serving_counts or ([4, 8] if on_cuda else [1, 2])
    o.serving_speech_s = o.serving_speech_s or (4.0 if on_cuda else 2.0)
    # What a section's own process is given (the resolved settings, so parent and child agree).
    o.passthrough = ["--device", o.device, "--config", o.config, "--compile" if o.compile else "--no-compile",
                     "--sizes", *map(str, o.sizes), "--portrait", str(o.portrait), "--warmup", str(o.warmup),
                     "--repeats", str(o.repeats), "--ditto-seconds", str(o.ditto_seconds),
                     "--nvml-grow-gib-per-s", str(o.nvml_grow_gib_per_s), "--serving-modes", *o.serving_modes,
                     "--serving-counts", *map(str, o.serving_counts), "--serving-speech-s", str(o.serving_speech_s),
                     "--serving-work-ms", str(o.serving_work_ms), "--serving-num-gpus", str(o.serving_num_gpus)]
    return o


def main(argv: list[str] | None = None) -> int:
    o = parse(argv)
    if o.child:
        return run_child(o)
    t0 = time.monotonic()
    on_cuda = o.device.startswith("cuda")
    budgets = {k: v * o.budget_scale for k, v in (BUDGET_CUDA if on_cuda else BUDGET_CPU).items()}
    report: dict = {"benchmark": "gpu_acceptance", "budgets_s": budgets}
    earlier = reusable_sections(o.reuse) if o.reuse else {}
    if o.reuse:
        report["reused"] = {"from": str(o.reuse), "sections": sorted(earlier)}
    for section in SECTIONS:
        t_section = time.monotonic()
        if section in earlier:
            report[section] = earlier[section]
            continue
        if section in o.skip:
            report[section] = {"skipped": "--skip"}
            continue
        try:
            if section == "env":
                report[section] = section_env(o)
            elif section == "vram":
                report[section] = section_vram(report)
            elif section in ("nvml",) and not on_cuda:
                report[section] = {"skipped": "no CUDA"}
            elif o.isolate or section == "serving":  # Ray's cluster always in a process of its own
                report[section] = run_isolated(section, o, budgets[section])
            elif section in MODES:
                report[section] = run_mode(section, o, budgets[section], None)
            else:
                report[section] = section_nvml(o, budgets[section])
        except Exception as err:  # recorded; the next section runs
            report[section] = {"error": f"{type(err).__name__}: {err}",
                               "traceback": traceback.format_exc(limit=4).splitlines()[-6:]}
        if isinstance(report[section], dict):
            report[section].setdefault("wall_s", round(time.monotonic() - t_section, 1))
    report["total_s"] = round(time.monotonic() - t0, 1)
    text = json.dumps(finite_or_none(report), indent=1, default=str)
    if o.out:
        o.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
