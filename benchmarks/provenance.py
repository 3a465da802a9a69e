"""What the per-frame invisible watermark (models/provenance/watermark.py) costs, and how visible it is.

Prints JSON:
- embed: per frame size (256², 512², 720²), the process CPU ms to mark one frame (median of
  several runs of many frames each, after a warm-up that builds the per-size cache) and the
  PSNR (dB) of the marked frame against the original;
- read_25_frames_512: wall and CPU ms to read 25 marked 512² frames (one second at 25 fps),
  with the gain/offset search, and whether the tag came back;
- serving (with `--serving`): benchmarks/serving_overhead.py run with marking on and off,
  alternately, in this one run (pattern backend, 256² frames, server pacing): each run's
  overhead ratio (graph CPU a frame over in-process), and on/off, the cost of marking as
  served;
- sign_ms: C2PA signing (ES256, no thumbnail, no timestamp) of a 10 s 512² MP4 and of one
  512² JPEG, and reading one back with its validation (median of a few);
- machine: cpu count, platform, python and numpy versions, load average.

Frames are synthetic but natural-ish (gradients, blurred shapes, mild noise).

    python benchmarks/provenance.py [--serving] [--serving-runs 2]
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.provenance import FrameMarker, session_tag  # noqa: E402

SIZES = (256, 512, 720)
RUNS = 7  # medians over this many runs
FRAMES_PER_RUN = 50


def natural_frame(side: int, seed: int) -> np.ndarray:
    """side×side×3 uint8: colour gradients, a few soft discs, noise σ 3 (numpy only)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    image = np.stack([40 + 150 * x + 25 * np.sin(7 * y), 60 + 120 * y, 200 - 110 * (x + y) / 2], axis=-1)
    for _ in range(5):
        cy, cx, radius = rng.random(3) * [1, 1, 0.25]
        inside = np.clip((radius - np.hypot(y - cy, x - cx)) * side / 2, 0, 1)[..., None]  # soft edge
        image = image * (1 - inside) + rng.integers(0, 256, 3) * inside
    image += rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return round(float(10 * np.log10(255**2 / mse)), 2)


def embed_cost(marker: FrameMarker, side: int, tag: int) -> dict:
    frame = natural_frame(side, seed=side)
    marked = marker.embed(frame, tag)  # warm-up: builds the layout and scratch buffers for this size
    per_run = []
    for _ in range(RUNS):
        started = time.process_time()
        for _ in range(FRAMES_PER_RUN):
            marker.embed(frame, tag)
        per_run.append((time.process_time() - started) * 1000 / FRAMES_PER_RUN)
    return {"cpu_ms_median": round(float(np.median(per_run)), 3),
            "cpu_ms_min": round(min(per_run), 3), "cpu_ms_max": round(max(per_run), 3),
            "psnr_db": psnr(frame, marked)}


def read_cost(marker: FrameMarker, tag: int) -> dict:
    frames = [marker.embed(natural_frame(512, seed=seed), tag) for seed in range(25)]
    marker.read(frames[:1])  # warm-up
    walls, cpus = [], []
    for _ in range(3):
        wall, cpu = time.perf_counter(), time.process_time()
        reading = marker.read(frames)
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return {"wall_ms_median": round(float(np.median(walls)), 1), "cpu_ms_median": round(float(np.median(cpus)), 1),
            "tag_ok": reading.tag == tag, "confidence": reading.confidence}


def sign_cost() -> dict:
    """C2PA signing and reading, ms (median of 5), with throwaway keys."""
    import io
    import tempfile

    from PIL import Image

    from deployments.transports.encode import encode_mp4
    from models.provenance import manifest
    from models.provenance.keys import ensure_keys

    frames = np.stack([natural_frame(512, seed) for seed in range(10)] * 25)  # 10 s at 25 fps
    mp4 = encode_mp4(frames, np.zeros(160000, np.float32))
    buf = io.BytesIO()
    Image.fromarray(frames[0]).save(buf, "JPEG", quality=80)
    with tempfile.TemporaryDirectory() as folder:
        keys = ensure_keys(Path(folder))
        payload = {"watermark_tag": "00000000000000", "mode": "benchmark"}

        def ms(fn) -> float:
            times = []
            for _ in range(5):
                start = time.perf_counter()
                fn()
                times.append(1000 * (time.perf_counter() - start))
            return round(sorted(times)[2], 2)

        signed = manifest.sign(mp4, "video/mp4", keys, payload).data
        return {"mp4_10s_512_bytes": len(mp4), "mp4_added_bytes": len(signed) - len(mp4),
                "sign_mp4_10s_512": ms(lambda: manifest.sign(mp4, "video/mp4", keys, payload)),
                "sign_jpeg_512": ms(lambda: manifest.sign(buf.getvalue(), "image/jpeg", keys, payload)),
                "read_mp4": ms(lambda: manifest.read(signed, "video/mp4", keys.ca_pem))}


def serving(runs: int) -> dict:
    """serving_overhead.py with provenance on and off, alternately (each starts its own cluster)."""
    import statistics
    import subprocess

    script = str(Path(__file__).resolve().parent / "serving_overhead.py")
    ratios: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(runs):
        for state in ("on", "off"):
            out = subprocess.run([sys.executable, script, "--provenance", state, "--rounds", "3", "--seconds", "20",
                                  "--idle-seconds", "10", "--still-counts", "4", "--still-seconds", "3"],
                                 capture_output=True, text=True, check=True).stdout
            ratios[state].append(json.loads(out[out.index("{"):])["overhead_ratio"])
    on, off = statistics.median(ratios["on"]), statistics.median(ratios["off"])
    return {"overhead_ratio_on": ratios["on"], "overhead_ratio_off": ratios["off"],
            "median_on_over_off": round(on / off, 4)}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serving", action="store_true", help="also the serving overhead, marking on and off")
    parser.add_argument("--serving-runs", type=int, default=2)
    args = parser.parse_args()
    marker = FrameMarker(b"benchmark secret")
    tag = session_tag(b"benchmark ledger", "session-1")
    report = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor(), "python": platform.python_version(),
                    "numpy": np.__version__, "load_average_1m": round(os.getloadavg()[0], 2)},
        "step": marker.step,
        "embed": {f"{side}x{side}": embed_cost(marker, side, tag) for side in SIZES},
        "read_25_frames_512": read_cost(marker, tag),
        "sign_ms": sign_cost(),
    }
    if args.serving:
        report["serving"] = serving(args.serving_runs)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
