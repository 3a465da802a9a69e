"""A pipecat video service on the LockN Bod client (`pip install 'lockn-bod[pipecat]'`).

Put `LockNBodVideoService` after the TTS, and `EmotionTagProcessor` after the LLM:

    Pipeline([transport.input(), stt, user_aggregator, llm, EmotionTagProcessor(), tts,
              LockNBodVideoService(persona_id="p_…", mode="liveportrait"), transport.output(),
              assistant_aggregator])

What the service does with a pipeline's frames:

- `StartFrame`: opens a session (or uses `session_id`) with `sample_rate_hz` = the TTS
  rate (the pipeline's `audio_out_sample_rate` unless given), and its WebSocket.
- `TTSAudioRawFrame`: pushed to the session as PCM (resampled to the session's rate if a
  TTS frame has another). It is *not* passed on: the service sends it downstream again
  in step with the video (below).
- `TTSStoppedFrame`: `end_of_speech` (the server renders the utterance's tail at once).
- `InterruptionFrame`: `interrupt`; the audio held back is dropped, and frames of the
  dropped speech that were already on their way are not shown.
- `UserStartedSpeakingFrame` / `UserStoppedSpeakingFrame`: `listening` true / false.
- `AvatarEmotionFrame` (from `EmotionTagProcessor`): `emotion`.
- Every video frame the session streams (25 fps, idle or speaking) goes downstream as an
  `OutputImageRawFrame` (RGB; `metadata["lockn_bod_pts"]` is its pts on the session clock).

Audio re-timed to the video: the session shows speech frame k of an utterance with the
utterance's audio samples [k·rate/25, (k+1)·rate/25) (docs/api.md#the-clock: frame pts shows
16 kHz samples [640·pts, 640·(pts+1))). The service holds the TTS audio it sent and, for
each speech frame that arrives (server pacing: when it is due), sends the image and then
that frame's 40 ms of audio. The image is marked `sync_with_audio`, so the output transport
shows it when the audio before it has played: picture and sound leave together, and
nothing that an interrupt took back is ever played. Speech frames are the frames between
the server's `speech_started` and `speech_ended` events while held audio remains; a frame
that comes while none is held is an idle frame (the TTS fell behind real time and the
server showed idle frames in between).
"""
from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import Any

