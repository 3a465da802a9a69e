"""WebRTC out, measured: sessions on a real Ray cluster watched by real aiortc clients.

Prints JSON:
- offer_to_answer_ms / offer_to_first_frame_ms: per session, from POSTing the
  offer to the answer, and to the first decoded video frame at the client;
- sustained_fps: per session, video frames decoded per second over the run;
- host_cpu: the SessionHost process's CPU (cores: CPU seconds per wall second)
  with the sessions open and a WebSocket each, before and while they also feed
  WebRTC peers; `encode_cores_per_session` is the difference per session (VP8 +
  Opus encoding, RTP, the tracks' pacing);
- av_offset_ms: each utterance's audio onset and end (a tone, found in the
  decoded Opus) against the first and last speech frame (found in the decoded
  video), on the client's receiver clocks; drift = the last utterances' mean
  offset minus the first ones'. Only edges whose neighbouring video frames
  both arrived count (`clean_*`). Target: |offset| <= 40 ms over 5 minutes;
- frames: sent by the server against decoded by the client; load_average_1m:
  the machine's load at the start and end (the box may be shared).

    python benchmarks/webrtc.py [--duration-s 30] [--sessions 1] [--size 256]
    python benchmarks/webrtc.py --duration-s 300        # the 5-minute drift target
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.graph_client import WsViewer, create_persona, create_session, open_ws  # noqa: E402
from tests.graph.test_webrtc import WebRtcClient, speech_pcm16, tone_runs  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
CHUNK_SAMPLES = 3200  # 200 ms at 16 kHz
EDGE_MATCH_S = 0.5  # an audio run belongs to the video run starting nearest, within this
DRIFT_EDGE_UTTERANCES = 3


def host_cpu_s() -> float:
    """CPU seconds used so far by the SessionHost replica process(es)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if b"SessionHost" not in (stat.parent / "cmdline").read_bytes():
                continue
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
    return total


async def cores_over(seconds: float) -> float:
    cpu0, t0 = host_cpu_s(), time.time()
    await asyncio.sleep(seconds)
    return (host_cpu_s() - cpu0) / (time.time() - t0)


async def drain(ws, counts: dict) -> None:
    """Read (and count) the WebSocket's frames: the relay never backs up, and the count says
    whether frames missing over WebRTC were missing from the session itself."""
    async for message in ws:
        if isinstance(message, bytes):
            counts["ws_frames"] = counts.get("ws_frames", 0) + 1


async def speak(ws, duration_s: float, utterance_s: float, cycle_s: float) -> int:
    """One toned utterance per cycle, sent at real-time pace, each closed by end_of_speech."""
    n_frames = round(utterance_s * 25)
    pcm = speech_pcm16(n_frames, range(n_frames))
    start, utterances = time.time(), 0
    while time.time() - start + cycle_s <= duration_s:
        t_cycle = time.time()
        for i, offset in enumerate(range(0, len(pcm), CHUNK_SAMPLES)):
            await asyncio.sleep(max(0.0, t_cycle + i * CHUNK_SAMPLES / 16_000 - time.time()))
            await ws.send(pcm[offset : offset + CHUNK_SAMPLES].tobytes())
        await ws.send(json.dumps({"type": "end_of_speech"}))
        utterances += 1
        await asyncio.sleep(max(0.0, t_cycle + cycle_s - time.time()))
    return utterances


def video_speech_edges(video: list[tuple[float, bool, int]]) -> list[tuple[float, float, bool, bool]]:
    """[(start_s, end_s, start_clean, end_clean)] of speech runs. An onset is clean when the frames on
    both sides of it arrived; an end, when every frame of the run and the one after it arrived
    (a lost frame there would move the edge, or merge two runs)."""
    runs, start, whole = [], None, True
    for (t_prev, s_prev, _), (t_s, is_speech, _) in zip(video, video[1:]):
        adjacent = abs(t_s - t_prev - 1 / 25) < 1e-3
        whole = whole and adjacent
        if is_speech and not s_prev:
            start, whole = (t_s, adjacent), adjacent
        elif s_prev and not is_speech and start is not None:
            runs.append((start[0], t_s, start[1], whole))
            start = None
    return runs


def av_offsets(client: WebRtcClient) -> dict:
    """Onset and end offsets (audio minus video) of every run of speech both tracks show."""
    video, audio = video_speech_edges(client.got.video), tone_runs(*client.got.audio_signal())
    onsets, ends = [], []
    for v_start, v_end, start_clean, end_clean in video:  # runs may be split by idle frames: both sides show it
        nearest = min(audio, key=lambda a: abs(a[0] - v_start), default=None)
        if nearest is None or abs(nearest[0] - v_start) > EDGE_MATCH_S:
            continue
        if start_clean:
            onsets.append(1000 * (nearest[0] - v_start))
        if end_clean:
            ends.append(1000 * (nearest[1] - v_end))
    if not onsets:
        return {"speech_runs": len(video), "clean_onsets": 0}
    both = np.array(onsets + ends)
    k = min(DRIFT_EDGE_UTTERANCES, len(onsets))
    return {
        "speech_runs": len(video), "audio_runs": len(audio), "clean_onsets": len(onsets), "clean_ends": len(ends),
        "onset_mean_ms": round(float(np.mean(onsets)), 2), "end_mean_ms": round(float(np.mean(ends)), 2) if ends else None,
        "max_abs_ms": round(float(np.abs(both).max()), 2),
        "first_ms": round(float(np.mean(onsets[:k])), 2), "last_ms": round(float(np.mean(onsets[-k:])), 2),
        "drift_ms": round(float(np.mean(onsets[-k:]) - np.mean(onsets[:k])), 2),
    }


