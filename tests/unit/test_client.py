"""The client's pure parts: the wire (frame headers, events), the playout buffer's retracts,
errors from HTTP bodies, control events against the server's own models, emotion tags."""
from __future__ import annotations

import json
import sys

import pytest

from deployments.api.protocol import AUDIO_MAGIC, CONTROL_EVENT, FRAME_HEADER, FRAME_MAGIC, AudioItem, SpeechEnded
from lockn_bod_client import (
    AudioChunk,
    Clock,
    EmotionTag,
    EmotionTagParser,
    Event,
    LockNBodClient,
    LockNBodError,
    PlayoutBuffer,
    ProtocolError,
    VideoFrame,
    events,
    parse_binary,
    parse_message,
    wire,
)


def test_the_client_restates_the_servers_wire_constants():
    assert wire.HEADER.format == FRAME_HEADER.format and wire.HEADER.size == 12
    assert (wire.FRAME_MAGIC, wire.AUDIO_MAGIC) == (FRAME_MAGIC, AUDIO_MAGIC)
    assert wire.SAMPLES_PER_FRAME == 640 and wire.FPS == 25


def test_a_frame_message_parses_to_its_pts_and_jpeg():
    jpeg = b"\xff\xd8\xff\xe0fake jpeg"
    frame = parse_binary(FRAME_HEADER.pack(FRAME_MAGIC, 2**40 + 7) + jpeg, t_recv=1.5)
    assert frame == VideoFrame(2**40 + 7, jpeg) and frame.t_recv == 1.5
    assert VideoFrame(3, b"").sample_span == (1920, 2560)
    assert parse_message(wire.pack_frame(9, jpeg)) == VideoFrame(9, jpeg)


def test_avatar3d_audio_parses_to_its_first_sample():
    item = AudioItem(sample=6400, pcm16=b"\x01\x00" * 320)
    chunk = parse_binary(item.wire())
    assert isinstance(chunk, AudioChunk) and (chunk.sample, chunk.samples, chunk.end_sample) == (6400, 320, 6720)
    assert chunk.cut(6500).samples == 100 and chunk.cut(6400) is None and chunk.cut(9999) == chunk


@pytest.mark.parametrize("message", [b"BODF", b"XXXX" + bytes(8) + b"jpeg", FRAME_HEADER.pack(AUDIO_MAGIC, 0) + b"\x00"])
def test_a_malformed_binary_message_is_a_protocol_error(message):
    with pytest.raises(ProtocolError):
        parse_binary(message)


def test_a_server_event_parses_with_its_fields():
    event = parse_message(SpeechEnded(reason="interrupted", pts=42).wire_text())
    assert isinstance(event, Event) and event.type == "speech_ended" and event.pts == 42
    assert event["reason"] == "interrupted" and event.get("missing", 1) == 1
    with pytest.raises(ProtocolError):
        parse_message("[1, 2]")
    with pytest.raises(ProtocolError):
        parse_message("not json")


def test_an_error_event_raises_as_the_http_error_would():
    event = parse_message(json.dumps({"type": "error", "code": "invalid_event", "error": "x > 1", "reason": "x > 1"}))
    assert event.is_error
    with pytest.raises(LockNBodError) as raised:
        event.raise_for_error()
    assert raised.value.code == "invalid_event" and raised.value.reason == "x > 1" and raised.value.status is None


def test_http_error_bodies_become_typed_errors():
    err = LockNBodError.from_http(503, b'{"error": "full", "code": "too_many_sessions"}', {"retry-after": "30"})
    assert (err.status, err.code, err.reason, err.retry_after) == (503, "too_many_sessions", "full", 30.0)
    assert "503 too_many_sessions: full" in str(err)
    html = LockNBodError.from_http(400, b"<html><body>Bad request</body></html>")
    assert html.code == "http_400" and "Bad request" in html.reason


