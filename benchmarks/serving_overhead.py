"""What the serving graph costs: one session through Ray Serve against the same pipeline in-process.

Prints JSON:
- in_process: the pattern pipeline (with a stand-in render cost per frame) called
  directly, render + JPEG, unpaced: frames/s, CPU ms per frame, first-chunk latency;
- graph: a session through Router -> SessionHost -> Backend deployment over a
  real WebSocket client, paced at 25 fps (by the Router, or with `--pacing client`
  by the client from the frames' due times): CPU ms per speech frame over every
  process of the cluster, first speech frame latency after the first audio chunk;
- overhead_ratio: graph CPU per frame, minus Ray's own background (the cluster with
  every replica of the path up and no session open, read before and after each round
  of speech and averaged), over in-process CPU per frame (run before and after the
  graph, averaged): the median of `--rounds` sessions of speech. Each round's is in
  overhead_ratio_by_round, all rounds' frames together in overhead_ratio_pooled. A
  round's off_path_cpu_ms_per_frame (processes no frame passes through, beyond their
  background) shows whether the background held still over it: the median keeps a
  round where it did not (a burst of Ray's housekeeping) from deciding the figure.
  overhead_ratio_mean and overhead_ratio_sem are the rounds' mean and its standard
  error: with many rounds, the cost with one round's spread averaged out. Every
  frame's trip (backend -> host -> Router -> HAProxy -> WebSocket) counts: this is
  what serving a frame costs. `--ingress serve-proxy` puts Serve's Python
  HTTP proxy where HAProxy is (the README's server command uses HAProxy);
- overhead_ratio_cold_background: the same, minus the background before the backend's
  replica was started: its idle cost (Ray's and Serve's housekeeping, ~8 ms of CPU a
  second) then counts against this one session's frames;
- speech_over_idle_ratio: the same minus the session idling instead. Idle frames
  flow through the graph at 25 fps too and speech frames replace them, so this
  leaves out the transport and shows only what speech adds (audio in, the speech
  render path): not the cost of serving, a check on the speech path;
- still_sessions: the largest number of concurrent still-mode sessions held at
  25 fps with no frame later than one frame interval.

    python benchmarks/serving_overhead.py [--seconds 30] [--rounds 5] [--idle-seconds 20] [--work-ms 8] [--chunk-frames 5]
        [--pacing client] [--max-chunks-per-call N] [--feed burst|realtime] [--ingress haproxy|serve-proxy]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployments.transports.encode import JpegEncoder  # noqa: E402
from models.base import SAMPLES_PER_FRAME, Controls, PersonaMedia  # noqa: E402
from models.testing import PatternPipeline  # noqa: E402
from lockn_bod_client import LockNBodClient, SessionStream, VideoFrame  # noqa: E402
from tests.graph_client import create_persona  # noqa: E402
from tests.streaming import coded_pcm16, frame_info  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
SETTLE_S = 2.0  # after a session is deleted, before the cluster's background is read
# The processes a frame passes through; every other one (Serve's controller, GCS, raylet,
# dashboard) only keeps Ray running, and its CPU over a round beyond its background is drift.
FRAME_PATH = ("ServeReplica:lockn-bod:Router", "ServeReplica:lockn-bod:SessionHost",
              "ServeReplica:lockn-bod:Backend-", "haproxy")


def cluster_cpu_by_process() -> dict[str, float]:
    """CPU seconds so far of each process of the Ray cluster this benchmark started, by title."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            title = (stat.parent / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        stats[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK, title)
    ours, frontier = set(), {os.getpid()}
    while frontier:  # walk the process tree down from this process (not this client itself)
        frontier = {pid for pid, (ppid, _, _) in stats.items() if ppid in frontier} - ours
        ours |= frontier
    by_title: dict[str, float] = {}
    for pid in ours:
        _, cpu, title = stats[pid]
        name = title.split(" ")[0].rsplit("/", 1)[-1]
        if name.startswith("ray::"):  # an actor's title also names the task it runs now
            name = name.split(".")[0]
        by_title[name] = by_title.get(name, 0.0) + cpu
    return by_title


