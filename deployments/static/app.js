// LockN Bod page: upload a persona, start a session, send speech over the WebSocket,
// watch over WebRTC (MJPEG in an <img> when WebRTC fails). Plain ES module, no build step.
// In the avatar3d mode the server sends audio and lip-sync cues instead of video, and
// avatar3d.js (loaded only then) renders a TalkingHead avatar in the page.

const SESSION_RATE_HZ = 16000; // WAV and microphone audio are resampled to this in the browser
const CHUNK_S = 0.1; // WAV playback is sent in 100 ms chunks at real-time pace
const ICE_GATHER_TIMEOUT_MS = 5000;
const CONNECT_TIMEOUT_MS = 10000;
const GPU_POLL_MS = 5000;
const FPS_WINDOW_MS = 1000;
const LOG_LINES = 50;
const AVATAR3D = "avatar3d";
const EMOTIONS = ["neutral", "happy", "sad", "angry", "surprised", "thinking",
  "disgust", "fear", "surprise", "contempt"];

const $ = (id) => document.getElementById(id);

function log(message, isError = false) {
  const item = document.createElement("li");
  item.textContent = `${new Date().toLocaleTimeString()} ${message}`;
  if (isError) item.className = "error";
  const list = $("log");
  list.prepend(item);
  while (list.children.length > LOG_LINES) list.lastChild.remove();
}

// The server's API token, where it has one (edge.api_token): opened as /#token=<token>, the
// page keeps it for this tab and takes it out of the address bar. A fragment never reaches
// the server or its logs. WebSocket and <img> URLs cannot carry a header: they take it as a
// query parameter.
const TOKEN_KEY = "lockn-bod-token";
const TOKEN = readToken();

