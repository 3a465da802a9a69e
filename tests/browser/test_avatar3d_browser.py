"""The avatar3d mode in a real headless Chromium: the page renders a TalkingHead avatar itself.

Picks avatar3d on the real app (no persona), plays speech from a WAV, and checks that
TalkingHead's animation queue holds the server's visemes at their times (within 1 ms of the
playback start of the segment that played them: one, or one more after each stall), that the mood
follows an emotion event, that Interrupt clears the lips, and that the avatar is drawn (a screenshot
under artifacts/browser/); that an utterance whose audio stalls resumes with its cues in time; and that `listening`,
`gaze` and `pose` events reach TalkingHead as the page's docs say (its calls, its animation queue,
the Head bone's rotation on screen). State is read from `window.lockn.avatar3d` ({head, state});
frame rates are never asserted (SwiftShader).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
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
OUTPUT_RATE_HZ = 16_000  # the server's audio clock
LOOK_HOLD_MS = 5000  # how long each held look of the page lasts (its LOOK_REFRESH_MS + 1000)


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


def assert_cues_at_their_times(u: dict, state: dict, sent: list[tuple[str, int, int]]) -> None:
    """Utterance `u`'s cues are in TalkingHead's queue at the server's times, from the start of the
    segment that played them: one segment, or one more after each stall. A segment resumed `shift` ms
    into the utterance is given every cue that ends after `shift` (what reached it before its stall, for
    all but the last), at `vtime - shift`."""
    assert len(u["starts"]) == u["segments"], f"a segment's playback never started: {u['starts']}"
    queued = [c for c in state["cues"] if c["utterance"] == u["id"]]
    for i, start in enumerate(u["starts"]):
        shift = (start["segmentSample"] - u["sample"]) * 1000 / OUTPUT_RATE_HZ
        live = [cue for cue in sent if cue[1] + cue[2] > shift]
        mine = [c for c in queued if c["segmentSample"] == start["segmentSample"]]
        last = i == len(u["starts"]) - 1
        assert len(mine) == len(live) if last else len(mine) <= len(live), (len(mine), len(live), start)
        for cue, (viseme, vtime, vduration) in zip(mine, live):
            assert cue["viseme"] == viseme
            # TalkingHead's keyframes for a viseme at t lasting d: t - 2d/3, t + d/2, t + 3d/2.
            t = start["startClock"] + vtime - shift
            expected = [t - 2 * vduration / 3, t + vduration / 2, t + 1.5 * vduration]
            assert np.allclose(cue["ts"], expected, atol=TIME_TOLERANCE_MS), (viseme, vtime, cue["ts"], start)


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
        if u["segments"] > 1:  # a machine too busy to feed the page (the stall test checks that path)
            print(f"utterance at {u['sample']} stalled and resumed: {u['starts']}")
        assert_cues_at_their_times(u, state, sent)
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


def open_avatar3d(page, app: str) -> None:  # noqa: F811 (app: the fixture's URL)
    """Starts an avatar3d session in the page and waits for its avatar."""
    page.goto(f"{app}/")
    page.wait_for_selector("#mode option[value=avatar3d]:not([disabled])", state="attached", timeout=UI_TIMEOUT_MS)
    page.select_option("#mode", "avatar3d")
    page.click("#start")
    page.wait_for_function(f"() => {A3D} && ['ready', 'error'].includes({A3D}.state.phase)", timeout=LOAD_TIMEOUT_MS)
    state = snapshot(page)
    assert state["phase"] == "ready", f"the avatar did not load: {state['error']}"


GAP_MS = 3500  # longer than TalkingHead waits: its buffer (up to ~1.3 s) drains, then 1 s of silence
# Holds every message of the page's WebSockets while `window.__gap` holds, then hands them on in order:
# a network (or server) that went quiet for a while, and then caught up.
SOCKET_GAP_JS = """(() => {
  const setOnMessage = Object.getOwnPropertyDescriptor(WebSocket.prototype, 'onmessage').set;
  const gap = window.__gap = { holding: false, held: [] };
  gap.hold = (ms) => {
    gap.holding = true;
    setTimeout(() => { gap.holding = false; for (const [handler, msg] of gap.held.splice(0)) handler(msg); }, ms);
  };
  Object.defineProperty(WebSocket.prototype, 'onmessage', {
    configurable: true,
    get() { return this.__handler || null; },
    set(handler) {
      this.__handler = handler;
      setOnMessage.call(this, (msg) => (gap.holding ? gap.held.push([handler, msg]) : handler(msg)));
    },
  });
})()"""
BUSY_JS = "(ms) => { const end = performance.now() + ms; while (performance.now() < end); }"


@pytest.mark.parametrize("cause", ["network", "busy-page"])
def test_a_stalled_utterance_resumes_with_its_cues_in_time(app, browser_context, tmp_path, cause):  # noqa: F811
    """Audio that stops coming for longer than TalkingHead waits ends its stream; the rest of the utterance
    plays as a new segment after a pre-roll, its cues timed from that segment's own start.

    `network`: the page gets nothing for GAP_MS, then all of it at once. `busy-page`: the page's main
    thread is blocked for GAP_MS, so it hands TalkingHead audio after the worklet stopped, which restarts
    it unseen: the page must stop it, or the rest of the utterance plays with still lips."""
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    if cause == "network":
        page.add_init_script(SOCKET_GAP_JS)
    events = record_server_events(page)
    open_avatar3d(page, app)
    page.set_input_files("#wav-file", str(spoken_wav(tmp_path / "long.wav", LONG_TEXT, 8.0)))
    page.click("#play")
    page.wait_for_function(f"""() => {A3D}.snapshot().utterances.some(
        u => u.starts.length && performance.now() - u.startedAt > 500)""", timeout=SPEECH_TIMEOUT_MS)
    page.evaluate("(ms) => window.__gap.hold(ms)" if cause == "network" else BUSY_JS, GAP_MS)

    def all_played() -> bool:
        # The page first: Playwright's sync API records the socket's frames only while it is called.
        done = page.evaluate(f"() => {A3D}.snapshot().utterances.every(u => u.done)")
        started = sum(e.get("type") == "speech_started" for e in events)
        return done and started == sum(e.get("type") == "speech_ended" for e in events)

    wait_until(page, all_played, SPEECH_TIMEOUT_MS, "every utterance to play to its end")
    state = snapshot(page)
    assert state["stalls"] >= 1, "the gap did not stall TalkingHead's stream"
    assert not any(u["cancelled"] for u in state["utterances"])
    assert any(u["segments"] > 1 for u in state["utterances"]), state["utterances"]
    for u in state["utterances"]:
        sent = server_visemes(events, u["sample"])
        assert [(v["viseme"], v["vtime"], v["vduration"]) for v in u["visemes"]] == sent
        assert_cues_at_their_times(u, state, sent)
    wait_until(page, lambda: lips_clear(page), 10_000, "the lips to rest after the speech")
    assert not errors, errors


def spy_on_head(page) -> None:
    """Records TalkingHead's look calls in window.__calls: {fn, args}."""
    page.evaluate(f"""() => {{
        const head = {A3D}.head;
        window.__calls = [];
        for (const fn of ['lookAt', 'lookAtCamera', 'makeEyeContact']) {{
            const original = head[fn].bind(head);
            head[fn] = (...args) => {{ window.__calls.push({{ fn, args }}); return original(...args); }};
        }}
    }}""")