from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import (
    CancelFrame,
    DataFrame,
    EndFrame,
    ErrorFrame,
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
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from .client import LockNBodClient, SessionStream, StreamClosed
from .errors import LockNBodError
from .tags import EMOTIONS, EmotionTag, EmotionTagParser
from .wire import FPS, Event, VideoFrame


@dataclass
class AvatarEmotionFrame(DataFrame):
    """Change the avatar's emotion (`neutral`, `happy`, `sad`, ...; intensity 0 to 1)."""

    value: str
    intensity: float = 1.0


class EmotionTagProcessor(FrameProcessor):
    """Strips emotion tags (`[happy]`, `[sad:0.4]`; lockn_bod_client.tags) from the LLM's
    text and sends each as an `AvatarEmotionFrame` downstream, in place, so the TTS never
    speaks a tag. Put it between the LLM and the TTS. A tag split across text frames is held
    until it is whole; an unfinished bracket is text again at the response's end."""

    def __init__(self, emotions: frozenset[str] | set[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self._parser = EmotionTagParser(emotions if emotions is not None else EMOTIONS)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame) and direction == FrameDirection.DOWNSTREAM:
            for piece in self._parser.feed(frame.text):
                if isinstance(piece, EmotionTag):
                    await self.push_frame(AvatarEmotionFrame(piece.value, piece.intensity))
                else:
                    await self.push_frame(LLMTextFrame(piece))
            return
        if isinstance(frame, LLMFullResponseEndFrame):
            rest = self._parser.flush()
            if rest:
                await self.push_frame(LLMTextFrame(rest))
        elif isinstance(frame, InterruptionFrame):
            self._parser.flush()
        await self.push_frame(frame, direction)


class LockNBodVideoService(FrameProcessor):
    """A LockN Bod avatar as a pipecat video service: TTS audio in, lip-synced video and the
    same audio out, in step (see the module's docstring).

    Args:
        base_url, token: the server and its `edge.api_token`.
        persona_id, mode: the session to open (`mode` other than avatar3d, which has no video).
        session_id: use this open session instead (it is not deleted at the end).
        sample_rate_hz: the session's input rate; default the pipeline's `audio_out_sample_rate`.
        session_options: more fields of `POST /v1/sessions` (`emotion`, `resolution_px`, ...).
        decode: send RGB images (True) or the JPEGs as they come, `format="JPEG"` (False).
        sync_with_audio: mark images so the output transport shows them in step with the audio.
        client: a LockNBodClient to use (its base_url and token then apply).
    """

    def __init__(self, *, base_url: str = "http://127.0.0.1:8000", token: str | None = None,
                 persona_id: str | None = None, mode: str = "still", session_id: str | None = None,
                 sample_rate_hz: int | None = None, session_options: dict[str, Any] | None = None,
                 decode: bool = True, sync_with_audio: bool = True, client: LockNBodClient | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self._client = client or LockNBodClient(base_url, token=token)
        self._own_client = client is None
        self._persona_id, self._mode, self._session_options = persona_id, mode, dict(session_options or {})
        self._given_session = session_id
        self.session_id: str | None = session_id
        self._rate_asked = sample_rate_hz
        self.sample_rate_hz: int | None = None
        self._decode, self._sync_with_audio = decode, sync_with_audio
        self.stream: SessionStream | None = None
        self._reader: asyncio.Task | None = None
        self._resampler = create_stream_resampler()
        self._context_id: str | None = None
        self._reset_speech()
        self._last_pts = -1
        self._stale_before_pts = -1  # after an interrupt: frames and speech_started up to here belong to dropped speech

    # ---- the speech held back until its frames come ----
    def _reset_speech(self) -> None:
        self._held = bytearray()  # PCM16 sent to the session and not yet released with a frame
        self._released_frames = 0  # speech frames released since the turn began
        self._in_speech = False

    def _frame_bytes(self, k: int) -> int:
        """Bytes of audio that speech frame k of a turn shows: samples [k·rate/25, (k+1)·rate/25)."""
        rate = self.sample_rate_hz
        return 2 * ((k + 1) * rate // FPS - k * rate // FPS)

    # ---- lifecycle ----
    async def _open(self) -> None:
        self.sample_rate_hz = self._rate_asked or self.processor_setup.audio_out_sample_rate
        if self.session_id is None:
            session = await self._client.create_session(self._persona_id, self._mode,
                                                        sample_rate_hz=self.sample_rate_hz, **self._session_options)
            self.session_id = session["session_id"]
        self.stream = await self._client.connect(self.session_id)
        rate = self.stream.ready.get("sample_rate_hz") if self.stream.ready else None
        if rate:
            self.sample_rate_hz = rate  # a session given by id keeps its own rate
        self._reader = self.create_task(self._read(), name="lockn_bod_reader")

    async def _close(self) -> None:
        if self._reader is not None:
            await self.cancel_task(self._reader)
            self._reader = None
        if self.stream is not None:
            await self.stream.close()
            self.stream = None
        if self.session_id is not None and self._given_session is None:
            try:
                await self._client.delete_session(self.session_id)
            except LockNBodError:
                pass  # already gone
        if self._own_client:
            await self._client.aclose()

    async def cleanup(self):
        await super().cleanup()
        if self._reader is not None or self.stream is not None:
            await self._close()

    # ---- frames from the pipeline ----
    async def _send(self, coro) -> None:
        try:
            await coro
        except LockNBodError as err:
            await self.push_error(error_msg=f"LockN Bod: {err}", exception=err)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            try:
                await self._open()
            except LockNBodError as err:
                await self.push_error(error_msg=f"LockN Bod: cannot open the session: {err}", exception=err,
                                      fatal=True)
            await self.push_frame(frame, direction)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._close()
            await self.push_frame(frame, direction)
        elif self.stream is None:
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSAudioRawFrame):
            await self._take_audio(frame)  # comes back out with its frames
        elif isinstance(frame, TTSStartedFrame):
            self._context_id = frame.context_id
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSStoppedFrame):
            await self._send(self.stream.end_of_speech())
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            await self._interrupt()
            await self.push_frame(frame, direction)
        elif isinstance(frame, UserStartedSpeakingFrame):
            await self._send(self.stream.listening(True))
            await self.push_frame(frame, direction)
        elif isinstance(frame, UserStoppedSpeakingFrame):
            await self._send(self.stream.listening(False))
            await self.push_frame(frame, direction)
        elif isinstance(frame, AvatarEmotionFrame):
            await self._send(self.stream.emotion(frame.value, frame.intensity))
        else:
            await self.push_frame(frame, direction)

    async def _take_audio(self, frame: TTSAudioRawFrame) -> None:
        audio = frame.audio
        if frame.num_channels != 1:
            await self.push_error(error_msg=f"LockN Bod takes mono TTS audio, not {frame.num_channels} channels")
            return
        if frame.sample_rate != self.sample_rate_hz:
            audio = await self._resampler.resample(audio, frame.sample_rate, self.sample_rate_hz)
        if not audio:
            return
        self._held.extend(audio)
        await self._send(self.stream.send_pcm(audio))

    async def _interrupt(self) -> None:
        await self._send(self.stream.interrupt())
        self._reset_speech()
        # Frames up to the next pts were due when the interrupt was sent: the dropped speech.
        self._stale_before_pts = self._last_pts + 1

    # ---- frames from the session ----
    async def _read(self) -> None:
        try:
            async for message in self.stream:
                if isinstance(message, VideoFrame):
                    await self._show(message)
                else:
                    await self._on_event(message)
        except StreamClosed as closed:
            await self.push_error(error_msg=f"LockN Bod: the session's stream closed: {closed}", exception=closed)

    async def _on_event(self, event: Event) -> None:
        if event.type == "speech_started":
            if event.pts is None or event.pts > self._stale_before_pts:
                self._in_speech = True
        elif event.type == "speech_ended":
            self._in_speech = False
            if event.get("reason") != "interrupted" and 0 < len(self._held) < self._frame_bytes(self._released_frames):
                await self._release(len(self._held))  # the utterance's last partial frame, padded by the server
        elif event.type == "error":
            await self.push_frame(ErrorFrame(f"LockN Bod: {event.get('code')}: {event.get('error')}"))

    async def _show(self, frame: VideoFrame) -> None:
        self._last_pts = max(self._last_pts, frame.pts)
        if frame.pts <= self._stale_before_pts and self._in_speech:
            return  # dropped speech, already on its way when the interrupt went
        image = await self._image(frame)
        await self.push_frame(image)
        if self._in_speech and self._held:
            n = min(len(self._held), self._frame_bytes(self._released_frames))
            await self._release(n)

    async def _release(self, n: int) -> None:
        audio, self._held = bytes(self._held[:n]), self._held[n:]
        self._released_frames += 1
        out = TTSAudioRawFrame(audio=audio, sample_rate=self.sample_rate_hz, num_channels=1,
                               context_id=self._context_id)
        await self.push_frame(out)

    async def _image(self, frame: VideoFrame) -> OutputImageRawFrame:
        if self._decode:
            from PIL import Image  # pipecat depends on Pillow

            with Image.open(io.BytesIO(frame.jpeg)) as img:
                rgb = img.convert("RGB")
            image = OutputImageRawFrame(image=rgb.tobytes(), size=rgb.size, format="RGB")
        else:
            image = OutputImageRawFrame(image=frame.jpeg, size=(0, 0), format="JPEG")
        image.sync_with_audio = self._sync_with_audio
        image.metadata["lockn_bod_pts"] = frame.pts
        return image
