"""The pipecat service (lockn_bod_client.pipecat) in a real pipecat pipeline, against the real
graph with the `pattern` backend, whose frames encode the audio span they show."""
import asyncio

import numpy as np
import pytest

from lockn_bod_client import LockNBodClient
from models.testing import decode_pattern
from tests.streaming import coded_pcm16

pipecat = pytest.importorskip("pipecat")

from pipecat.frames.frames import (  # noqa: E402
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    OutputImageRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from lockn_bod_client.pipecat import EmotionTagProcessor, LockNBodVideoService  # noqa: E402

pytestmark = pytest.mark.graph
RATE = 16000
SECOND_CODE = 1001


# The client tests' app: one Router, the pattern backend warmed up, a saved persona.
from tests.graph.test_client_graph import app  # noqa: E402,F401


class ScriptedAgent(FrameProcessor):
    """What an agent's pipeline would send: the user talking, the LLM's text with a tag, the
    TTS's speech (coded PCM: frame span k holds the value k + 1), an interruption, more speech."""

    def __init__(self, service: LockNBodVideoService, sink: "Collector", base: str):
        super().__init__()
        self.service, self.sink, self.base, self.seen = service, sink, base, {}

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self.create_task(self.script(), name="script")

    async def session(self) -> dict:
        async with LockNBodClient(self.base) as client:
            return await client.get_session(self.service.session_id)

    async def speak(self, pcm: np.ndarray, context: str) -> None:
        await self.push_frame(TTSStartedFrame(context_id=context))
        for i in range(0, len(pcm), 3200):  # 200 ms TTS chunks, faster than real time
            await self.push_frame(TTSAudioRawFrame(pcm[i:i + 3200].tobytes(), RATE, 1, context_id=context))

    async def script(self) -> None:
        while self.service.stream is None or self.service.stream.mode != "pattern":
            await asyncio.sleep(0.1)  # the backend loads
        await self.push_frame(UserStartedSpeakingFrame())
        await asyncio.sleep(0.5)
        self.seen["listening while the user speaks"] = (await self.session())["listening"]
        await self.push_frame(UserStoppedSpeakingFrame())
        await self.push_frame(LLMTextFrame("[hap"))
        await self.push_frame(LLMTextFrame("py] Hello there"))
        await self.push_frame(LLMFullResponseEndFrame())
        await asyncio.sleep(0.5)
        state = await self.session()
        self.seen["listening after"], self.seen["emotion"] = state["listening"], state["emotion"]
        await self.speak(coded_pcm16(125), "first")  # 5 s of speech
        while len(self.sink.speech_codes()) < 30:
            await asyncio.sleep(0.02)
        self.sink.mark("interruption sent")
        await self.push_frame(InterruptionFrame())
        await asyncio.sleep(1.0)
        await self.speak(coded_pcm16(25, first_code=SECOND_CODE), "second")
        await self.push_frame(TTSStoppedFrame(context_id="second"))
        while SECOND_CODE + 24 not in self.sink.speech_codes():
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        await self.push_frame(EndFrame())


class Collector(FrameProcessor):
    """The end of the pipeline: what the output transport would get, in order."""

    def __init__(self):
        super().__init__()
        self.got: list[tuple[str, object]] = []
        self.unsynced = 0  # images not marked to go out in step with the audio

    def mark(self, what: str) -> None:
        self.got.append(("mark", what))

    def speech_codes(self) -> list[int]:
        return [c for kind, (is_speech, c, _) in self.images() if is_speech]

    def images(self):
        return [(k, v) for k, v in self.got if k == "image"]

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputImageRawFrame):
            w, h = frame.size
            is_speech, code = decode_pattern(np.frombuffer(frame.image, np.uint8).reshape(h, w, 3))
            self.unsynced += not frame.sync_with_audio
            self.got.append(("image", (is_speech, code, frame.metadata["lockn_bod_pts"])))
        elif isinstance(frame, TTSAudioRawFrame):
            self.got.append(("audio", np.frombuffer(frame.audio, "<i2")))
        elif isinstance(frame, InterruptionFrame):
            self.got.append(("interruption", None))
        elif isinstance(frame, LLMTextFrame):
            self.got.append(("text", frame.text))
        await self.push_frame(frame, direction)


def test_a_pipecat_pipeline_drives_the_avatar(app):  # noqa: F811 (the imported fixture)
    service = LockNBodVideoService(base_url=app["base"], persona_id=app["persona"], mode="pattern")
    sink = Collector()
    agent = ScriptedAgent(service, sink, app["base"])
    worker = PipelineWorker(Pipeline([agent, EmotionTagProcessor(), service, sink]),
                            params=PipelineParams(audio_out_sample_rate=RATE), cancel_on_idle_timeout=False,
                            enable_rtvi=False)

    async def main():
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await asyncio.wait_for(runner.run(), 120)

    asyncio.run(main())

    assert agent.seen == {"listening while the user speaks": True, "listening after": False, "emotion": "happy"}
    assert "".join(v for k, v in sink.got if k == "text") == " Hello there"  # the tag is not spoken

    # Every image in session order; each speech image followed by exactly its own 40 ms of audio.
    assert sink.unsynced == 0
    pts = [p for _, (_, _, p) in sink.images()]
    assert pts == sorted(set(pts))
    got = [(k, v) for k, v in sink.got if k in ("image", "audio")]
    for i, (kind, value) in enumerate(got):
        if kind == "audio":
            previous_kind, (is_speech, code, _) = got[i - 1]
            assert previous_kind == "image" and is_speech and len(value) == 640 and set(value.tolist()) == {code}
        elif value[0]:
            assert got[i + 1][0] == "audio"

    codes = sink.speech_codes()
    first = [c for c in codes if c < SECOND_CODE]
    assert first == list(range(1, len(first) + 1)) and 30 <= len(first) < 60  # cut off by the interruption
    assert [c for c in codes if c >= SECOND_CODE] == list(range(SECOND_CODE, SECOND_CODE + 25))
    # After the interruption, no frame of the dropped speech (a frame or two may have been queued before it).
    after = sink.got[sink.got.index(("interruption", None)):]
    assert len([1 for k, v in after if k == "image" and v[0] and v[1] < SECOND_CODE]) <= 2

    async def gone():
        async with LockNBodClient(app["base"]) as client:
            return {s["session_id"] for s in await client.list_sessions()}

    assert service.session_id not in asyncio.run(gone())  # the service closed the session it opened