function readToken() {
  const fromUrl = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function withAuth(options = {}) {
  if (!TOKEN) return options;
  return { ...options, headers: { ...(options.headers || {}), authorization: `Bearer ${TOKEN}` } };
}

function withToken(url) {
  if (!TOKEN) return url;
  return `${url}${url.includes("?") ? "&" : "?"}access_token=${encodeURIComponent(TOKEN)}`;
}

async function api(path, options = {}) {
  const response = await fetch(path, withAuth(options));
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(`${response.status} ${body.error || response.statusText}`);
  }
  return response.status === 204 ? null : response.json();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** float32 samples in [-1, 1] -> PCM16 little-endian bytes (the WebSocket's binary format). */
function toPcm16(samples) {
  const view = new DataView(new ArrayBuffer(samples.length * 2));
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return view.buffer;
}

/** A WAV (any rate, any channels) -> mono float32 at the session rate; decodeAudioData resamples. */
async function decodeWav(file) {
  const context = new OfflineAudioContext(1, 1, SESSION_RATE_HZ);
  const decoded = await context.decodeAudioData(await file.arrayBuffer());
  const mono = new Float32Array(decoded.length);
  for (let c = 0; c < decoded.numberOfChannels; c++) {
    const channel = decoded.getChannelData(c);
    for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / decoded.numberOfChannels;
  }
  return mono;
}

/** Counts presented frames: requestVideoFrameCallback for WebRTC, WebSocket frames for MJPEG. */
class FrameCounter {
  constructor(onFps) {
    this.onFps = onFps;
    this.count = 0;
    this.total = 0;
    this.timer = setInterval(() => this.tick(), FPS_WINDOW_MS);
  }

  frame() {
    this.count += 1;
    this.total += 1;
  }

  tick() {
    this.onFps(this.count * 1000 / FPS_WINDOW_MS);
    this.count = 0;
  }

  watchVideo(video) {
    if (!("requestVideoFrameCallback" in video)) return;
    const onFrame = () => {
      this.frame();
      if (this.timer !== null) video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }
}

class Page {
  constructor() {
    this.personaId = null;
    this.session = null; // {session_id, urls, ...} from POST /v1/sessions
    this.ws = null;
    this.pc = null;
    this.transport = "none";
    this.frames = null;
    this.utteranceSentAt = null; // performance.now() of the first audio chunk of the current utterance
    this.chunksSent = 0;
    this.playback = null; // {cancelled} while a WAV is being sent
    this.mic = null; // {context, stream, node} while the microphone is on
    this.gpuTimer = null;
    this.avatar3d = null; // Avatar3d (avatar3d.js) while a session of that mode shows its avatar
    this.early3d = null; // server messages that came while avatar3d.js was loading
    this.awaitingMode = false; // an avatar3d session waits for session_ready before choosing its view
  }

  async init() {
    for (const e of EMOTIONS) $("emotion").append(new Option(e, e));
    $("real-person").addEventListener("change", () => this.onRealPersonChange());
    $("persona-form").addEventListener("submit", (ev) => this.uploadPersona(ev));
    $("start").addEventListener("click", () => this.startSession());
    $("stop").addEventListener("click", () => this.endSession("ended by you"));
    $("play").addEventListener("click", () => this.playWav());
    $("mic").addEventListener("click", () => this.toggleMic());
    $("interrupt").addEventListener("click", () => this.interrupt());
    $("emotion").addEventListener("change", () => this.sendEmotion());
    $("intensity").addEventListener("change", () => this.sendEmotion());
    $("mode").addEventListener("change", () => this.onModeChange());
    $("headaudio").addEventListener("change", () => this.avatar3d?.setHeadAudio($("headaudio").checked));
    window.addEventListener("pagehide", () => this.teardown());
    await this.loadModes();
    this.onModeChange();
    this.pollGpu();
  }

  // ---------------- persona, mode ----------------
  /** avatar3d needs no portrait: Start is enabled without one there. */
  canStart() {
    return !this.session && (this.personaId !== null || $("mode").value === AVATAR3D);
  }

  onModeChange() {
    $("headaudio-label").hidden = $("mode").value !== AVATAR3D;
    $("start").disabled = !this.canStart();
  }

  onRealPersonChange() {
    const real = $("real-person").checked;
    $("consent-label").hidden = !real;
    $("consent").required = real; // the server refuses a real face without a statement, too
  }

  async uploadPersona(ev) {
    ev.preventDefault();
    if (!$("persona-form").reportValidity()) return;
    const form = new FormData();
    form.append("image", $("persona-file").files[0]);
    form.append("real_person", $("real-person").checked ? "true" : "false");
    if ($("real-person").checked) form.append("consent", $("consent").value);
    try {
      const persona = await api("/v1/personas", { method: "POST", body: form });
      this.personaId = persona.persona_id;
      $("persona-id").textContent = `persona ${persona.persona_id}`;
      $("persona-id").dataset.state = "ready";
      $("start").disabled = false;
      log("persona uploaded");
    } catch (err) {
      log(`upload failed: ${err.message}`, true);
    }
  }

  async loadModes() {
    const select = $("mode");
    try {
      const { modes } = await api("/v1/modes");
      for (const m of modes) {
        const option = new Option(m.available ? m.name : `${m.name} (unavailable: ${m.reason})`, m.name);
        option.disabled = !m.available;
        option.title = m.available ? m.description || m.name : m.reason;
        select.append(option);
      }
      // The default stays a video mode where there is one; avatar3d is picked by hand.
      const video = (m) => m.available && m.name !== "still" && m.name !== AVATAR3D;
      const first = modes.find(video) || modes.find((m) => m.available && m.name !== "still")
        || modes.find((m) => m.available);
      if (first) select.value = first.name;
    } catch (err) {
      log(`cannot list modes: ${err.message}`, true);
    }
  }

  // ---------------- session ----------------
  async startSession() {
    if (!this.canStart()) return;
    const mode = $("mode").value;
    $("start").disabled = true;
    const request = {
      persona_id: this.personaId, mode, emotion: $("emotion").value,
      intensity: Number($("intensity").value), sample_rate_hz: SESSION_RATE_HZ,
    };
    if (mode === AVATAR3D) delete request.persona_id; // the avatar is a GLB, not a portrait
    try {
      this.session = await api("/v1/sessions", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(request),
      });
    } catch (err) {
      $("start").disabled = false;
      log(`cannot start a session: ${err.message}`, true);
      return;
    }
    log(`session ${this.session.session_id}`);
    for (const id of ["stop", "play", "mic", "interrupt"]) $(id).disabled = false;
    this.frames = new FrameCounter((fps) => { $("fig-fps").textContent = fps.toFixed(1); });
    this.awaitingMode = mode === AVATAR3D; // session_ready says whether the server runs it
    this.openSocket();
    if (!this.awaitingMode) await this.watch();
  }

  openSocket() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}${withToken(this.session.urls.websocket)}`);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (msg) => this.onSocketMessage(msg);
    ws.onclose = () => { if (this.ws === ws) this.endSession("connection closed"); };
    this.ws = ws;
  }

  onSocketMessage(msg) {
    if (typeof msg.data !== "string") {
      if (this.avatar3d || this.early3d) this.to3d("onBinary", msg.data); // "BODA" audio; others ignored
      else if (this.transport === "mjpeg") this.frames.frame(); // WebRTC frames are counted on the video
      return;
    }
    const event = JSON.parse(msg.data);
    switch (event.type) {
      case "session_ready":
      case "mode_changed":
        $("fig-mode").textContent = event.mode;
        log(`mode ${event.mode}${event.reason ? ` (${event.reason})` : ""}`);
        this.followMode(event);
        break;
      case "speech_started":
        this.to3d("onSpeechStarted", event);
        this.onSpeechStarted();
        break;
      case "speech_ended":
        this.to3d("onSpeechEnded", event);
        this.utteranceSentAt = null;
        log(`speech ended${event.reason ? ` (${event.reason})` : ""}`);
        break;
      case "visemes":
        this.to3d("onVisemes", event);
        break;
      case "words":
        this.to3d("onWords", event);
        break;
      case "mood":
        this.to3d("onMood", event);
        break;
      case "gesture":
        this.to3d("onGesture", event);
        break;
      case "listening":
        this.to3d("onListening", event);
        break;
      case "gaze":
        this.to3d("onGaze", event);
        break;
      case "pose":
        this.to3d("onPose", event);
        break;
      case "retract":
        this.to3d("onRetract", event);
        break;
      case "error":
        log(`error ${event.code}: ${event.reason || event.error}`, true);
        break;
      case "session_closed":
        this.endSession(event.reason);
        break;
    }
  }

  /** Shows the 3D avatar while the server runs avatar3d, the video otherwise. */
  followMode(event) {
    if (!this.session) return;
    if (event.mode === AVATAR3D) {
      this.awaitingMode = false;
      if (!this.avatar3d) this.show3d(event.avatar_url || "/v1/avatars/default/glb");
    } else if (this.avatar3d || this.awaitingMode) {
      this.awaitingMode = false;
      this.hide3d();
      this.watch();
    }
  }

  /** Hands a server message to the 3D avatar; kept while its code is still loading. */
  to3d(method, event) {
    if (this.avatar3d) this.avatar3d[method](event);
    else if (this.early3d) this.early3d.push([method, event]);
  }

  async show3d(avatarUrl) {
    this.early3d = [];
    this.setTransport("websocket-3d");
    this.frames.stop(); // the page renders; there are no frames to count
    $("fig-fps").textContent = "rendered in this browser";
    let Avatar3d;
    try {
      ({ Avatar3d } = await import("/static/avatar3d.js"));
    } catch (err) {
      log(`cannot load the 3D avatar code: ${err.message}`, true);
      this.early3d = null;
      return;
    }
    if (!this.session || this.transport !== "websocket-3d") { // ended meanwhile
      this.early3d = null;
      return;
    }
    const avatar = new Avatar3d($("avatar3d"), {
      log, headAudio: $("headaudio").checked,
      contextRate: Number(new URLSearchParams(location.search).get("a3d_rate")) || null, // tests: force a rate
    });
    this.avatar3d = avatar;
    window.lockn = { ...(window.lockn || {}), avatar3d: avatar };
    for (const [method, event] of this.early3d) avatar[method](event);
    this.early3d = null;
    log("loading the 3D avatar");
    await avatar.load(withToken(avatarUrl));
  }

  hide3d() {
    if (this.avatar3d) this.avatar3d.dispose();
    this.avatar3d = null;
    this.early3d = null;
    if (window.lockn) window.lockn.avatar3d = null;
  }

  onSpeechStarted() {
    // The event is relayed when its frame is due, so this is audio in -> frame out.
    if (this.utteranceSentAt !== null) {
      $("fig-latency").textContent = `${Math.round(performance.now() - this.utteranceSentAt)} ms`;
    }
    log("speech started");
  }

  async endSession(reason) {
    if (!this.session) return;
    const session = this.session;
    this.teardown();
    log(`session ended: ${reason}`);
    await api(session.urls.self, { method: "DELETE" }).catch(() => {});
    $("start").disabled = !this.canStart();
  }

  teardown() {
    this.stopPlayback();
    this.stopMic(false);
    this.hide3d();
    this.awaitingMode = false;
    if (this.pc) this.pc.close();
    if (this.ws) this.ws.close();
    if (this.frames) this.frames.stop();
    this.pc = this.ws = this.frames = this.session = null;
    $("mjpeg").removeAttribute("src"); // ends the MJPEG request
    $("video").srcObject = null;
    this.setTransport("none");
    for (const id of ["stop", "play", "mic", "interrupt"]) $(id).disabled = true;
  }

  setTransport(name) {
    this.transport = name;
    $("fig-transport").textContent = name;
    $("video").hidden = name === "mjpeg" || name === "websocket-3d";
    $("mjpeg").hidden = name !== "mjpeg";
    $("avatar3d").hidden = name !== "websocket-3d";
  }

  // ---------------- video out ----------------
  async watch() {
    try {
      await this.connectWebRtc();
      this.setTransport("webrtc");
      this.frames.watchVideo($("video"));
    } catch (err) {
      log(`WebRTC failed (${err.message}); falling back to MJPEG`, true);
      if (this.pc) this.pc.close();
      this.pc = null;
      this.showMjpeg();
    }
  }

  async connectWebRtc() {
    const pc = new RTCPeerConnection(); // no ICE servers: the server is on this machine or the LAN
    this.pc = pc;
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.ontrack = (ev) => this.onTrack(ev);
    await pc.setLocalDescription(await pc.createOffer());
    await this.iceGatheringDone(pc);
    const answer = await api(`${this.session.urls.self}/webrtc`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
    });
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    await this.connected(pc);
    pc.onconnectionstatechange = () => {
      if (pc === this.pc && pc.connectionState === "failed") {
        log("WebRTC connection failed; switching to MJPEG", true);
        this.showMjpeg();
      }
    };
  }

  /** The server takes no trickled candidates: send the offer once gathering is done (or late). */
  iceGatheringDone(pc) {
    return new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      const timer = setTimeout(resolve, ICE_GATHER_TIMEOUT_MS);
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") {
          clearTimeout(timer);
          resolve();
        }
      });
    });
  }

  connected(pc) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("not connected in time")), CONNECT_TIMEOUT_MS);
      const check = () => {
        if (pc.connectionState === "connected") {
          clearTimeout(timer);
          resolve();
        } else if (pc.connectionState === "failed" || pc.connectionState === "closed") {
          clearTimeout(timer);
          reject(new Error(`connection ${pc.connectionState}`));
        }
      };
      pc.addEventListener("connectionstatechange", check);
      check();
    });
  }

  onTrack(ev) {
    // Both tracks share the server's stream id: one MediaStream keeps them in lip sync.
    const video = $("video");
    if (!video.srcObject) video.srcObject = ev.streams[0] || new MediaStream();
    if (!ev.streams[0]) video.srcObject.addTrack(ev.track);
    video.play().catch((err) => log(`autoplay blocked (${err.message}); click the video`, true));
  }

  showMjpeg() {
    if (!this.session) return;
    if (this.pc) this.pc.close();
    this.pc = null;
    $("mjpeg").src = withToken(this.session.urls.mjpeg);
    this.setTransport("mjpeg");
  }

  // ---------------- audio in ----------------
  sendPcm(samples) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    if (this.utteranceSentAt === null) this.utteranceSentAt = performance.now();
    this.ws.send(toPcm16(samples));
    this.chunksSent += 1;
    $("fig-sent").textContent = `${this.chunksSent} chunks`;
    return true;
  }

  sendEvent(event) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(event));
  }

  sendEmotion() {
    this.sendEvent({ type: "emotion", value: $("emotion").value, intensity: Number($("intensity").value) });
  }

  async playWav() {
    const file = $("wav-file").files[0];
    if (!file) return log("choose a WAV file first", true);
    this.stopPlayback();
    let samples;
    try {
      samples = await decodeWav(file);
    } catch (err) {
      return log(`cannot decode ${file.name}: ${err.message}`, true);
    }
    const playback = { cancelled: false };
    this.playback = playback;
    log(`playing ${file.name} (${(samples.length / SESSION_RATE_HZ).toFixed(1)} s)`);
    await this.sendPaced(samples, playback);
    if (!playback.cancelled) this.sendEvent({ type: "end_of_speech" });
    if (this.playback === playback) this.playback = null;
  }

  /** Real-time pace: chunk i leaves at start + i·CHUNK_S, so the server's buffer stays short.
   * For the 3D avatar all at once, as a TTS faster than real time sends it: the server paces
   * what it sends back, and a page busy drawing could otherwise leave a gap that the server
   * takes for the end of the utterance (a 0.4 s pause). */
  async sendPaced(samples, playback) {
    const chunk = Math.round(CHUNK_S * SESSION_RATE_HZ);
    const paceMs = this.avatar3d ? 0 : CHUNK_S * 1000;
    const start = performance.now();
    for (let i = 0; i * chunk < samples.length; i++) {
      const wait = start + i * paceMs - performance.now();
      if (wait > 0) await sleep(wait);
      if (playback.cancelled || !this.sendPcm(samples.subarray(i * chunk, (i + 1) * chunk))) return;
    }
  }

  stopPlayback() {
    if (this.playback) this.playback.cancelled = true;
    this.playback = null;
  }

  async toggleMic() {
    if (this.mic) return this.stopMic(true);
    try {
      const context = new AudioContext({ sampleRate: SESSION_RATE_HZ });
      const stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
      });
      await context.audioWorklet.addModule("/static/pcm-worklet.js");
      const node = new AudioWorkletNode(context, "pcm-capture");
      node.port.onmessage = (msg) => this.sendPcm(msg.data);
      context.createMediaStreamSource(stream).connect(node);
      this.mic = { context, stream, node };
      $("mic").setAttribute("aria-pressed", "true");
      log("microphone on");
    } catch (err) {
      log(`microphone unavailable: ${err.message}`, true);
    }
  }

  stopMic(sayEnd) {
    if (!this.mic) return;
    const { context, stream, node } = this.mic;
    this.mic = null;
    node.port.onmessage = null;
    for (const track of stream.getTracks()) track.stop();
    context.close();
    $("mic").setAttribute("aria-pressed", "false");
    if (sayEnd) this.sendEvent({ type: "end_of_speech" });
    log("microphone off");
  }

  interrupt() {
    this.stopPlayback();
    this.avatar3d?.interrupt(); // lips stop now; the server's retract follows
    this.sendEvent({ type: "interrupt" });
    this.utteranceSentAt = null;
    log("interrupt sent");
  }

  // ---------------- GPU figure ----------------
  async pollGpu() {
    try {
      const response = await fetch("/v1/gpu", withAuth());
      $("fig-gpu").textContent = response.ok ? formatGpu(await response.json())
        : response.status === 404 ? "not reported by this server" : `unavailable (${response.status})`;
    } catch (err) {
      $("fig-gpu").textContent = "unavailable";
    }
    this.gpuTimer = setTimeout(() => this.pollGpu(), GPU_POLL_MS);
  }
}

const GIB = 2 ** 30;
const gib = (bytes) => `${(bytes / GIB).toFixed(1)} GiB`;

/** GET /v1/gpu (the VRAM controller's view): device use, our budget and what our backends hold. */
function formatGpu(body) {
  if (body.enabled === false) return `not tracked (${body.reason || "no VRAM controller"})`;
  if (Number.isFinite(body.total_bytes) && body.total_bytes > 0) {
    const used = body.total_bytes - (body.free_bytes ?? 0);
    const ours = Number.isFinite(body.ledger_bytes) ? `, avatar ${gib(body.ledger_bytes)}` : "";
    const budget = Number.isFinite(body.budget_bytes) ? ` of budget ${gib(body.budget_bytes)}` : "";
    return `${gib(used)} / ${gib(body.total_bytes)} used${ours}${budget}${body.emergency ? " (emergency)" : ""}`;
  }
  return "no reading yet";
}

new Page().init();