def calls(page, fn: str) -> list[list]:
    return page.evaluate(f"() => window.__calls.filter(c => c.fn === '{fn}').map(c => c.args)")


def held(page, name: str) -> dict | None:
    """TalkingHead's queued animation `name`: {"left": ms it still runs, "length": ms in all}; None
    when none is queued."""
    return page.evaluate(f"""() => {{
        const head = {A3D}.head;
        const anim = head.animQueue.find(a => a.template.name === '{name}');
        return anim ? {{ left: anim.ts[anim.ts.length - 1] - head.animClock,
                         length: anim.ts[anim.ts.length - 1] - anim.ts[0] }} : null;
    }}""")


def holds(page, name: str) -> bool:
    """TalkingHead runs `name` for at least the page's hold, and still does."""
    anim = held(page, name)
    return anim is not None and anim["length"] >= LOOK_HOLD_MS - 1 and anim["left"] > 0  # ts: floats from animClock


# Where a point in front of the face, and one above the head, move on screen when the page's pose
# offset is taken off the Head bone (as TalkingHead set it this frame) and put back on: the offset's
# effect alone, whatever TalkingHead's own head motion is doing meanwhile.
POSE_ON_SCREEN_JS = """async () => {
    const { Euler, Matrix4, Quaternion, Vector3 } = await import('three');
    const a3d = window.lockn.avatar3d, head = a3d.head, bone = head.objectHead, camera = head.camera;
    const p = a3d.state.poseApplied, deg = Math.PI / 180;
    const offset = new Quaternion().setFromEuler(new Euler(p.pitch * deg, p.yaw * deg, -p.roll * deg, 'YXZ'));
    bone.updateWorldMatrix(true, false);
    const parent = bone.parent.matrixWorld;
    const withPose = new Matrix4().multiplyMatrices(parent, new Matrix4().compose(bone.position, bone.quaternion, bone.scale));
    const without = bone.quaternion.clone().multiply(offset.clone().invert());
    const withoutPose = new Matrix4().multiplyMatrices(parent, new Matrix4().compose(bone.position, without, bone.scale));
    const centre = new Vector3().setFromMatrixPosition(withoutPose);
    const toCamera = camera.position.clone().sub(centre).normalize();
    const points = { front: centre.clone().addScaledVector(toCamera, 0.2), top: centre.clone().add(new Vector3(0, 0.2, 0)) };
    const inverse = withoutPose.clone().invert();
    const moved = {};
    for (const [name, world] of Object.entries(points)) {
        const before = world.clone().project(camera);
        const after = world.clone().applyMatrix4(inverse).applyMatrix4(withPose).project(camera);
        moved[name] = [after.x - before.x, after.y - before.y];  // NDC: x to the right, y up
    }
    return moved;
}"""


