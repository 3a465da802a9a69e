"""The typed WebSocket protocol (deployments/api/protocol.py): each message's JSON is what
clients got before the models, docs/api.md lists every `type`, and /v1/protocol.json
describes them all (no Ray cluster)."""
from __future__ import annotations

import asyncio
import json
import pickle
import re
import typing
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from deployments.api.errors import ServiceError, error_event
from deployments.api.protocol import (
    CONTROL_EVENT,
    FRAME_HEADER,
    FRAME_MAGIC,
    SERVER_EVENT,
    ClockEvent,
    ControlEvent,
    EmotionEvent,
    EndItem,
    EndOfSpeechEvent,
    EventItem,
    FramesItem,
    GazeCue,
    GestureCue,
    InterruptEvent,
    ListeningCue,
    ModeChanged,
    MoodEvent,
    PoseCue,
    RetractEvent,
    RetractItem,
    ServerMessage,
    SessionClosed,
    SessionReady,
    SpeechEnded,
    SpeechStarted,
    VisemesEvent,
    WarningEvent,
    WordsCue,
    protocol_schema,
)
from deployments.router import RouterImpl, _parse_event, api
from deployments.session.clock import SessionClock
from deployments.session.engine import Viewer
from deployments.transports.streams import ahead

API_MD = Path(__file__).resolve().parents[2] / "docs" / "api.md"
PLACEMENT = {"action": "admit", "code": "admitted", "reason": "room", "target": "ditto", "eta_s": None}

# Each server event as the session engine, the relays and the Router built it as a dict
# before the models: the JSON a client receives must not change.
TODAYS_JSON = [
    (SessionReady(session_id="h.x", mode="still", requested_mode="ditto", fps=25, sample_rate_hz=16000),
     {"type": "session_ready", "session_id": "h.x", "mode": "still", "requested_mode": "ditto", "fps": 25,
      "sample_rate_hz": 16000}),
    (SessionReady(session_id="h.x", mode="still", requested_mode="ditto", fps=25, sample_rate_hz=16000,
                  placement=PLACEMENT),
     {"type": "session_ready", "session_id": "h.x", "mode": "still", "requested_mode": "ditto", "fps": 25,
      "sample_rate_hz": 16000, "placement": PLACEMENT}),
    (ClockEvent(t0=1754.25, fps=25), {"type": "clock", "t0": 1754.25, "fps": 25}),
    (ModeChanged(mode="ditto", reason="backend ready", pts=40),
     {"type": "mode_changed", "mode": "ditto", "reason": "backend ready", "pts": 40}),
    (SpeechStarted(pts=12), {"type": "speech_started", "pts": 12}),
    (SpeechEnded(pts=30), {"type": "speech_ended", "pts": 30}),
    (SpeechEnded(reason="interrupted", pts=31), {"type": "speech_ended", "reason": "interrupted", "pts": 31}),
    (RetractEvent(from_pts=7), {"type": "retract", "from_pts": 7}),
    (error_event("no_face", "ditto: no face"),
     {"type": "error", "code": "no_face", "error": "ditto: no face", "reason": "ditto: no face"}),
    (ServiceError("bad_pacing", "pacing must be client or server").to_event(),
     {"type": "error", "code": "bad_pacing", "error": "pacing must be client or server",
      "reason": "pacing must be client or server"}),
    (WarningEvent(code="several_faces", reason="3 faces; the largest is used"),
     {"type": "warning", "code": "several_faces", "reason": "3 faces; the largest is used"}),
    (SessionClosed(reason="idle timeout"), {"type": "session_closed", "reason": "idle timeout"}),
    # avatar3d (new with it: no JSON before the models)
    (SpeechStarted(pts=12, sample=7680), {"type": "speech_started", "pts": 12, "sample": 7680}),
    (RetractEvent(from_pts=7, sample=4480), {"type": "retract", "from_pts": 7, "sample": 4480}),
    (VisemesEvent(sample=7680, visemes=["sil", "PP"], vtimes=[0, 80], vdurations=[80, 60]),
     {"type": "visemes", "sample": 7680, "visemes": ["sil", "PP"], "vtimes": [0, 80], "vdurations": [80, 60]}),
    (WordsCue(sample=7680, words=["hi"], wtimes=[0], wdurations=[300]),
     {"type": "words", "sample": 7680, "words": ["hi"], "wtimes": [0], "wdurations": [300]}),
    (MoodEvent(emotion="surprised", intensity=0.9, mood="neutral", expression="😱"),
     {"type": "mood", "emotion": "surprised", "intensity": 0.9, "mood": "neutral", "expression": "😱",
      "speaking": False}),
    (GestureCue(name="ok", duration_s=3.0, mirror=False),
     {"type": "gesture", "name": "ok", "duration_s": 3.0, "mirror": False}),
    (ListeningCue(active=True), {"type": "listening", "active": True}),
    (GazeCue(target="away", x=0.7, y=0.45), {"type": "gaze", "target": "away", "x": 0.7, "y": 0.45}),
    (PoseCue(yaw_deg=10.0, pitch_deg=-5.0, roll_deg=0.0),
     {"type": "pose", "yaw_deg": 10.0, "pitch_deg": -5.0, "roll_deg": 0.0}),
]