def test_retract_drops_held_frames_from_its_pts_and_new_ones_replace_them():
    buffer = PlayoutBuffer()
    for pts in (10, 11, 12, 13, 14):
        buffer.add(VideoFrame(pts, b"old"))
    dropped = buffer.retract(12)
    assert [f.pts for f in dropped] == [12, 13, 14] and [f.pts for f in buffer.frames] == [10, 11]
    assert buffer.retracted == 3
    for pts in (12, 13):
        buffer.add(VideoFrame(pts, b"new"))
    buffer.add(VideoFrame(11, b"again"))  # a pts already held: replaced, not doubled
    assert [(f.pts, f.jpeg) for f in buffer.frames] == [(10, b"old"), (11, b"again"), (12, b"new"), (13, b"new")]


def test_frames_are_handed_out_when_due():
    clock = Clock(t0=100.0, fps=25)
    assert clock.due(50) == 102.0 and clock.pts_at(102.01) == 50
    buffer = PlayoutBuffer()
    for pts in range(48, 53):
        buffer.add(VideoFrame(pts, b""))
    assert [f.pts for f in buffer.pop_due(102.0, clock)] == [48, 49, 50]
    assert buffer.pop_due(102.0, clock) == [] and len(buffer) == 2


def test_avatar3d_retract_cuts_audio_from_its_sample():
    buffer = PlayoutBuffer()
    buffer.add_audio(AudioChunk(0, bytes(2 * 640)))
    buffer.add_audio(AudioChunk(640, bytes(2 * 640)))
    buffer.retract(1, sample=960)
    assert [(c.sample, c.samples) for c in buffer.audio] == [(0, 640), (640, 320)]
    buffer.add_audio(AudioChunk(800, bytes(2 * 100)))  # audio re-sent from 800 replaces what followed
    assert [(c.sample, c.samples) for c in buffer.audio] == [(0, 640), (640, 160), (800, 100)]
    assert [c.sample for c in buffer.pop_audio_due(0.049, Clock(0.0))] == [0, 640]


@pytest.mark.parametrize("event", [
    events.emotion("happy", 0.5), events.interrupt(), events.end_of_speech(), events.listening(True),
    events.gaze("camera"), events.gaze("point", 0.5, -0.2), events.pose(10, -5, 3), events.text("Hello."),
    events.words(["hi"], [0], [300]), events.gesture("ok"),
])
def test_control_events_are_what_the_server_takes(event):
    assert CONTROL_EVENT.validate_python(event).type == event["type"]


def test_urls_and_the_client_imports_nothing_heavy():
    client = LockNBodClient("https://example.org:8443/", token="t")
    assert client.ws_url("s1", "client") == "wss://example.org:8443/v1/sessions/s1/ws?pacing=client"
    assert LockNBodClient().ws_url("s1") == "ws://127.0.0.1:8000/v1/sessions/s1/ws"
    import subprocess

    loaded = subprocess.run([sys.executable, "-c", "import sys, lockn_bod_client; "
                             "print(sorted({'numpy', 'pydantic', 'ray', 'torch'} & set(sys.modules)))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_emotion_tags_are_stripped_across_chunks():
    parser = EmotionTagParser()
    pieces = parser.feed("Oh [hap") + parser.feed("py] that's [1] great [sad:0.4]. [thinking:7]Hmm [unclosed")
    assert pieces == ["Oh ", EmotionTag("happy"), "that's [1] great ", EmotionTag("sad", 0.4), ". ",
                      EmotionTag("thinking", 1.0), "Hmm "]
    assert parser.flush() == "[unclosed"
    assert EmotionTagParser.text_of(EmotionTagParser().feed("a [happy] b")) == "a b"
    assert EmotionTagParser().feed("[" + "x" * 40) == ["[" + "x" * 40]  # too long to be a tag
    assert EmotionTagParser({"calm"}).feed("[happy][calm]") == ["[happy]", EmotionTag("calm")]