def cluster_cpu_s() -> float:
    return sum(cluster_cpu_by_process().values())


def in_process(seconds: float, work_ms: float, chunk_frames: int, size: int) -> dict:
    pipeline = PatternPipeline(size=size, work_ms_per_frame=work_ms)
    persona = pipeline.prepare(PersonaMedia([np.zeros((size, size, 3), np.uint8)]))
    carry = pipeline.start(persona, Controls())
    encoder = JpegEncoder()
    audio = coded_pcm16(int(seconds * 25)).astype(np.float32) / 32768
    step = chunk_frames * SAMPLES_PER_FRAME
    cpu0, t0, first = time.process_time(), time.perf_counter(), None
    n = 0
    for start in range(0, len(audio), step):
        frames, carry = pipeline.render(persona, carry, audio[start:start + step], Controls())
        encoder.encode_batch(frames)
        n += len(frames)
        first = first or time.perf_counter() - t0
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"frames": n, "fps": n / wall, "cpu_ms_per_frame": 1000 * cpu / n, "first_chunk_latency_ms": 1000 * first}


def in_process_mean(before: dict, after: dict) -> dict:
    """The in-process baseline, run before and after the graph's rounds."""
    mean = {k: (before[k] + after[k]) / 2 for k in ("fps", "cpu_ms_per_frame", "first_chunk_latency_ms")}
    return {"frames": before["frames"], **mean, "cpu_ms_per_frame_before_after": [before["cpu_ms_per_frame"],
                                                                                 after["cpu_ms_per_frame"]]}


async def idling_cpu_per_s_by_process(seconds: float) -> dict[str, float]:
    before, t0 = cluster_cpu_by_process(), time.time()
    await asyncio.sleep(seconds)
    after, wall = cluster_cpu_by_process(), time.time() - t0
    return {k: (v - before.get(k, 0.0)) / wall for k, v in after.items()}


async def idling_cpu_per_s(seconds: float) -> float:
    return sum((await idling_cpu_per_s_by_process(seconds)).values())


async def until(stream: SessionStream, done, timeout_s: float, frames: list | None = None) -> None:
    """Read the stream until `done(message)`; video frames go into `frames`."""
    async def read():
        while True:
            message = await stream.recv()
            if frames is not None and isinstance(message, VideoFrame):
                frames.append(message)
            if done(message):
                return
    await asyncio.wait_for(read(), timeout_s)


async def warm_up_backend(base: str, persona: str) -> None:
    """One session opened and closed: the backend replica starts and stays up (Serve's
    downscale delay is 30 s), so the next background reading has every replica of the path."""
    async with LockNBodClient(base) as client:
        session_id = (await client.create_session(persona, "pattern"))["session_id"]
        async with client.connect(session_id) as stream:
            await until(stream, lambda m: stream.mode == "pattern", 120)
        await client.delete_session(session_id)
    await asyncio.sleep(SETTLE_S)


