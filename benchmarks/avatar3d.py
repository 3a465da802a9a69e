"""What server-side lip sync (models/visemes) costs and how well it times visemes, on espeak-ng speech.

Prints JSON:
- cpu_per_session: process CPU to track ~10 s of speech fed in 200 ms chunks in real-time
  order (no sleeping: CPU seconds per audio second), as % of one core;
- sessions_on_2_cores: how many speaking sessions' trackers fit in 2 cores keeping 30 %
  headroom, from cpu_per_session; `verified` runs that many trackers in 2 processes
  (round-robin, 200 ms chunks, unpaced) and reports the wall time over the audio time
  (<= 1: they keep up with real time) and each process's CPU over the audio time (the
  wall time also counts other load on a shared machine: see machine.load_average_1m);
- first_cue: fed in 20 ms and in 200 ms chunks, the audio time (ms) at which the first cue,
  and the first non-silent cue, became final, with the CPU ms of the feeds up to then;
- timing_error_ms: per sentence, each viseme boundary of the forced alignment of its known
  text against the nearest boundary of the cues recognised from raw PCM: median and p90;
- hold_back_sweep: for several hold-backs, the share of the time axis where the streamed
  cues have the viseme of the whole-utterance decode (which nothing finalises early):
  how DEFAULT_HOLD_BACK_MS was chosen;
- whole_sessions: the same through avatar3d sessions themselves (deployments/session/
  avatar3d.py: tracker, loop, audio and cue messages to a viewer), `sessions` of them in
  one event loop, each fed speech in real time in 20 ms chunks: process CPU over the wall
  time per session (% of one core), and the wall ms from each session's first audio to
  its first `visemes` message (median and worst);
- machine: cpu count, platform, python and pocketsphinx versions.

    python benchmarks/avatar3d.py [--sessions N]   # N overrides the count verified on 2 cores
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from math import gcd
from pathlib import Path

import numpy as np
import scipy.io.wavfile
import scipy.signal

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.visemes import DecoderPool, VisemeTracker  # noqa: E402

SENTENCES = (
    "The weather today is cold and windy, with rain expected in the evening.",
    "She sells sea shells by the sea shore.",
    "Please remember to bring your umbrella when you go outside.",
    "Peter Piper picked a peck of pickled peppers.",
    "We will meet at the station at nine o'clock tomorrow morning.",
    "Artificial intelligence is changing the way people work and live.",
)
VOICES = ("en-us", "en+f3")  # two voices: the sweep and timing error see more than one speaker
RATE = 16000
CHUNK_200MS = RATE // 5
HEADROOM = 0.3  # of the 2 cores, left for the session's own work (audio, WebSocket, Python)


def espeak_16k(text: str, voice: str, folder: Path) -> np.ndarray:
    """espeak-ng speech, float32 at 16 kHz, shape [n]."""
    wav = folder / "speech.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True)
    rate, samples = scipy.io.wavfile.read(wav)
    common = gcd(RATE, rate)
    return scipy.signal.resample_poly(samples.astype(np.float32) / 32768.0, RATE // common,
                                      rate // common).astype(np.float32)


def track(pool: DecoderPool, audio: np.ndarray, chunk: int, **options) -> list:
    tracker = VisemeTracker(pool, **options)
    cues = []
    for start in range(0, len(audio), chunk):
        cues += tracker.feed(audio[start:start + chunk])
    cues += tracker.finish()
    tracker.close()
    return cues


def aligned(pool: DecoderPool, audio: np.ndarray, text: str) -> tuple[list, bool]:
    """Cues from forced alignment of `text`, and whether alignment (not recognition) made them."""
    tracker = VisemeTracker(pool)
    tracker.set_text(text)
    tracker.feed(audio)
    cues = tracker.finish()
    tracker.close()
    fallback = track(pool, audio, len(audio), hold_back_ms=10**9)  # what recognition alone gives
    return cues, cues != fallback


def cpu_per_session(pool: DecoderPool, paragraph: np.ndarray) -> dict:
    track(pool, paragraph[:RATE], CHUNK_200MS)  # warm caches
    runs = []
    for _ in range(3):
        started = time.process_time()
        track(pool, paragraph, CHUNK_200MS)
        runs.append(time.process_time() - started)
    audio_s = len(paragraph) / RATE
    best = min(runs)
    return {"audio_s": round(audio_s, 2), "cpu_s": round(best, 3), "percent_of_one_core": round(100 * best / audio_s, 2)}


def _worker(n_trackers: int, paragraph: np.ndarray, queue) -> None:
    """One process: n_trackers sessions, fed round-robin chunk by chunk; reports its wall time."""
    pool = DecoderPool(size=n_trackers)
    trackers = [VisemeTracker(pool) for _ in range(n_trackers)]
    started, cpu_started = time.perf_counter(), time.process_time()
    for start in range(0, len(paragraph), CHUNK_200MS):
        for tracker in trackers:
            tracker.feed(paragraph[start:start + CHUNK_200MS])
    for tracker in trackers:
        tracker.finish()
    queue.put((time.perf_counter() - started, time.process_time() - cpu_started))


def verify_on_2_cores(paragraph: np.ndarray, sessions: int) -> dict:
    """Run `sessions` trackers split over 2 processes; wall time over audio time (<= 1 keeps up)."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    halves = [sessions - sessions // 2, sessions // 2]
    workers = [context.Process(target=_worker, args=(n, paragraph, queue)) for n in halves if n]
    for worker in workers:
        worker.start()
    wall_and_cpu = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    audio_s = len(paragraph) / RATE
    return {"sessions": sessions, "processes": len(workers),
            "wall_over_audio": round(max(wall for wall, _ in wall_and_cpu) / audio_s, 3),
            "cpu_over_audio_per_process": [round(cpu / audio_s, 3) for _, cpu in wall_and_cpu]}