def _union_models(union) -> list[type]:
    """The models of a discriminated union (`Annotated[Union[...], Field(...)]`)."""
    return list(typing.get_args(typing.get_args(union)[0]))


def _type_of(model: type) -> str:
    return typing.get_args(model.model_fields["type"].annotation)[0]


def _documented(heading: str) -> dict[str, set[str]]:
    """The table under `### heading` (or `## heading`) in docs/api.md: each row's backticked
    `type` -> the backticked names in its fields cell."""
    rows, current = {}, None
    for line in API_MD.read_text().splitlines():
        if line.startswith("#"):
            current = line.lstrip("#").strip()
            continue
        row = re.match(r"\|\s*`(\w+)`\s*\|([^|]*)\|", line)
        if current == heading and row:
            rows[row.group(1)] = set(re.findall(r"`(\w+)`", row.group(2)))
    return rows


@pytest.mark.parametrize("heading, union", [("Control events", ControlEvent), ("Server events", ServerMessage)])
def test_every_documented_event_has_a_model_and_every_model_is_documented_with_its_fields(heading, union):
    documented = _documented(heading)
    models = {_type_of(m): m for m in _union_models(union)}
    assert sorted(documented) == sorted(models), f"docs/api.md '{heading}' and the models differ"
    for kind, model in models.items():
        missing = set(model.model_fields) - {"type"} - documented[kind]
        assert not missing, f"docs/api.md '{heading}': `{kind}` does not name its fields {sorted(missing)}"


def test_every_server_event_model_has_an_example_of_its_json():
    assert {e.type for e, _ in TODAYS_JSON} == {_type_of(m) for m in _union_models(ServerMessage)}


@pytest.mark.parametrize("event, today", TODAYS_JSON, ids=[e.type for e, _ in TODAYS_JSON])
def test_an_events_websocket_text_is_byte_for_byte_todays(event, today):
    assert event.wire_text() == json.dumps(today)


@pytest.mark.parametrize("event, today", TODAYS_JSON, ids=[e.type for e, _ in TODAYS_JSON])
def test_an_event_round_trips_through_its_json_and_through_pickle(event, today):
    assert SERVER_EVENT.validate_json(event.wire_text()) == event
    item = EventItem(event, t0=12.5)
    assert pickle.loads(pickle.dumps(item)) == item  # items cross Ray by pickle
    assert item.pts == today.get("pts")


@pytest.mark.parametrize("text, model", [
    ('{"type": "emotion", "value": "happy", "intensity": 0.8}', EmotionEvent(value="happy", intensity=0.8)),
    ('{"type": "emotion", "value": "sad"}', EmotionEvent(value="sad", intensity=1.0)),
    ('{"type": "interrupt"}', InterruptEvent()),
    ('{"type": "end_of_speech"}', EndOfSpeechEvent()),
])
def test_a_control_event_parses_to_its_model_and_back(text, model):
    assert CONTROL_EVENT.validate_json(text) == model == _parse_event(text.encode())
    assert CONTROL_EVENT.validate_json(json.dumps(model.model_dump())) == model


@pytest.mark.parametrize("text", [
    '{"type": "interrupt", "now": true}',
    '{"type": "end_of_speech", "pts": 3}',
    '{"type": "emotion", "value": "happy", "colour": "red"}',
    '{"type": "emotion", "value": "happy", "intensity": 3}',
    '{"type": "emotion"}',
    '{"type": "dance"}',
    '{"value": "happy"}',
    '[]',
])
def test_a_client_message_with_an_unknown_field_or_type_is_refused(text):
    with pytest.raises(ValidationError):
        CONTROL_EVENT.validate_json(text)
    with pytest.raises(ServiceError) as refused:
        _parse_event(text.encode())
    assert refused.value.code == "invalid_event"


def test_the_router_normalises_an_emotion_and_refuses_an_unknown_one():
    assert _parse_event(b'{"type": "emotion", "value": "joy"}') == EmotionEvent(value="happy")
    with pytest.raises(ServiceError) as refused:
        _parse_event(b'{"type": "emotion", "value": "smug"}')
    assert refused.value.code == "unknown_emotion"