async def graph_rounds(base: str, persona: str, args) -> dict:
    """`args.rounds` sessions of speech, each between two readings of the background.

    Ray's background (no session open, every replica of the path up) is ~5 ms of CPU a
    frame and drifts by 10-20 % within a minute, as much as the whole serving cost: each
    round subtracts the mean of the readings just before and just after it (main() takes
    the median of the rounds' ratios; their spread shows how far one round can be trusted).
    """
    cold_background_cpu_per_s = await idling_cpu_per_s(args.idle_seconds)  # no backend replica yet
    await warm_up_backend(base, persona)
    # Each reading ends within Serve's downscale delay (30 s) of the last call: the backend stays up.
    idle_s = min(args.idle_seconds, 25.0)
    backgrounds = [await idling_cpu_per_s_by_process(idle_s)]
    speeches = []
    for _ in range(args.rounds):
        speeches.append(await speech_round(base, persona, args.seconds, args.pacing, args.feed, idle_s))
        backgrounds.append(await idling_cpu_per_s_by_process(idle_s))
    rounds = [round_figures(speech, backgrounds[i], backgrounds[i + 1], cold_background_cpu_per_s,
                            speeches[min(i + 1, len(speeches) - 1)]["idle_cpu_per_s"])
              for i, speech in enumerate(speeches)]
    frames = sum(r["frames"] for r in rounds)

    def pooled(key: str) -> float:  # CPU ms a frame over every round's frames
        return sum(r[key] * r["frames"] for r in rounds) / max(1, frames)

    return {
        "frames": frames, "fps": min(r["fps"] for r in rounds),
        "cpu_ms_per_frame": pooled("cpu_ms_per_frame"),
        "cpu_ms_per_frame_cold_background": pooled("cpu_ms_per_frame_cold_background"),
        "speech_over_idle_cpu_ms_per_frame": pooled("speech_over_idle_cpu_ms_per_frame"),
        "first_frame_latency_ms": max(r["first_frame_latency_ms"] for r in rounds),
        "cold_background_cpu_per_s": cold_background_cpu_per_s,
        "background_cpu_per_s_readings": [sum(b.values()) for b in backgrounds],
        "rounds": rounds,
    }


async def speech_round(base: str, persona: str, seconds: float, pacing: str, feed: str, idle_s: float) -> dict:
    """One session: idling (the speech-over-idle baseline), then `seconds` of speech; the
    cluster's CPU by process over the speech, and the speech frames as the client saw them."""
    n = int(seconds * 25)
    async with LockNBodClient(base) as client:
        session_id = (await client.create_session(persona, "pattern"))["session_id"]
        try:
            async with client.connect(session_id, pacing=pacing) as stream:
                await until(stream, lambda m: stream.mode == "pattern", 120)
                # Client pacing: the stream's playout buffer drops what a retract takes back.
                frames: list[VideoFrame] = []
                idle_task = asyncio.create_task(idling_cpu_per_s(idle_s))
                reading = asyncio.create_task(until(stream, lambda m: idle_task.done(), idle_s + 60, frames))
                idle_cpu_per_s = await idle_task
                await reading
                frames.clear()
                before, t_send = cluster_cpu_by_process(), time.time()
                sending = asyncio.create_task(send_speech(stream, coded_pcm16(n), feed, t_send))
                await until(stream, lambda m: getattr(m, "type", None) == "speech_ended", seconds + 60, frames)
                await sending
                wall = time.time() - t_send
                after = cluster_cpu_by_process()
                if stream.playout is not None:
                    kept = {id(f) for f in stream.playout.frames}
                    frames = [f for f in frames if id(f) in kept]  # the frames still held, not retracted
        finally:
            await client.delete_session(session_id)
    await asyncio.sleep(SETTLE_S)  # the session's teardown is not the next background reading
    speech = [(f.pts, f.t_recv) for f in frames if frame_info(f.jpeg)[0]]
    if pacing == "client":  # a frame is shown when it is due, or on arrival if it came late
        speech = [(p, max(t, stream.clock.due(p))) for p, t in speech]
    return {"before": before, "after": after, "wall": wall, "speech": speech, "t_send": t_send,
            "idle_cpu_per_s": idle_cpu_per_s}