def first_cue(pool: DecoderPool, speech: np.ndarray, chunk: int) -> dict:
    """When the first cues become final, feeding speech that starts at once (no lead-in)."""
    tracker = VisemeTracker(pool)
    result, cpu = {}, 0.0
    for start in range(0, len(speech), chunk):
        before = time.process_time()
        cues = tracker.feed(speech[start:start + chunk])
        cpu += time.process_time() - before
        fed_ms = (start + len(speech[start:start + chunk])) * 1000 // RATE
        if cues and "first_cue_ms" not in result:
            result.update(first_cue_ms=fed_ms, first_cue_cpu_ms=round(cpu * 1000, 2))
        if any(cue.viseme != "sil" for cue in cues):
            result.update(first_speech_cue_ms=fed_ms, first_speech_cue_cpu_ms=round(cpu * 1000, 2))
            break
    tracker.finish()
    tracker.close()
    return result


def boundaries(cues: list) -> np.ndarray:
    return np.array([cue.start_ms for cue in cues[1:]])  # ms where the viseme changes, shape [n]


def timing_error(pool: DecoderPool, sentences: list[tuple[str, np.ndarray]]) -> dict:
    distances, n_aligned = [], 0
    for text, audio in sentences:
        reference, ok = aligned(pool, audio, text)
        if not ok:
            continue  # alignment failed: no reference for this sentence
        n_aligned += 1
        recognised = boundaries(track(pool, audio, CHUNK_200MS))
        for boundary in boundaries(reference):
            distances.append(int(np.abs(recognised - boundary).min()))
    return {"sentences": len(sentences), "aligned": n_aligned, "boundaries": len(distances),
            "median_ms": float(np.median(distances)), "p90_ms": float(np.percentile(distances, 90))}


def viseme_at(cues: list, every_ms: int) -> list[str]:
    return [cue.viseme for cue in cues for _ in range(0, cue.duration_ms, every_ms)]


