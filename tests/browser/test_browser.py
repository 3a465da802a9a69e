"""The page at / in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Uploads a generated portrait, starts a pattern session, plays a generated WAV
and watches the avatar over WebRTC; interrupts; speaks through Chromium's
fake microphone; falls back to MJPEG where WebRTC is missing. A screenshot
goes to artifacts/browser/ under the repository root (git-ignored).
"""
from __future__ import annotations

import time
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.conftest import PROJECT_ROOT
from tests.local_cluster import deploy_app

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.graph,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)"),
]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",  # the microphone test
    "--autoplay-policy=no-user-gesture-required",
]
ARTIFACTS = PROJECT_ROOT / "artifacts" / "browser"
UI_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory):
    args = {
        "data_dir": str(tmp_path_factory.mktemp("data")),
        "enable_test_modes": True,
        "backends": {},
        "limits": {"max_sessions": 4},
        "timeouts": {"disconnect_grace_s": 5},
    }
    return deploy_app(ray_serve, args)


@pytest.fixture
def browser_context(tmp_path):
    from playwright.sync_api import sync_playwright  # CI installs it with the [test] extra

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1200, "height": 900})
        try:
            yield context
        finally:
            context.close()


def portrait_png(path: Path) -> Path:
    """A drawn face: skin oval, eyes, mouth (the still and pattern modes need no real face)."""
    img = Image.new("RGB", (256, 256), (40, 60, 90))
    d = ImageDraw.Draw(img)
    d.ellipse((58, 38, 198, 218), fill=(224, 182, 150))
    d.ellipse((95, 100, 115, 115), fill=(40, 30, 30))
    d.ellipse((141, 100, 161, 115), fill=(40, 30, 30))
    d.arc((100, 140, 156, 180), 20, 160, fill=(150, 50, 50), width=5)
    img.save(path)
    return path


def speech_wav(path: Path, seconds: float, rate_hz: int = 22_050) -> Path:
    """Stereo PCM16 at 22.05 kHz (the page resamples to 16 kHz and mixes down): a wobbling tone."""
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    voice = 0.4 * np.sin(2 * np.pi * (180 + 40 * np.sin(2 * np.pi * 3 * t)) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    pcm = np.rint(np.stack([voice, voice], axis=1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(rate_hz)
        w.writeframes(pcm.tobytes())
    return path


def wait_log(page, text: str) -> None:
    page.wait_for_function("(t) => [...document.querySelectorAll('#log li')].some(li => li.textContent.includes(t))",
                           arg=text, timeout=UI_TIMEOUT_MS)


def upload_and_start(page, base: str, tmp_path: Path, mode: str = "pattern") -> None:
    page.goto(f"{base}/")
    page.wait_for_selector("#mode option[value=pattern]", state="attached", timeout=UI_TIMEOUT_MS)
    page.set_input_files("#persona-file", str(portrait_png(tmp_path / "portrait.png")))
    page.check("#real-person")
    page.fill("#consent", "Generated test face; no real person is shown.")
    page.click("#upload")
    page.wait_for_selector("#persona-id[data-state=ready]", timeout=UI_TIMEOUT_MS)
    page.select_option("#mode", mode)
    page.select_option("#emotion", "happy")
    page.click("#start")


def video_time_s(page) -> float:
    return page.evaluate("() => document.getElementById('video').currentTime")


def only_session(base: str) -> str:
    sessions = httpx.get(f"{base}/v1/sessions").json()["sessions"]
    assert len(sessions) == 1, sessions
    return sessions[0]["session_id"]


def test_page_plays_the_avatar_over_webrtc(app, browser_context, tmp_path):
    page = browser_context.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    upload_and_start(page, app, tmp_path)
    page.wait_for_function("() => document.getElementById('fig-transport').textContent === 'webrtc'",
                           timeout=UI_TIMEOUT_MS)
    page.wait_for_function("() => document.getElementById('video').videoWidth > 0", timeout=UI_TIMEOUT_MS)
    wait_log(page, "mode pattern")
    t_before = video_time_s(page)
    time.sleep(1.0)
    assert video_time_s(page) > t_before + 0.5, "the video element's clock must advance"
    session_id = only_session(app)
    peers = httpx.get(f"{app}/v1/sessions/{session_id}/webrtc").json()["peers"]
    assert [p["connection_state"] for p in peers] == ["connected"]

    # A WAV at real-time pace: the avatar speaks, the page shows its latency.
    page.set_input_files("#wav-file", str(speech_wav(tmp_path / "speech.wav", 2.0)))
    page.click("#play")
    wait_log(page, "speech started")
    wait_log(page, "speech ended")
    latency = page.text_content("#fig-latency")
    assert latency.endswith(" ms"), latency
    fps = float(page.text_content("#fig-fps"))
    assert fps >= 15, f"{fps} frames/s presented"
    assert page.text_content("#fig-mode") == "pattern"
    assert page.text_content("#fig-gpu") != "unknown"  # fetched: a figure or "not reported"

    # The label stays over the video.
    label, screen = page.locator(".ai-label"), page.locator(".screen").bounding_box()
    assert label.is_visible() and label.text_content() == "AI-generated"
    box = label.bounding_box()
    assert screen["x"] <= box["x"] and box["x"] + box["width"] <= screen["x"] + screen["width"]
    assert screen["y"] <= box["y"] and box["y"] + box["height"] <= screen["y"] + screen["height"]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "page-webrtc.png"
    page.screenshot(path=str(shot))
    print(f"screenshot: {shot}")

    # Interrupt a long utterance.
    page.set_input_files("#wav-file", str(speech_wav(tmp_path / "long.wav", 6.0)))
    page.click("#play")
    page.wait_for_function("() => [...document.querySelectorAll('#log li')].filter("
                           "li => li.textContent.includes('speech started')).length >= 2", timeout=UI_TIMEOUT_MS)
    page.click("#interrupt")
    wait_log(page, "speech ended (interrupted)")

    # The fake microphone: PCM goes out over the WebSocket.
    sent_before = int(page.text_content("#fig-sent").split()[0])
    page.click("#mic")
    wait_log(page, "microphone on")
    page.wait_for_function("(n) => parseInt(document.getElementById('fig-sent').textContent) > n + 25",
                           arg=sent_before, timeout=UI_TIMEOUT_MS)
    page.click("#mic")
    wait_log(page, "microphone off")

    page.click("#stop")
    wait_log(page, "session ended")
    assert httpx.get(f"{app}/v1/sessions/{session_id}").status_code == 404
    assert not errors, errors


def test_page_falls_back_to_mjpeg_without_webrtc(app, browser_context, tmp_path):
    browser_context.add_init_script("delete window.RTCPeerConnection;")  # as if WebRTC were blocked
    page = browser_context.new_page()
    upload_and_start(page, app, tmp_path, mode="still")  # the portrait itself, for the screenshot
    page.wait_for_function("() => document.getElementById('fig-transport').textContent === 'mjpeg'",
                           timeout=UI_TIMEOUT_MS)
    page.wait_for_function("() => document.getElementById('mjpeg').naturalWidth > 0", timeout=UI_TIMEOUT_MS)
    page.wait_for_function("() => parseFloat(document.getElementById('fig-fps').textContent) >= 15",
                           timeout=UI_TIMEOUT_MS)
    assert page.locator(".ai-label").is_visible()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "page-mjpeg.png"
    page.screenshot(path=str(shot))
    print(f"screenshot: {shot}")
    page.click("#stop")
    wait_log(page, "session ended")
