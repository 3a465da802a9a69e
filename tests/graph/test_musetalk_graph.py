"""MuseTalk through the whole graph on CPU: seeded tiny networks, 3 s of speech in 200 ms chunks."""
import asyncio
import json

import numpy as np
import pytest

from deployments.transports.encode import decode_jpeg
from tests.local_cluster import deploy_app
from tests.graph_client import WsViewer, create_persona, create_session, open_ws

pytestmark = pytest.mark.graph


def speech_like_pcm16(seconds: float, rate: int = 16000) -> np.ndarray:
    """A voiced sweep with a syllable envelope: loud enough that no frame counts as silent."""
    t = np.arange(int(seconds * rate)) / rate
    voice = np.sin(2 * np.pi * (140 + 40 * t) * t) + 0.5 * np.sin(2 * np.pi * 420 * t)
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    return (0.3 * 32767 * voice * envelope / 1.5).astype(np.int16)


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory):
    base = deploy_app(ray_serve, {
        "data_dir": str(tmp_path_factory.mktemp("data")),
        "backends": {"musetalk": {"num_gpus": 0.3, "num_cpus": 0.25, "chunk_frames": 8,
                                  "options": {"config": "tiny"}}},
    })
    return {"base": base, "persona": create_persona(base, save=True, size=128)}


def test_a_musetalk_session_streams_three_seconds_of_speech(app):
    base = app["base"]
    session_id = create_session(base, app["persona"], "musetalk")["session_id"]

    async def main():
        async with await open_ws(base, session_id) as ws:
            viewer = WsViewer(ws)
            await viewer.recv_until(lambda v: v.in_mode("musetalk"), 180)
            pcm = speech_like_pcm16(3.0)
            for i in range(15):  # 200 ms chunks
                await ws.send(pcm[i * 3200 : (i + 1) * 3200].tobytes())
            await ws.send(json.dumps({"type": "end_of_speech"}))
            await viewer.recv_until(lambda v: v.has("speech_ended"), 120)
            return viewer

    viewer = asyncio.run(main())
    started = next(e["pts"] for e in viewer.events if e["type"] == "speech_started")
    ended = next(e["pts"] for e in viewer.events if e["type"] == "speech_ended")
    assert ended - started == 75, "one frame per 640 samples of speech"
    speech = [(pts, jpeg) for pts, jpeg, _ in viewer.frames if started <= pts < ended]
    assert [p for p, _ in speech] == list(range(started, ended)), "every speech frame arrives, in order"
    assert decode_jpeg(speech[0][1]).shape == (128, 128, 3)
    assert not any(e["type"] == "error" for e in viewer.events), viewer.events