class _RecordingSocket:
    def __init__(self):
        self.sent: list[str | bytes] = []

    async def send_text(self, text: str) -> None:
        self.sent.append(text)

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)


def test_the_router_writes_frames_as_bodf_jpeg_and_events_as_their_json():
    items = [EventItem(SessionReady(session_id="h.x", mode="still", requested_mode="still", fps=25,
                                    sample_rate_hz=16000), 3.0),
             FramesItem(3.0, [0, 1], [b"\xff\xd8zero", b"\xff\xd8one"]), EventItem(SpeechStarted(pts=1), 3.0),
             RetractItem(1), EndItem("closed by client")]

    async def main():
        async def source():
            for item in items:
                yield item

        ws = _RecordingSocket()
        await RouterImpl._ws_out(None, ws, ahead(source()), asyncio.Lock())
        return ws.sent

    sent = asyncio.run(main())
    assert sent == [
        '{"type": "clock", "t0": 3.0, "fps": 25}',
        '{"type": "session_ready", "session_id": "h.x", "mode": "still", "requested_mode": "still", "fps": 25, '
        '"sample_rate_hz": 16000}',
        FRAME_HEADER.pack(FRAME_MAGIC, 0) + b"\xff\xd8zero", FRAME_HEADER.pack(FRAME_MAGIC, 1) + b"\xff\xd8one",
        '{"type": "speech_started", "pts": 1}',
        '{"type": "retract", "from_pts": 1}',
        '{"type": "session_closed", "reason": "closed by client"}',
    ]


def test_protocol_json_is_served_next_to_openapi_json():
    assert "/v1/protocol.json" in api.openapi()["paths"]


def test_protocol_json_names_every_message_and_both_binary_formats():
    schema = json.loads(json.dumps(protocol_schema()))  # as served: plain JSON
    client, server = schema["client_to_server"], schema["server_to_client"]
    assert set(client["text"]["discriminator"]["mapping"]) == {"emotion", "interrupt", "end_of_speech", "text",
                                                               "words", "gesture", "listening", "gaze", "pose"}
    assert set(server["text"]["discriminator"]["mapping"]) == {e.type for e, _ in TODAYS_JSON}
    assert all(ref.removeprefix("#/$defs/") in schema["$defs"]
               for side in (client, server) for ref in side["text"]["discriminator"]["mapping"].values())
    assert "PCM16LE" in client["binary"]["description"] and "sample_rate_hz" in client["binary"]["description"]
    assert "`<4sQ`" in server["binary"]["description"] and "BODF" in server["binary"]["description"]
    assert "BODA" in server["binary"]["description"]
    assert (server["binary"]["x-struct"], server["binary"]["x-magic"]) == ("<4sQ", "BODF")
    assert all("type" in schema["$defs"][name]["required"] for name in schema["$defs"])


def test_protocol_json_accepts_todays_messages_and_refuses_others():
    jsonschema = pytest.importorskip("jsonschema")
    schema = protocol_schema()

    def validator(side: str):
        return jsonschema.Draft202012Validator({"$defs": schema["$defs"], **schema[side]["text"]})

    server, client = validator("server_to_client"), validator("client_to_server")
    for _, today in TODAYS_JSON:
        server.validate(today)
    client.validate({"type": "emotion", "value": "happy", "intensity": 0.5})
    client.validate({"type": "interrupt"})
    assert not server.is_valid({"type": "speech_started", "pts": 1, "extra": 2})
    assert not server.is_valid({"pts": 1})
    assert not client.is_valid({"type": "interrupt", "now": True})
    assert not client.is_valid({"type": "emotion", "value": "happy", "intensity": 2})


def test_a_webrtc_feed_reads_the_typed_items():
    webrtc = pytest.importorskip("deployments.transports.webrtc")
    viewer = Viewer(want_audio=True, queue=asyncio.Queue(), want_raw=True)
    feed = webrtc.SessionFeed(viewer, SessionClock())
    frames, audio = np.zeros((3, 4, 4, 3), np.uint8), np.zeros((3, 640), np.float32)

    async def main():
        feed._ingest(FramesItem(feed.clock.t0, [0, 1, 2], [b"a", b"b", b"c"], audio=audio, frames=frames))
        kept = sorted(feed._frames)
        feed._ingest(RetractItem(1))
        after_retract = sorted(feed._frames)
        feed._ingest(EndItem("idle timeout"))
        return kept, after_retract

    assert asyncio.run(main()) == ([0, 1, 2], [0])
    assert feed.end_reason == "idle timeout"