def test_listening_gaze_and_pose_steer_the_3d_avatar(app, browser_context):  # noqa: F811
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    events = record_server_events(page)
    open_avatar3d(page, app)
    spy_on_head(page)
    sid = next(e for e in events if e.get("type") == "session_ready")["session_id"]

    def send(body: dict) -> None:
        r = httpx.post(f"{app}/v1/sessions/{sid}/events", json=body, timeout=10)
        assert r.status_code < 300, r.text

    def wait_state(expression: str, what: str, timeout_ms: int = 10_000) -> None:
        try:
            page.wait_for_function(f"() => {{ const s = {A3D}.state; return {expression}; }}", timeout=timeout_ms)
        except Exception as err:
            raise AssertionError(f"timed out waiting for {what}: {snapshot(page)}") from err

    # Listening: the head settles facing the viewer, the eyes keep contact, a nod every 2-6 s; held
    # past the page's refresh; off again on `active: false`.
    send({"type": "listening", "active": True})
    wait_state("s.listening && s.look === 'listening'", "listening")
    assert holds(page, "lockn-listening")
    wait_state("s.nods >= 1", "a listening nod", timeout_ms=8000)
    time.sleep(4.5)  # past LOOK_REFRESH_MS: still held, and the head has stopped wandering
    assert holds(page, "lockn-listening")
    still = page.evaluate(f"() => ['X', 'Y', 'Z'].map(a => {A3D}.head.mtAvatar['bodyRotate' + a].value)")
    assert all(abs(v) < 0.1 for v in still), still  # TalkingHead's idle wander reaches ±0.3 in Y
    send({"type": "listening", "active": False})
    wait_state("!s.listening && s.look === null", "listening off")
    assert held(page, "lockn-listening") is None
    nods = snapshot(page)["nods"]
    assert page.evaluate(f"() => {A3D}.nodTimer") is None

    # Gaze at a point: TalkingHead's lookAt at that point of the canvas, held and refreshed.
    send({"type": "gaze", "target": "point", "x": 0.6, "y": -0.4})
    wait_state("s.look === 'point'", "the gaze point")
    rect = page.locator("#avatar3d").bounding_box()
    x, y, hold = calls(page, "lookAt")[-1]
    assert x == pytest.approx(rect["x"] + 0.8 * rect["width"], abs=1)
    assert y == pytest.approx(rect["y"] + 0.7 * rect["height"], abs=1)
    assert hold == LOOK_HOLD_MS and holds(page, "lookat")
    time.sleep(5.0)
    assert len(calls(page, "lookAt")) >= 2, "the held look is refreshed"
    target = page.evaluate(f"""() => {{
        const a = {A3D}.head.animQueue.find(a => a.template.name === 'lookat');
        return a.vs.bodyRotateY[a.vs.bodyRotateY.length - 1];
    }}""")
    if held(page, "lookat")["left"] < LOOK_HOLD_MS - 1500:  # not just refreshed: the head has reached it
        value = page.evaluate(f"() => {A3D}.head.mtAvatar.bodyRotateY.value")
        assert value == pytest.approx(target, abs=0.02)
    send({"type": "gaze", "target": "away"})
    wait_state("s.gaze && s.gaze.target === 'away'", "gaze away")
    x, y, _ = calls(page, "lookAt")[-1]
    assert (x, y) == (pytest.approx(rect["x"] + 0.85 * rect["width"], abs=1),
                      pytest.approx(rect["y"] + 0.275 * rect["height"], abs=1))

    # Gaze at the camera: eye contact held (the head keeps its idle motion); the lookAt is dropped.
    send({"type": "gaze", "target": "camera"})
    wait_state("s.look === 'camera'", "gaze camera")
    assert calls(page, "makeEyeContact")[-1][0] == LOOK_HOLD_MS
    assert holds(page, "eyecontact") and held(page, "lookat") is None

    # Pose: the Head bone turns by the offset, eased; yaw to the viewer's right, pitch down, roll with
    # the top of the head to the viewer's right.
    for axis, field, limit in (("yaw", "yaw_deg", 30), ("pitch", "pitch_deg", 20), ("roll", "roll_deg", 20)):
        send({"type": "pose", field: limit * 0.75})
        wait_state(f"Math.abs(s.poseApplied.{axis} - {limit * 0.75}) < 0.2", f"the pose's {axis}")
        moved = page.evaluate(POSE_ON_SCREEN_JS)
        print(f"pose {axis} {limit * 0.75}°: on screen (NDC) {moved}")
        if axis == "yaw":
            assert moved["front"][0] > 0.02, moved  # the face turns to the viewer's right
        elif axis == "pitch":
            assert moved["front"][1] < -0.02, moved  # ... tips down
        else:
            assert moved["top"][0] > 0.02, moved  # the top of the head leans to the viewer's right
    send({"type": "pose"})
    wait_state("Object.values(s.poseApplied).every(v => Math.abs(v) < 0.05)", "the head back at rest")

    # HeadAudio, where it attaches, is still updated each frame (the page's frame hook calls it).
    if page.evaluate(f"async () => {{ await {A3D}.setHeadAudio(true); return !!{A3D}.headAudio; }}"):
        page.evaluate(f"""() => {{
            const node = {A3D}.headAudio, update = node.update.bind(node);
            window.__headAudioUpdates = 0;
            node.update = (dt) => {{ window.__headAudioUpdates += 1; return update(dt); }};
        }}""")
        page.wait_for_function("() => window.__headAudioUpdates >= 3", timeout=10_000)
        page.evaluate(f"() => {A3D}.setHeadAudio(false)")

    sent = [e["type"] for e in events if e.get("type") in ("listening", "gaze", "pose")]
    assert sent == ["listening", "listening", "gaze", "gaze", "gaze", "pose", "pose", "pose", "pose"], sent
    assert snapshot(page)["nods"] == nods, "no nods after listening ended"
    assert not errors, errors
    page.click("#stop")
    wait_log(page, "session ended")

