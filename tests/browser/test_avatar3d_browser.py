"""The avatar3d mode in a real headless Chromium: the page renders a TalkingHead avatar itself.

Picks avatar3d on the real app (no persona), plays speech from a WAV, and checks that
TalkingHead's animation queue holds the server's visemes at their times (within 1 ms of the
utterance's playback start), that the mood follows an emotion event, that Interrupt clears the
lips, and that the avatar is drawn (a screenshot under artifacts/browser/). State is read
from `window.lockn.avatar3d` ({head, state}); frame rates are never asserted (SwiftShader).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# app and browser_context are the fixtures of the existing browser test, requested by name below.
from tests.browser.test_browser import (  # noqa: F401
    ARTIFACTS,
    CHROMIUM,
    UI_TIMEOUT_MS,
    app,
    browser_context,
    speech_wav,
    wait_log,
)

pytestmark = [
    pytest.mark.graph,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)"),
]
LOAD_TIMEOUT_MS = 120_000  # the GLB is parsed and the first frames drawn by SwiftShader on a busy CPU
SPEECH_TIMEOUT_MS = 90_000
TIME_TOLERANCE_MS = 1.0
SHORT_TEXT = "The quick brown fox jumps over the lazy dog."
LONG_TEXT = ("Peter Piper picked a peck of pickled peppers. A peck of pickled peppers Peter Piper picked. "
             "If Peter Piper picked a peck of pickled peppers, where is the peck Peter Piper picked?")
A3D = "(window.lockn && window.lockn.avatar3d)"


def spoken_wav(path: Path, text: str, seconds: float) -> Path:
    """Speech from espeak-ng where installed, else the synthetic wobbling tone of test_browser."""
    if shutil.which("espeak-ng") is None:
        return speech_wav(path, seconds)
    from tests.speech import espeak_wav  # imports scipy; only needed here

    return espeak_wav(text, path)


def record_server_events(page) -> list[dict]:
    """The server's JSON messages on the session's WebSocket, as Chromium received them."""
    events: list[dict] = []

    def on_socket(ws):
        def on_frame(payload):
            if isinstance(payload, str):
                events.append(json.loads(payload))
        ws.on("framereceived", on_frame)

    page.on("websocket", on_socket)
    return events


def snapshot(page) -> dict:
    return page.evaluate(f"() => {A3D}.snapshot()")


def watch_viseme_anims(page) -> None:
    """Sample head.animQueue's viseme animations every 20 ms inside the page (a round trip
    from the test each time could miss a short utterance on a busy machine)."""
    page.evaluate(f"""() => {{
        window.__liveVisemes = [];
        window.__liveTimer = setInterval(() => {{
            const head = {A3D} && {A3D}.head;
            const anims = head ? head.animQueue.filter(a => a.template.name === 'viseme') : [];
            if (anims.length) window.__liveVisemes.push(anims.map(a => a.ts.slice()));
        }}, 20);
    }}""")


def watched_viseme_anims(page) -> list[list[list[float]]]:
    """What watch_viseme_anims saw (and stop watching)."""
    return page.evaluate("() => { clearInterval(window.__liveTimer); return window.__liveVisemes; }")


def lips_clear(page) -> bool:
    return page.evaluate(f"""() => {{
        const head = {A3D}.head;
        const queued = head.animQueue.some(a => a.template.name === 'viseme');
        const open = Object.entries(head.mtAvatar).some(([k, v]) => k.startsWith('viseme_') && v.value > 0.05);
        return !queued && !open;
    }}""")


def wait_until(page, predicate, timeout_ms: int, what: str, poll_s: float = 0.1):
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


def server_visemes(events: list[dict], sample: int) -> list[tuple[str, int, int]]:
    cues = []
    for e in events:
        if e.get("type") == "visemes" and e.get("sample") == sample:
            cues += list(zip(e["visemes"], e["vtimes"], e["vdurations"]))
    return cues


def assert_not_blank(path: Path) -> None:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    background = pixels[2, 2]
    differs = np.abs(pixels - background).sum(axis=2) > 30
    assert differs.mean() > 0.02, f"{path}: only {differs.mean():.1%} of the avatar area is drawn"
    assert pixels.std() > 5, f"{path}: flat image (std {pixels.std():.1f})"


@pytest.mark.parametrize("context_rate", [None, 48000], ids=["16kHz", "forced-48kHz"])
def test_page_lip_syncs_a_3d_avatar(app, browser_context, tmp_path, context_rate):  # noqa: F811
    """`forced-48kHz`: the AudioContext runs at 48 kHz, as Safari forces: the page resamples."""
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    events = record_server_events(page)

    # avatar3d needs no persona: Start is enabled as soon as the mode is picked.
    page.goto(f"{app}/" + (f"?a3d_rate={context_rate}" if context_rate else ""))
    page.wait_for_selector("#mode option[value=avatar3d]:not([disabled])", state="attached", timeout=UI_TIMEOUT_MS)
    page.select_option("#mode", "avatar3d")
    page.select_option("#emotion", "neutral")
    assert page.is_visible("#headaudio-label")
    assert page.is_enabled("#start"), "avatar3d must start without a persona"
    page.click("#start")

    page.wait_for_function("() => document.getElementById('fig-transport').textContent === 'websocket-3d'",
                           timeout=UI_TIMEOUT_MS)
    wait_log(page, "mode avatar3d")
    page.wait_for_function(f"() => {A3D} && ['ready', 'error'].includes({A3D}.state.phase)", timeout=LOAD_TIMEOUT_MS)
    state = snapshot(page)
    assert state["phase"] == "ready", f"the avatar did not load: {state['error']}"
    assert state["contextRate"] == (context_rate or 16000), state["contextRate"]
    assert state["resampling"] == bool(context_rate)
    ready = next(e for e in events if e.get("type") == "session_ready")
    assert ready["mode"] == "avatar3d" and ready["avatar_url"]
    assert page.is_hidden("#video") and page.is_hidden("#mjpeg")
    assert page.locator("#avatar3d canvas").count() == 1

    # The AI label stays over the avatar.
    label, screen = page.locator(".ai-label"), page.locator(".screen").bounding_box()
    assert label.is_visible() and label.text_content() == "AI-generated"
    box = label.bounding_box()
    assert screen["x"] <= box["x"] and box["x"] + box["width"] <= screen["x"] + screen["width"]
    assert screen["y"] <= box["y"] and box["y"] + box["height"] <= screen["y"] + screen["height"]

    # Speech: the server's visemes reach TalkingHead's queue at their times.
    page.set_input_files("#wav-file", str(spoken_wav(tmp_path / "short.wav", SHORT_TEXT, 3.0)))
    watch_viseme_anims(page)
    page.click("#play")

    def one_utterance_done() -> bool:
        return page.evaluate(f"() => {A3D}.snapshot().utterances.some(u => u.done && !u.cancelled)")

    wait_until(page, one_utterance_done, SPEECH_TIMEOUT_MS, "an utterance to play to its end")
    live = watched_viseme_anims(page)
    wait_log(page, "speech ended")
    state = snapshot(page)
    played = [u for u in state["utterances"] if u["done"] and not u["cancelled"]]
    checked = 0
    for u in played:
        sent = server_visemes(events, u["sample"])
        received = [(v["viseme"], v["vtime"], v["vduration"]) for v in u["visemes"]]
        assert received == sent, "the page must hold every visemes message the server sent"
        if not sent:
            continue
        assert u["segments"] == 1, f"utterance at {u['sample']} stalled and restarted ({u['segments']} segments)"
        assert u["startClock"] is not None, "playback never started"
        queued = [c for c in state["cues"] if c["utterance"] == u["id"]]
        assert len(queued) == len(sent), (len(queued), len(sent))
        start = u["startClock"]
        for cue, (viseme, vtime, vduration) in zip(queued, sent):
            assert cue["viseme"] == viseme
            # TalkingHead's keyframes for a viseme at t lasting d: t - 2d/3, t + d/2, t + 3d/2.
            t = start + vtime
            expected = [t - 2 * vduration / 3, t + vduration / 2, t + 1.5 * vduration]
            assert np.allclose(cue["ts"], expected, atol=TIME_TOLERANCE_MS), (viseme, vtime, cue["ts"], start)
        checked += 1
    assert checked >= 1, f"no utterance with visemes played: {state['utterances']}"
    # What was seen live in head.animQueue is what the page recorded from it.
    recorded = {tuple(round(t, 3) for t in c["ts"]) for c in state["cues"]}
    seen = [tuple(round(t, 3) for t in ts) for anims in live for ts in anims]
    assert seen, f"head.animQueue never held a viseme while speaking: {len(live)} samples, {played}"
    assert all(ts in recorded for ts in seen)

    # The avatar is drawn.
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"page-avatar3d-{context_rate or 16000}.png"
    page.screenshot(path=str(shot))
    canvas_shot = ARTIFACTS / f"page-avatar3d-canvas-{context_rate or 16000}.png"
    page.locator("#avatar3d").screenshot(path=str(canvas_shot))
    assert_not_blank(canvas_shot)
    print(f"screenshot: {shot}")

    # The mood follows an emotion event, scaled by its intensity.
    page.evaluate("() => { const i = document.getElementById('intensity'); i.value = '0.5'; }")
    page.select_option("#emotion", "happy")
    page.wait_for_function(f"() => {A3D}.head.moodName === 'happy'", timeout=UI_TIMEOUT_MS)
    mood = next(e for e in reversed(events) if e.get("type") == "mood")
    assert mood["mood"] == "happy" and mood["intensity"] == pytest.approx(0.5), mood
    state = snapshot(page)
    assert state["mood"]["mood"] == "happy" and state["mood"]["intensity"] == pytest.approx(0.5)
    smile = page.evaluate(f"() => {A3D}.head.mtAvatar.mouthSmile?.baseline ?? null")
    if smile is not None:  # happy's baseline mouthSmile 0.2, at half strength
        assert smile == pytest.approx(0.1, abs=0.01), smile

    # Interrupt a long utterance: the lips clear.
    page.set_input_files("#wav-file", str(spoken_wav(tmp_path / "long.wav", LONG_TEXT, 8.0)))
    page.click("#play")
    page.wait_for_function(f"""() => {A3D}.head.isSpeaking
        && {A3D}.head.animQueue.some(a => a.template.name === 'viseme')""", timeout=SPEECH_TIMEOUT_MS)
    page.click("#interrupt")
    wait_until(page, lambda: lips_clear(page), 10_000, "the lips to clear after Interrupt")
    wait_log(page, "speech ended (interrupted)")
    assert any(e.get("type") == "retract" for e in events), "the server retracts what it sent ahead"
    time.sleep(1.0)  # nothing of the interrupted utterance plays on
    assert lips_clear(page) and not page.evaluate(f"() => {A3D}.head.isSpeaking")

    page.click("#stop")
    wait_log(page, "session ended")
    assert page.evaluate("() => window.lockn.avatar3d") is None
    assert not errors, errors