def round_figures(speech: dict, background_before: dict, background_after: dict,
                  cold_background_cpu_per_s: float, next_idle_cpu_per_s: float) -> dict:
    """A round's CPU per speech frame, less the mean of the background read before and after it."""
    before, after, wall, frames = speech["before"], speech["after"], speech["wall"], speech["speech"]
    n = max(1, len(frames))
    background = {k: (background_before.get(k, 0.0) + background_after.get(k, 0.0)) / 2
                  for k in background_before.keys() | background_after.keys()}
    gross_cpu = sum(after.values()) - sum(before.values())
    idle_cpu_per_s = (speech["idle_cpu_per_s"] + next_idle_cpu_per_s) / 2  # the next round's session idling
    net = net_by_process(before, after, background, wall, n)
    return {
        "frames": len(frames), "fps": len(frames) / (frames[-1][1] - frames[0][1]) * (len(frames) - 1) / len(frames),
        "cpu_ms_per_frame": 1000 * (gross_cpu - sum(background.values()) * wall) / n,
        "cpu_ms_per_frame_cold_background": 1000 * (gross_cpu - cold_background_cpu_per_s * wall) / n,
        "speech_over_idle_cpu_ms_per_frame": 1000 * (gross_cpu - idle_cpu_per_s * wall) / n,
        "first_frame_latency_ms": 1000 * (frames[0][1] - speech["t_send"]),
        "background_cpu_per_s_before_after": [sum(background_before.values()), sum(background_after.values())],
        "background_cpu_ms_per_s_by_process": {k: round(1000 * v, 1) for k, v in background.items() if v > 0.0005},
        "cpu_ms_per_frame_by_process": by_process(net),
        "off_path_cpu_ms_per_frame": off_path(net),
    }


