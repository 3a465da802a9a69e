"""An async Python client for LockN Bod (docs/clients.md).

- `LockNBodClient`: the REST API (personas, sessions, audio, events) and `connect()`, a
  session's WebSocket as a `SessionStream`;
- `VideoFrame`, `AudioChunk`, `Event`: what a stream receives; `Clock` and `PlayoutBuffer`
  for client pacing;
- `LockNBodError`: every refusal from the server, with its `code`;
- `events`: control events as JSON objects; `tags`: emotion tags in an LLM's text;
- `lockn_bod_client.pipecat`: a pipecat video service on this client (`pip install 'lockn-bod[pipecat]'`).

Needs httpx and websockets only (`pip install 'lockn-bod[client]'`).
"""
from . import events
from .client import LockNBodClient, SessionStream, StreamClosed
from .errors import LockNBodError, ProtocolError
from .playout import PlayoutBuffer
from .tags import EmotionTag, EmotionTagParser
from .wire import (
    AUDIO_MAGIC,
    FPS,
    FRAME_MAGIC,
    HEADER,
    OUTPUT_SAMPLE_RATE_HZ,
    SAMPLES_PER_FRAME,
    AudioChunk,
    Clock,
    Event,
    VideoFrame,
    parse_binary,
    parse_message,
    parse_text,
)

__all__ = [
    "AUDIO_MAGIC", "FPS", "FRAME_MAGIC", "HEADER", "OUTPUT_SAMPLE_RATE_HZ", "SAMPLES_PER_FRAME",
    "AudioChunk", "Clock", "EmotionTag", "EmotionTagParser", "Event", "LockNBodClient", "LockNBodError",
    "PlayoutBuffer", "ProtocolError", "SessionStream", "StreamClosed", "VideoFrame", "events",
    "parse_binary", "parse_message", "parse_text",
]