def server_side(base: str, session_id: str, client: WebRtcClient) -> dict:
    """Frames the server sent against frames the client decoded (a gap here is loss, not pacing)."""
    peer = httpx.get(f"{base}/v1/sessions/{session_id}/webrtc").json()["peers"][0]
    elapsed_s = time.time() - peer["created_at"]
    return {"server_video_frames_sent": peer["video_frames_sent"], "client_video_frames": len(client.got.video),
            "server_audio_blocks_sent": peer["audio_blocks_sent"], "client_audio_blocks": len(client.got.audio),
            "server_sent_fps": round(peer["video_frames_sent"] / elapsed_s, 2)}


async def open_sessions(base: str, persona: str, n: int) -> list[tuple[str, object]]:
    sessions = []
    for _ in range(n):
        session_id = create_session(base, persona, "pattern")["session_id"]
        ws = await open_ws(base, session_id)
        await WsViewer(ws).recv_until(lambda v: v.in_mode("pattern"), 120)
        sessions.append((session_id, ws))
    return sessions


async def measure(base: str, persona: str, args) -> dict:
    sessions = await open_sessions(base, persona, args.sessions)
    ws_counts = [{} for _ in sessions]
    drains = [asyncio.create_task(drain(ws, c)) for (_, ws), c in zip(sessions, ws_counts)]
    clients: list[WebRtcClient] = []
    load_start = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    try:
        baseline_cores = await cores_over(args.baseline_s)
        answers, firsts = [], []
        for session_id, _ in sessions:
            client = WebRtcClient(base, session_id)
            clients.append(client)
            answer_s = await client.connect()
            t_answer = time.time()
            await client.wait_for(lambda g: len(g.video) > 0, 30, "first frame")
            answers.append(1000 * answer_s)
            firsts.append(1000 * (client.got.video_wall_s[0] - t_answer + answer_s))
        counts0, t0 = [len(c.got.video) for c in clients], time.time()
        ws0 = [c.get("ws_frames", 0) for c in ws_counts]
        cpu = asyncio.create_task(cores_over(args.duration_s))
        await asyncio.gather(*(speak(ws, args.duration_s, args.utterance_s, args.cycle_s) for _, ws in sessions))
        with_webrtc_cores = await cpu
        wall_s = time.time() - t0
        fps = [(len(c.got.video) - n0) / wall_s for c, n0 in zip(clients, counts0)]
        ws_fps = [(c.get("ws_frames", 0) - n0) / wall_s for c, n0 in zip(ws_counts, ws0)]
        await asyncio.sleep(0.5)  # the last utterance's audio
        offsets = [av_offsets(c) for c in clients]
        served = [server_side(base, session_id, c) for (session_id, _), c in zip(sessions, clients)]
    finally:
        for client in clients:
            await client.close()
        for task in drains:
            task.cancel()
        await asyncio.gather(*drains, return_exceptions=True)
        for session_id, ws in sessions:
            await ws.close()
            httpx.delete(f"{base}/v1/sessions/{session_id}")
    worst = max((o.get("max_abs_ms", float("inf")) for o in offsets), default=None)
    return {
        "offer_to_answer_ms": [round(a, 1) for a in answers],
        "offer_to_first_frame_ms": [round(f, 1) for f in firsts],
        "sustained_fps": [round(f, 2) for f in fps],
        "websocket_fps_same_sessions": [round(f, 2) for f in ws_fps],
        "frames": served,
        "load_average_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "host_cpu": {"cores_ws_only": round(baseline_cores, 3), "cores_with_webrtc": round(with_webrtc_cores, 3),
                     "encode_cores_per_session": round((with_webrtc_cores - baseline_cores) / args.sessions, 3)},
        "av_offset_ms": {"per_session": offsets, "max_abs_ms": worst, "target_max_abs_ms": 40.0,
                         "within_target": worst is not None and worst <= 40.0},
    }


def start_app(args) -> str:
    from tests.local_cluster import deploy_app, start_local_serve

    return deploy_app(start_local_serve(), {
        "data_dir": f"/tmp/lockn-bench-webrtc-{os.getpid()}", "enable_test_modes": True,
        "limits": {"max_sessions": 16},
        "backends": {"pattern": {"num_gpus": 0.1, "num_cpus": 0.1, "chunk_frames": 5,
                                 "options": {"size": args.size}}},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=30.0, help="speaking time (300: the 5-minute target)")
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels")
    parser.add_argument("--utterance-s", type=float, default=1.2)
    parser.add_argument("--cycle-s", type=float, default=3.0, help="one utterance starts every cycle")
    parser.add_argument("--baseline-s", type=float, default=5.0)
    args = parser.parse_args()

    import ray
    from ray import serve

    base = start_app(args)
    try:
        persona = create_persona(base, save=True, size=args.size)
        result = asyncio.run(measure(base, persona, args))
    finally:
        serve.shutdown()
        ray.shutdown()
    print(json.dumps({"config": vars(args), **result}, indent=2))


if __name__ == "__main__":
    main()