async def send_speech(stream: SessionStream, pcm, feed: str, t_send: float) -> None:
    """The speech in 200 ms messages, then end_of_speech; at once, or each when it would be spoken."""
    for i in range(0, len(pcm) // SAMPLES_PER_FRAME, 5):
        await stream.send_pcm(pcm[i * SAMPLES_PER_FRAME:(i + 5) * SAMPLES_PER_FRAME])
        if feed == "realtime":
            await asyncio.sleep(max(0.0, t_send + (i + 5) / 25 - time.time()))
    await stream.end_of_speech()


def net_by_process(before: dict, after: dict, background: dict, wall: float, frames: int) -> dict[str, float]:
    """CPU ms per frame of each process over the speech, less its own background (Ray with no session)."""
    return {k: 1000 * (after[k] - before.get(k, 0.0) - background.get(k, 0.0) * wall) / max(1, frames) for k in after}


def by_process(net: dict[str, float]) -> dict[str, float]:
    """The processes that cost something, most first."""
    return {k: round(v, 2) for k, v in sorted(net.items(), key=lambda kv: -kv[1]) if abs(v) > 0.05}


def off_path(net: dict[str, float]) -> float:
    """CPU ms a frame, beyond their background, of the processes no frame passes through:
    ~0 when the background held still over the round, large when it did not."""
    return sum(v for k, v in net.items() if not any(p in k for p in FRAME_PATH))


async def still_viewers(base: str, persona: str, n: int, seconds: float) -> dict:
    """n still sessions with one WebSocket viewer each: worst lateness against the 25 fps clock."""
    async with LockNBodClient(base) as client:
        sessions = [(await client.create_session(persona, "still"))["session_id"] for _ in range(n)]
        try:
            streams = [await client.connect(s) for s in sessions]

            async def frames_of(stream: SessionStream, count: int) -> list[VideoFrame]:
                got: list[VideoFrame] = []
                await until(stream, lambda m: len(got) >= count, seconds + 30, got)
                return got

            await asyncio.gather(*(frames_of(s, 10) for s in streams))
            late_ms, gaps = 0.0, 0
            for frames in await asyncio.gather(*(frames_of(s, int(seconds * 25)) for s in streams)):
                p0, t0 = frames[0].pts, frames[0].t_recv
                late_ms = max(late_ms, max(1000 * ((f.t_recv - t0) - (f.pts - p0) / 25) for f in frames))
                gaps += sum(b.pts - a.pts - 1 for a, b in zip(frames, frames[1:]))
            for stream in streams:
                await stream.close()
            return {"sessions": n, "max_late_ms": late_ms, "skipped_frames": gaps}
        finally:
            for s in sessions:
                await client.delete_session(s)


def start_app(args) -> str:
    from tests.local_cluster import deploy_app, start_local_serve

    return deploy_app(start_local_serve(), {
        "data_dir": f"/tmp/lockn-bench-{os.getpid()}", "enable_test_modes": True,
        "limits": {"max_sessions": 64}, "provenance": {"enabled": args.provenance == "on"},
        "backends": {"pattern": {"num_gpus": 0.1, "num_cpus": 0.1, "chunk_frames": args.chunk_frames,
                                 "options": {"size": args.size, "work_ms_per_frame": args.work_ms}}
                     | ({"max_chunks_per_call": args.max_chunks_per_call} if args.max_chunks_per_call else {})},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="speech sent through the graph in each round")
    parser.add_argument("--rounds", type=int, default=5, help="sessions of speech, each between two background readings")
    parser.add_argument("--idle-seconds", type=float, default=20.0,
                        help="each reading of Ray's background and of the session idling (at most 25 s but the first)")
    parser.add_argument("--work-ms", type=float, default=8.0, help="stand-in render cost per frame")
    parser.add_argument("--chunk-frames", type=int, default=5)
    parser.add_argument("--max-chunks-per-call", type=int, default=None,
                        help="most buffered chunks a session sends to the backend in one call once well "
                             "ahead (default: the server's, BackendArgs.max_chunks_per_call)")
    parser.add_argument("--feed", choices=["burst", "realtime"], default="burst",
                        help="the client sends the speech at once (as a TTS does), or at 1x speed (as a microphone)")
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels")
    parser.add_argument("--pacing", choices=["server", "client"], default="server",
                        help="the WebSocket's pacing: frames sent when due, or as rendered")
    parser.add_argument("--still-counts", default="4,8,12,16")
    parser.add_argument("--still-seconds", type=float, default=5.0)
    parser.add_argument("--provenance", choices=["on", "off"], default="on",
                        help="mark every frame (the default, as served) or not (benchmarks/provenance.py compares)")
    parser.add_argument("--ingress", choices=["haproxy", "serve-proxy"], default="haproxy",
                        help="what serves port 8000: Serve's HAProxy mode, or Serve's own Python proxy")
    args = parser.parse_args()

    # Read where the cluster starts (tests/local_cluster.py:start_local_serve), by every Serve process.
    os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1" if args.ingress == "haproxy" else "0"
    base = start_app(args)
    persona = create_persona(base, save=True, size=args.size)
    local_before = in_process(args.seconds, args.work_ms, args.chunk_frames, args.size)
    graph = asyncio.run(graph_rounds(base, persona, args))
    local = in_process_mean(local_before, in_process(args.seconds, args.work_ms, args.chunk_frames, args.size))
    still = [asyncio.run(still_viewers(base, persona, int(n), args.still_seconds))
             for n in args.still_counts.split(",")]
    by_round = [r["cpu_ms_per_frame"] / local["cpu_ms_per_frame"] for r in graph["rounds"]]
    held = [s["sessions"] for s in still if s["max_late_ms"] <= 40 and not s["skipped_frames"]]
    print(json.dumps({
        "config": vars(args), "in_process": local, "graph": graph,
        "overhead_ratio": statistics.median(by_round),
        "overhead_ratio_by_round": by_round,
        # The rounds' mean and its standard error: with many rounds (--rounds 25, or several
        # runs' rounds together), the figure with the spread of one round averaged out.
        "overhead_ratio_mean": statistics.mean(by_round),
        "overhead_ratio_sem": statistics.stdev(by_round) / len(by_round) ** 0.5 if len(by_round) > 1 else None,
        "overhead_ratio_pooled": graph["cpu_ms_per_frame"] / local["cpu_ms_per_frame"],
        "overhead_ratio_cold_background": graph["cpu_ms_per_frame_cold_background"] / local["cpu_ms_per_frame"],
        "speech_over_idle_ratio": graph["speech_over_idle_cpu_ms_per_frame"] / local["cpu_ms_per_frame"],
        "first_frame_latency_ms": graph["first_frame_latency_ms"],
        "still_sessions": still, "max_still_sessions_at_25fps": max(held, default=0),
    }, indent=2))


if __name__ == "__main__":
    main()