def hold_back_sweep(pool: DecoderPool, sentences: list[tuple[str, np.ndarray]]) -> dict:
    """Share of 1 ms steps where streamed cues (20 ms chunks) match the whole-utterance decode."""
    sweep = {}
    offline = [viseme_at(track(pool, audio, len(audio), hold_back_ms=10**9), 1) for _, audio in sentences]
    for hold_back in (50, 100, 150, 200, 300):
        same = total = 0
        for (_, audio), reference in zip(sentences, offline):
            streamed = viseme_at(track(pool, audio, RATE // 50, hold_back_ms=hold_back), 1)
            same += sum(a == b for a, b in zip(streamed, reference))
            total += len(reference)
        sweep[str(hold_back)] = round(same / total, 4)
    return sweep


def whole_sessions(paragraph: np.ndarray, sessions: int, chunk_ms: int = 20) -> dict:
    """avatar3d sessions fed in real time; CPU per session and first-cue latency (wall ms)."""
    import asyncio

    from deployments.api.protocol import EventItem
    from deployments.session.avatar3d import Avatar3dSession
    from deployments.session.base import SessionConfig
    from models.base import Controls

    chunk = RATE * chunk_ms // 1000
    pool = DecoderPool(size=sessions)

    async def one(index: int) -> float:
        session = Avatar3dSession(f"h.benchmark{index:04d}xxxxxxxx", "default", RATE, Controls(), SessionConfig(),
                                  VisemeTracker(pool), "/v1/avatars/default/glb")
        await session.start()
        viewer = session.subscribe()
        first_audio_at, first_cue_at = time.perf_counter(), None

        async def drain():
            nonlocal first_cue_at
            while True:
                item = await viewer.queue.get()
                if first_cue_at is None and isinstance(item, EventItem) and item.event.type == "visemes":
                    first_cue_at = time.perf_counter()

        drainer = asyncio.create_task(drain())
        started = time.perf_counter()
        for i, start in enumerate(range(0, len(paragraph), chunk)):
            session.push_audio_16k(paragraph[start:start + chunk])
            await asyncio.sleep(max(0.0, started + (i + 1) * chunk / RATE - time.perf_counter()))
        session.end_of_speech()
        await asyncio.sleep(1.5)  # the tail goes out up to 1 s behind the input
        drainer.cancel()
        await session.close()
        return 1000 * (first_cue_at - first_audio_at)

    async def run() -> list[float]:
        return await asyncio.gather(*(one(i) for i in range(sessions)))

    cpu0, wall0 = time.process_time(), time.perf_counter()
    latencies = asyncio.run(run())
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"sessions": sessions, "chunk_ms": chunk_ms, "audio_s": round(len(paragraph) / RATE, 2),
            "percent_of_one_core_per_session": round(100 * cpu_s / wall_s / sessions, 2),
            "first_cue_ms": {"median": round(float(np.median(latencies)), 1), "max": round(max(latencies), 1)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=None, help="sessions to verify on 2 cores")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is needed to synthesise the test speech")
    pad = np.zeros(RATE * 3 // 10, np.float32)
    with tempfile.TemporaryDirectory() as folder:
        plain = {voice: [espeak_16k(text, voice, Path(folder)) for text in SENTENCES] for voice in VOICES}
    sentences = [(text, np.concatenate([pad, audio, pad])) for voice in VOICES
                 for text, audio in zip(SENTENCES, plain[voice])]
    paragraph = np.concatenate([pad] + [np.concatenate([audio, pad]) for audio in plain[VOICES[0]][:4]])

    started = time.perf_counter()
    pool = DecoderPool(size=1)
    created_s = time.perf_counter() - started
    cpu = cpu_per_session(pool, paragraph)
    fits = int(2 * (1 - HEADROOM) * 100 / cpu["percent_of_one_core"])
    report = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor(), "python": platform.python_version(),
                    "pocketsphinx": importlib.metadata.version("pocketsphinx"),
                    "load_average_1m": round(os.getloadavg()[0], 2)},
        "decoder_create_s": round(created_s, 3),
        "cpu_per_session": cpu,
        "sessions_on_2_cores": {"headroom": HEADROOM, "fit": fits,
                                "verified": verify_on_2_cores(paragraph, args.sessions or fits)},
        "first_cue": {f"chunk_{ms}ms": first_cue(pool, plain[VOICES[0]][0], RATE * ms // 1000) for ms in (20, 200)},
        "timing_error_ms": timing_error(pool, sentences),
        "hold_back_sweep": hold_back_sweep(pool, sentences),
        "whole_sessions": whole_sessions(paragraph, sessions=4),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
