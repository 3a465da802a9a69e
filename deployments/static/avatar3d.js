// avatar3d mode: the server renders no video. It sends the session's speech audio (binary "BODA" messages,
// PCM16LE mono 16 kHz, indexed on the session's 16 kHz output clock) and viseme / word / mood / gesture events;
// this module lip-syncs a TalkingHead (three.js) avatar to them, for one session.
//
// Timing, in brief (docs/modes/avatar3d-page.md has the long version):
// - TalkingHead times every cue from the start of its audio playback. Each utterance here is played as one
//   TalkingHead stream whose first sample is the utterance's first sample, so the server's vtimes (ms from
//   speech_started.sample) are passed through unchanged.
// - Its playback worklet has no jitter buffer, so an utterance starts only once PREROLL_MS of its audio is here
//   (or it has ended, or PREROLL_WAIT_MS passed since its first chunk). Cues go to TalkingHead as soon as they
//   are known, ahead of their time: a cue that reaches it late is dropped.
// - Utterances play one after another: the next waits (buffering) until the previous has drained.
// - The AudioContext is asked for 16 kHz; where the browser forces its own rate (Safari: 48 kHz) the audio is
//   resampled here, since the worklet plays samples as they come.
// - `listening`, `gaze` and `pose` events steer the eyes and head (see "listening, gaze and pose" below).
import { Euler, Quaternion } from "three";
import { TalkingHead } from "talkinghead";

export const OUTPUT_RATE_HZ = 16000; // the server's audio clock
const PREROLL_MS = 250;
const PREROLL_WAIT_MS = 400;
const HEADER_BYTES = 12; // "<4sQ": magic, uint64 first-sample index
const AUDIO_MAGIC = "BODA";
const MAX_GAP_S = 1; // a hole in an utterance's audio up to this long is filled with silence
const LOG_LIMIT = 5000; // cues kept in state.cues (for tests and debugging)
const UTTERANCE_LIMIT = 20; // utterances kept in state.utterances
const VENDOR = "/static/vendor";
const HEADAUDIO_NODE = `${VENDOR}/@met4citizen/headaudio/dist/headaudio.min.mjs`;
const HEADAUDIO_WORKLET = `${VENDOR}/@met4citizen/headaudio/dist/headworklet.min.mjs`;
const HEADAUDIO_MODEL = `${VENDOR}/@met4citizen/headaudio/dist/model-en-mixed.bin`;
// Listening, gaze and pose. A held look is a TalkingHead animation that lasts LOOK_HOLD_MS; it is pushed again
// every LOOK_REFRESH_MS, so it holds until the next event, and each refresh gets TalkingHead's small random
// variation (a held look that never moves looks frozen).
const LOOK_REFRESH_MS = 4000;
const LOOK_HOLD_MS = LOOK_REFRESH_MS + 1000;
const LISTEN_EASE_MS = 400; // the head settles toward the viewer this fast when listening starts
const NOD_GAP_MS = [2000, 6000]; // a listening nod comes after a random gap in this range
const POSE_TAU_MS = 300; // time constant of the head's easing toward a pose
const POSE_LIMITS_DEG = { yaw: 30, pitch: 20, roll: 20 }; // as the server's
const DEG = Math.PI / 180;
// While listening: the head eases to rest (facing the viewer) with only a little sway, and the eyes keep
// contact. Not TalkingHead's lookAtCamera: its eyes are set as offsets from the head, so they would miss the
// camera once a `pose` turns the head; `eyeContact` aims them from the head's real rotation every frame.
const LISTEN_TEMPLATE = {
  name: "lockn-listening", dt: [LISTEN_EASE_MS, LOOK_HOLD_MS],
  vs: {
    bodyRotateX: [[-0.02, 0.04]], bodyRotateY: [[-0.05, 0.05]], bodyRotateZ: [[-0.03, 0.03]],
    eyeContact: [1], headMove: [0], // headMove 0: no head turns of TalkingHead's own meanwhile
  },
};
// A small nod: ~3-4 degrees down and back in ~0.7 s (TalkingHead's own "yes" is a double nod of 6-11 degrees).
const NOD_TEMPLATE = {
  name: "lockn-nod", dt: [[250, 350], [350, 450]], vs: { headMove: [0], headRotateX: [[0.05, 0.065], 0] },
};

/** Parses a binary server message: {magic, sample, pcm: Int16Array} or null when it is too short. */
export function parseBinary(buffer) {
  if (buffer.byteLength < HEADER_BYTES) return null;
  const view = new DataView(buffer);
  const magic = String.fromCharCode(view.getUint8(0), view.getUint8(1), view.getUint8(2), view.getUint8(3));
  const sample = Number(view.getBigUint64(4, true));
  const pcm = new Int16Array(buffer.slice(HEADER_BYTES, HEADER_BYTES + 2 * Math.floor((buffer.byteLength - HEADER_BYTES) / 2)));
  return { magic, sample, pcm };
}

/**
 * Band-limited resampling of a PCM16 stream, chunk by chunk, keeping its state between chunks: each output
 * sample is a Blackman-windowed sinc interpolation of the input around its exact (fractional) position, so the
 * output neither drifts nor clicks at chunk borders. Output sample 0 is input sample 0; the last few input
 * samples wait for the next chunk (or flush()).
 */
export class StreamResampler {
  constructor(inRate, outRate, zeroCrossings = 8) {
    this.step = inRate / outRate; // input samples per output sample
    this.cutoff = Math.min(1, outRate / inRate) * 0.92; // below both Nyquist frequencies
    this.half = Math.ceil(zeroCrossings / Math.min(1, outRate / inRate)); // kernel half-width, input samples
    this.resolution = 256; // kernel table points per input sample
    this.table = new Float32Array(this.half * this.resolution + 2);
    for (let i = 0; i < this.table.length; i++) {
      const x = i / this.resolution;
      const u = Math.min(1, x / this.half);
      const window = 0.42 + 0.5 * Math.cos(Math.PI * u) + 0.08 * Math.cos(2 * Math.PI * u);
      const arg = Math.PI * this.cutoff * x;
      this.table[i] = this.cutoff * (x === 0 ? 1 : Math.sin(arg) / arg) * window;
    }
    this.buffer = new Float32Array(this.half); // silence before the first sample
    this.base = -this.half; // input index of buffer[0]
    this.position = 0; // input position of the next output sample
    this.received = 0; // input samples seen
  }

  kernel(distance) {
    const x = Math.abs(distance) * this.resolution;
    const i = Math.floor(x);
    if (i >= this.table.length - 1) return 0;
    const frac = x - i;
    return this.table[i] + frac * (this.table[i + 1] - this.table[i]);
  }

  /** Int16Array in -> Int16Array out (possibly empty). */
  process(pcm) {
    const joined = new Float32Array(this.buffer.length + pcm.length);
    joined.set(this.buffer);
    for (let i = 0; i < pcm.length; i++) joined[this.buffer.length + i] = pcm[i];
    this.received += pcm.length;
    return this.run(joined, this.base + joined.length - 1);
  }

  /** The held-back tail: call once after the last chunk. */
  flush() {
    const joined = new Float32Array(this.buffer.length + this.half + 1);
    joined.set(this.buffer);
    return this.run(joined, this.received - 1, true);
  }

  run(joined, lastIndex, flushing = false) {
    const out = [];
    const end = this.base + joined.length - 1; // last input index held
    while (true) {
      const center = Math.floor(this.position);
      if (flushing ? this.position > lastIndex : center + this.half > end) break;
      let acc = 0;
      for (let i = center - this.half + 1; i <= center + this.half; i++) {
        const k = i - this.base;
        if (k >= 0 && k < joined.length) acc += joined[k] * this.kernel(this.position - i);
      }
      out.push(Math.max(-32768, Math.min(32767, Math.round(acc))));
      this.position += this.step;
    }
    const keepFrom = Math.floor(this.position) - this.half + 1; // first input index still needed
    const drop = Math.max(0, Math.min(joined.length, keepFrom - this.base));
    this.buffer = joined.slice(drop);
    this.base += drop;
    return Int16Array.from(out);
  }
}

function clamp(value, low, high) {
  return Math.min(high, Math.max(low, value));
}

function concatPcm(chunks) {
  const total = chunks.reduce((n, c) => n + c.length, 0);
  const out = new Int16Array(total);
  let offset = 0;
  for (const c of chunks) {
    out.set(c, offset);
    offset += c.length;
  }
  return out;
}

let nextUtteranceId = 1;

/** One utterance: its cues and its audio, from speech_started to its last sample. */
class Utterance {
  constructor(sample) {
    this.id = nextUtteranceId++;
    this.sample = sample; // first sample on the 16 kHz output clock; the utterance's time zero
    this.next = sample; // the sample index the next audio chunk should start at
    this.chunks = []; // audio not yet handed to TalkingHead
    this.buffered = 0; // samples in chunks
    this.firstAudioAt = null; // performance.now() when audio waiting for playback first arrived
    this.timer = null;
    this.visemes = []; // every cue received: {viseme, vtime, vduration}
    this.words = []; // {word, wtime, wduration}
    this.fedVisemes = 0; // how many of them went to TalkingHead in the current segment
    this.fedWords = 0;
    this.wordMode = false;
    this.ended = false; // speech_ended received: no more audio comes
    this.cancelled = false;
    this.done = false;
    this.segmentSample = null; // first sample of the TalkingHead stream now playing it (normally = sample)
    this.startClock = null; // head.streamAudioStartTime of that stream (TalkingHead's animClock, ms)
    this.startedAt = null; // performance.now() then
    this.segments = 0;
    this.starts = []; // each segment's {segmentSample, startClock} once its playback started
  }

  /** Plain data for tests and debugging. */
  summary() {
    return {
      id: this.id, sample: this.sample, next: this.next, ended: this.ended, cancelled: this.cancelled,
      done: this.done, wordMode: this.wordMode, segments: this.segments, segmentSample: this.segmentSample,
      startClock: this.startClock, startedAt: this.startedAt, starts: this.starts.map((s) => ({ ...s })),
      visemes: this.visemes.slice(), words: this.words.slice(),
    };
  }
}

export class Avatar3d {
  /**
   * @param {HTMLElement} node where TalkingHead puts its canvas (must have a size)
   * @param {object} options {log(message, isError), headAudio: bool, contextRate: number|null}
   */
  constructor(node, options = {}) {
    this.node = node;
    this.log = options.log || (() => {});
    this.headAudioWanted = Boolean(options.headAudio);
    this.requestedRate = options.contextRate || OUTPUT_RATE_HZ;
    this.head = null;
    this.headAudio = null; // the HeadAudio node while attached
    this.queue = []; // utterances not yet done, oldest first
    this.segment = null; // {utterance, resampler} while TalkingHead plays one
    this.pendingExpression = null;
    this.pendingMood = null; // a mood event that came before the avatar was ready
    this.moodKey = null; // the mood event last applied
    this.seenAnims = new WeakSet();
    this.disposed = false;
    this.listening = false;
    this.gaze = null; // {target, x, y} from the last gaze event; null: TalkingHead's own idle gaze
    this.heldLook = null; // the animation holding the current look, in head.animQueue
    this.lookTimer = null;
    this.nodTimer = null;
    this.pose = { target: { yaw: 0, pitch: 0, roll: 0 }, current: { yaw: 0, pitch: 0, roll: 0 } }; // radians
    this.poseRotation = new Quaternion();
    this.poseEuler = new Euler();
    this.lastFrameAt = null; // performance.now() at the last frame
    this.onResume = () => this.resumeAudio();
    this.state = {
      phase: "idle", // idle | loading | ready | error | disposed
      error: null,
      avatarUrl: null,
      contextRate: null, // the AudioContext's rate
      resampling: false,
      lipsync: this.headAudioWanted ? "headaudio" : "server",
      mood: null, // {mood, intensity, emotion, expression}
      expressionsPlayed: [],
      gestures: [],
      listening: false,
      gaze: null, // {target, x, y, screen: [x, y] or null} as applied
      look: null, // what holds the look now: "listening" | "camera" | "point" | null (TalkingHead's idle)
      nods: 0,
      pose: { yaw: 0, pitch: 0, roll: 0 }, // degrees asked
      poseApplied: { yaw: 0, pitch: 0, roll: 0 }, // degrees the head is turned by now (eased)
      utterances: [], // summaries, newest last
      cues: [], // viseme animations as TalkingHead queued them: {utterance, sample, viseme, ts}
      interrupts: 0,
      stalls: 0,
      droppedChunks: 0,
      metrics: null,
    };
  }

  // ---------------- loading ----------------
  async load(avatarUrl) {
    this.state.phase = "loading";
    this.state.avatarUrl = avatarUrl;
    try {
      this.head = new TalkingHead(this.node, {
        ttsEndpoint: null,
        lipsyncLang: "en",
        lipsyncModules: ["en"],
        cameraView: "head",
        cameraRotateEnable: false,
        avatarMood: "neutral",
        modelFPS: 30,
      });
      // Its constructor made an AudioContext at the hardware rate; swap it for one at the stream's rate now,
      // before showAvatar() resumes it (streamStart would otherwise close it with that resume pending).
      try {
        this.head.initAudioGraph(this.requestedRate);
      } catch (err) {
        this.head.initAudioGraph(); // a browser without a free choice of rate: resampled later
      }
      await this.head.showAvatar({ url: avatarUrl, body: "F", lipsyncLang: "en", avatarMood: "neutral" });
      if (this.disposed) return;
      // TalkingHead calls opt.update once a frame, after it has posed the bones and before it draws.
      this.head.opt.update = (dt) => this.onFrame(dt);
      await this.openStream("visemes");
      this.state.phase = "ready";
      document.addEventListener("pointerdown", this.onResume);
      document.addEventListener("keydown", this.onResume);
      this.log(`3D avatar ready (audio at ${this.state.contextRate} Hz${this.state.resampling ? ", resampled here" : ""})`);
      if (this.pendingMood) this.onMood(this.pendingMood);
      this.pendingMood = null;
      this.applyLook(); // listening or gaze that came while loading
      this.scheduleNod();
      this.pump();
    } catch (err) {
      this.state.phase = "error";
      this.state.error = String(err && err.message || err);
      this.log(`3D avatar failed: ${this.state.error}`, true);
    }
  }

  get ready() {
    return this.state.phase === "ready" && this.head !== null;
  }

  /** (Re)starts TalkingHead's stream for the next utterance; asks for 16 kHz (or the test override). */
  async openStream(lipsyncType) {
    const head = this.head;
    await head.streamStart(
      {
        sampleRate: this.requestedRate, lipsyncType, lipsyncLang: "en", waitForAudioChunks: true,
        metrics: { enabled: true, intervalHz: 2 },
      },
      () => this.onPlaybackStarted(),
      () => this.onPlaybackEnded(),
      null,
      (m) => { this.state.metrics = m.data; },
    );
    const rate = head.audioCtx.sampleRate;
    // A browser that cannot run at the asked rate would otherwise get a new AudioContext at every streamStart.
    this.requestedRate = rate;
    this.state.contextRate = rate;
    this.state.resampling = rate !== OUTPUT_RATE_HZ;
    if (this.headAudioWanted) await this.attachHeadAudio();
    else this.detachHeadAudio();
    this.applyLook(); // streamStart turned the head to the camera for a moment, replacing a held lookAt
  }

  resumeAudio() {
    const ctx = this.head && this.head.audioCtx;
    if (ctx && ctx.state !== "running" && ctx.state !== "closed") ctx.resume().catch(() => {});
  }

  // ---------------- HeadAudio (browser lip sync) ----------------
  async setHeadAudio(on) {
    this.headAudioWanted = Boolean(on);
    this.state.lipsync = on ? "headaudio" : "server";
    if (!this.ready || this.segment) return; // takes effect with the next utterance
    if (on) await this.attachHeadAudio();
    else this.detachHeadAudio();
  }

  async attachHeadAudio() {
    const head = this.head;
    if (this.headAudio && this.headAudio.context === head.audioCtx) return;
    this.detachHeadAudio();
    try {
      const { HeadAudio } = await import(HEADAUDIO_NODE);
      await head.audioCtx.audioWorklet.addModule(HEADAUDIO_WORKLET);
      const node = new HeadAudio(head.audioCtx, {
        processorOptions: {},
        parameterData: { vadGateActiveDb: -40, vadGateInactiveDb: -60 },
      });
      await node.loadModel(HEADAUDIO_MODEL);
      node.onvalue = (key, value) => {
        const mt = head.mtAvatar[key];
        if (mt) Object.assign(mt, { newvalue: value, needsUpdate: true });
      };
      // Streamed speech runs worklet -> analyser -> speech gain: HeadAudio listens there.
      head.audioSpeechGainNode.connect(node);
      this.headAudio = node; // onFrame() calls its update()
      this.log("browser lip sync (HeadAudio) on");
    } catch (err) {
      this.headAudioWanted = false;
      this.state.lipsync = "server";
      this.log(`HeadAudio unavailable (${err.message}); using the server's visemes`, true);
    }
  }

  detachHeadAudio() {
    if (!this.headAudio) return;
    try { this.head.audioSpeechGainNode.disconnect(this.headAudio); } catch (err) { /* graph rebuilt */ }
    this.headAudio.onvalue = null;
    this.headAudio = null;
  }

  // ---------------- server events ----------------
  utteranceAt(sample) {
    for (let i = this.queue.length - 1; i >= 0; i--) if (this.queue[i].sample === sample) return this.queue[i];
    return null;
  }

  /** The utterance the server is speaking now (the newest one it has not ended). */
  serverCurrent() {
    const last = this.queue[this.queue.length - 1];
    return last && !last.ended ? last : null;
  }

  onSpeechStarted(event) {
    if (this.utteranceAt(event.sample)) return;
    const u = new Utterance(event.sample);
    this.queue.push(u);
    this.state.utterances.push(u);
    if (this.state.utterances.length > UTTERANCE_LIMIT) this.state.utterances.shift();
  }

  onVisemes(event) {
    const u = this.utteranceAt(event.sample);
    if (!u || u.cancelled) return;
    for (let i = 0; i < event.visemes.length; i++) {
      u.visemes.push({ viseme: event.visemes[i], vtime: event.vtimes[i], vduration: event.vdurations[i] });
    }
    if (this.segment && this.segment.utterance === u) this.feedCues(u);
  }

  onWords(event) {
    const u = this.utteranceAt(event.sample);
    if (!u || u.cancelled) return;
    for (let i = 0; i < event.words.length; i++) {
      u.words.push({ word: event.words[i], wtime: event.wtimes[i], wduration: event.wdurations[i] });
    }
    if (!u.wordMode) {
      u.wordMode = true;
      // Playing already: switch this stream to word lip sync (TalkingHead reads the type per cue batch).
      if (this.segment && this.segment.utterance === u) this.head.streamLipsyncType = "words";
    }
    if (this.segment && this.segment.utterance === u) this.feedCues(u);
  }

  /** A binary message: BODA audio goes to its utterance; anything else is not ours. */
  onBinary(buffer) {
    const msg = parseBinary(buffer);
    if (!msg || msg.magic !== AUDIO_MAGIC) return false;
    this.onAudio(msg.sample, msg.pcm);
    return true;
  }

  onAudio(sample, pcm) {
    let u = null;
    for (let i = this.queue.length - 1; i >= 0; i--) {
      if (this.queue[i].sample <= sample) { u = this.queue[i]; break; }
    }
    if (!u || u.cancelled || u.done || pcm.length === 0) {
      this.state.droppedChunks += 1;
      return;
    }
    if (sample > u.next) { // a hole: keep the clock with silence
      const gap = sample - u.next;
      if (gap <= MAX_GAP_S * OUTPUT_RATE_HZ) this.pushAudio(u, new Int16Array(gap));
      else u.next = sample;
    } else if (sample < u.next) { // overlap: keep what is new
      const skip = u.next - sample;
      if (skip >= pcm.length) return;
      pcm = pcm.subarray(skip);
    }
    this.pushAudio(u, pcm);
  }

  pushAudio(u, pcm) {
    u.next += pcm.length;
    if (this.segment && this.segment.utterance === u) {
      this.feedAudio(pcm);
      return;
    }
    u.chunks.push(pcm);
    u.buffered += pcm.length;
    if (u.firstAudioAt === null) u.firstAudioAt = performance.now();
    this.pump();
  }

  onSpeechEnded(event) {
    if (event.reason === "interrupted") {
      this.interrupt();
      return;
    }
    const u = this.serverCurrent();
    if (!u) return;
    u.ended = true;
    if (this.segment && this.segment.utterance === u) this.endSegmentInput();
    else this.pump();
  }

  onRetract() {
    this.interrupt();
  }

  /** Stops speech now: lips clear, everything queued is dropped (the Interrupt button, retract). */
  interrupt() {
    this.state.interrupts += 1;
    for (const u of this.queue) {
      u.cancelled = true;
      u.done = true;
      u.chunks = [];
      if (u.timer) clearTimeout(u.timer);
    }
    this.queue = [];
    const wasPlaying = this.segment !== null;
    this.segment = null;
    if (this.ready) {
      this.head.streamInterrupt(); // clears viseme animations and resets the lips
      if (wasPlaying || this.head.isSpeaking) this.head.resetLips();
    }
    this.playPendingExpression();
  }

  onMood(event) {
    if (!this.ready) {
      this.pendingMood = event;
      return;
    }
    const mood = this.head.animMoods[event.mood] ? event.mood : "neutral";
    const intensity = Math.max(0, Math.min(1, Number.isFinite(event.intensity) ? event.intensity : 1));
    // The server repeats the mood at each utterance's start and end (with `speaking`): only a change is
    // applied, and its expression is played once.
    const key = JSON.stringify([mood, intensity, event.emotion, event.expression || null]);
    if (key === this.moodKey) {
      if (!event.speaking) this.playPendingExpression();
      return;
    }
    this.moodKey = key;
    this.head.setMood(mood);
    // TalkingHead's moods have no strength: scale each of the mood's baseline values from neutral's.
    const neutral = this.head.animMoods.neutral.baseline;
    for (const [mt, value] of Object.entries(this.head.mood.baseline)) {
      const from = neutral[mt] ?? this.head.mtBaselineExceptions[mt] ?? this.head.mtBaselineDefault ?? 0;
      this.head.setBaselineValue(mt, from + intensity * (value - from));
    }
    this.state.mood = { mood, intensity, emotion: event.emotion, expression: event.expression || null };
    if (event.expression) {
      this.pendingExpression = event.expression;
      if (!event.speaking) this.playPendingExpression();
    }
  }

  onGesture(event) {
    if (!this.ready || !event.name) return;
    const duration = Number.isFinite(event.duration_s) ? event.duration_s : 3;
    this.head.playGesture(event.name, duration, Boolean(event.mirror));
    this.applyLook(); // an emoji gesture (the nods yes/no) turns the head to the camera for a moment
    this.state.gestures.push({ name: event.name, duration, mirror: Boolean(event.mirror), at: performance.now() });
  }

  /** Emoji expressions move the mouth: they play only between utterances. */
  playPendingExpression() {
    if (!this.pendingExpression || !this.ready) return;
    if (this.segment || this.queue.some((u) => !u.done)) return;
    const expression = this.pendingExpression;
    this.pendingExpression = null;
    this.head.playGesture(expression);
    this.applyLook(); // an emoji turns the head to the camera for a moment, replacing a held lookAt
    this.state.expressionsPlayed.push({ expression, at: performance.now() });
  }

  // ---------------- listening, gaze and pose ----------------
  // Listening wins over gaze while it lasts (as in the video modes); pose adds to whatever the head does.

  onListening(event) {
    this.listening = Boolean(event.active);
    this.state.listening = this.listening;
    this.applyLook();
    this.scheduleNod();
  }

  onGaze(event) {
    const x = clamp(Number(event.x) || 0, -1, 1);
    const y = clamp(Number(event.y) || 0, -1, 1);
    this.gaze = { target: event.target, x, y };
    this.applyLook();
  }

  onPose(event) {
    const angle = (value, limit) => clamp(Number(value) || 0, -limit, limit);
    const asked = {
      yaw: angle(event.yaw_deg, POSE_LIMITS_DEG.yaw),
      pitch: angle(event.pitch_deg, POSE_LIMITS_DEG.pitch),
      roll: angle(event.roll_deg, POSE_LIMITS_DEG.roll),
    };
    this.state.pose = asked;
    this.pose.target = { yaw: asked.yaw * DEG, pitch: asked.pitch * DEG, roll: asked.roll * DEG };
  }

  /** What should hold the eyes now: listening, then an explicit gaze, else nothing (TalkingHead's idle). */
  wantedLook() {
    if (this.listening) return "listening";
    if (!this.gaze) return null;
    const atCamera = this.gaze.target === "camera" || (this.gaze.x === 0 && this.gaze.y === 0);
    return atCamera ? "camera" : "point";
  }

  /**
   * (Re)starts the animation that holds the look, replacing the last one; called on each change, every
   * LOOK_REFRESH_MS while a look is held, and after TalkingHead's own brief lookAtCamera (streamStart, emoji
   * gestures) replaced a held lookAt.
   */
  applyLook() {
    clearTimeout(this.lookTimer);
    this.lookTimer = null;
    if (!this.ready) return; // load() applies it
    const look = this.wantedLook();
    this.dropHeldLook();
    this.state.look = look;
    this.state.gaze = this.gaze && { ...this.gaze, screen: null };
    if (look === null) return; // back to TalkingHead's idle eyes and head
    const head = this.head;
    if (look === "listening") {
      head.animQueue.push(head.animFactory(LISTEN_TEMPLATE));
    } else if (look === "camera") {
      head.makeEyeContact(LOOK_HOLD_MS); // the eyes stay on the viewer; the head keeps its idle motion
    } else {
      const [px, py] = this.screenPoint(this.gaze.x, this.gaze.y);
      this.state.gaze.screen = [px, py];
      head.lookAt(px, py, LOOK_HOLD_MS); // head and eyes turn there; no idle head motion meanwhile
    }
    this.heldLook = head.animQueue[head.animQueue.length - 1]; // each of the three pushes one animation
    this.lookTimer = setTimeout(() => this.applyLook(), LOOK_REFRESH_MS);
  }

  dropHeldLook() {
    const i = this.heldLook ? this.head.animQueue.indexOf(this.heldLook) : -1;
    if (i !== -1) this.head.animQueue.splice(i, 1);
    this.heldLook = null;
  }

  /**
   * A gaze point -> the page coordinates TalkingHead's lookAt takes: (x, y) in [-1, 1]² spans the avatar's
   * canvas (x to the right, y up), so the avatar looks at that point of its own picture.
   */
  screenPoint(x, y) {
    const rect = this.node.getBoundingClientRect();
    return [rect.left + (1 + x) / 2 * rect.width, rect.top + (1 - y) / 2 * rect.height];
  }

  /** While listening, a small nod after a random gap, again and again; none while the avatar speaks. */
  scheduleNod() {
    clearTimeout(this.nodTimer);
    this.nodTimer = null;
    if (!this.ready || !this.listening) return;
    const gap = NOD_GAP_MS[0] + Math.random() * (NOD_GAP_MS[1] - NOD_GAP_MS[0]);
    this.nodTimer = setTimeout(() => {
      if (!this.head.isSpeaking) {
        this.head.animQueue.push(this.head.animFactory(NOD_TEMPLATE));
        this.state.nods += 1;
      }
      this.scheduleNod();
    }, gap);
  }

  /** Once a frame: the head eased toward the pose; HeadAudio's update where it is attached. */
  onFrame(dt) {
    // TalkingHead caps dt at two frames; the easing follows the wall clock, however slowly frames come.
    const now = performance.now();
    this.turnHead(this.lastFrameAt === null ? dt : now - this.lastFrameAt);
    this.lastFrameAt = now;
    if (this.headAudio) this.headAudio.update(dt);
  }

  /**
   * Eases the pose offset toward its target and turns the Head bone by it, after TalkingHead has set the bone
   * for this frame (it sets it afresh every frame, so the offset never accumulates). Not its headRotateX/Y/Z
   * values: its nods and head turns animate those to absolute values and back to 0, which would wipe the pose;
   * an offset on the bone adds to all of them, and eye contact, which reads the bone, still finds the camera.
   */
  turnHead(dt) {
    const { target, current } = this.pose;
    const k = 1 - Math.exp(-Math.min(dt, 1000) / POSE_TAU_MS);
    for (const axis of ["yaw", "pitch", "roll"]) {
      current[axis] += (target[axis] - current[axis]) * k;
      if (Math.abs(target[axis] - current[axis]) < 1e-4) current[axis] = target[axis];
      this.state.poseApplied[axis] = current[axis] / DEG;
    }
    if (!current.yaw && !current.pitch && !current.roll) return;
    // In the head's frame (as TalkingHead's own head values): +x pitches down, +y turns toward the viewer's
    // right, +z rolls the top of the head toward the viewer's left (so roll, top to the right, is -z).
    this.poseEuler.set(current.pitch, current.yaw, -current.roll, "YXZ");
    this.head.objectHead.quaternion.multiply(this.poseRotation.setFromEuler(this.poseEuler));
  }

  // ---------------- playback ----------------
  /** Starts the oldest waiting utterance once nothing plays and its pre-roll is here. */
  pump() {
    if (!this.ready || this.segment) return;
    while (this.queue.length && this.queue[0].done) this.queue.shift();
    const u = this.queue[0];
    if (!u) {
      this.playPendingExpression();
      return;
    }
    if (u.buffered === 0) {
      if (u.ended) { // no audio at all (or all of it played before a stall): nothing to play
        u.done = true;
        this.queue.shift();
        this.pump();
      }
      return;
    }
    const waited = performance.now() - u.firstAudioAt;
    if (u.ended || u.buffered >= PREROLL_MS * OUTPUT_RATE_HZ / 1000 || waited >= PREROLL_WAIT_MS) {
      if (u.timer) clearTimeout(u.timer);
      u.timer = null;
      this.startSegment(u);
    } else if (!u.timer) {
      u.timer = setTimeout(() => { u.timer = null; this.pump(); }, PREROLL_WAIT_MS - waited + 1);
    }
  }

  /** Hands an utterance (or, after a stall, the rest of it) to TalkingHead as one stream. */
  async startSegment(u) {
    const segment = { utterance: u, resampler: null, opening: true, inputEnded: false };
    this.segment = segment;
    const headAudio = this.headAudioWanted;
    await this.openStream(u.wordMode && !headAudio ? "words" : "visemes");
    if (this.segment !== segment) return; // interrupted meanwhile
    segment.opening = false;
    if (this.state.resampling) segment.resampler = new StreamResampler(OUTPUT_RATE_HZ, this.state.contextRate);
    u.segments += 1;
    u.segmentSample = u.next - u.buffered; // the first sample about to be played
    u.startClock = null;
    u.fedVisemes = 0;
    u.fedWords = 0;
    const first = concatPcm(u.chunks);
    u.chunks = [];
    u.buffered = 0;
    u.firstAudioAt = null;
    this.head.streamAudio({ audio: this.convert(first), ...this.takeCues(u) });
    this.recordCues(u);
    if (u.ended) this.endSegmentInput();
  }

  feedAudio(pcm) {
    const segment = this.segment;
    if (segment.opening) { // streamStart still running: keep it for the first streamAudio
      segment.utterance.chunks.push(pcm);
      segment.utterance.buffered += pcm.length;
      return;
    }
    const audio = this.convert(pcm);
    if (audio.length) this.head.streamAudio({ audio });
  }

  convert(pcm) {
    return this.segment && this.segment.resampler ? this.segment.resampler.process(pcm) : pcm;
  }

  /** Cues of the utterance not yet given to TalkingHead, timed from the segment's first sample. */
  takeCues(u) {
    if (this.headAudioWanted) return {};
    const shift = (u.segmentSample - u.sample) * 1000 / OUTPUT_RATE_HZ; // 0 unless resumed after a stall
    const cues = {};
    const visemes = u.visemes.slice(u.fedVisemes);
    u.fedVisemes = u.visemes.length;
    const live = visemes.filter((v) => v.vtime + v.vduration > shift);
    if (live.length) {
      cues.visemes = live.map((v) => v.viseme);
      cues.vtimes = live.map((v) => v.vtime - shift);
      cues.vdurations = live.map((v) => v.vduration);
    }
    const words = u.words.slice(u.fedWords);
    u.fedWords = u.words.length;
    const liveWords = words.filter((w) => w.wtime + w.wduration > shift);
    if (liveWords.length) {
      cues.words = liveWords.map((w) => w.word);
      cues.wtimes = liveWords.map((w) => w.wtime - shift);
      cues.wdurations = liveWords.map((w) => w.wduration);
    }
    return cues;
  }

  feedCues(u) {
    if (this.segment.opening) return; // startSegment passes them with the first audio
    const cues = this.takeCues(u);
    if (!cues.visemes && !cues.words) return;
    this.head.streamAudio(cues);
    this.recordCues(u);
  }

  endSegmentInput() {
    const segment = this.segment;
    if (segment.opening || segment.inputEnded) return; // startSegment ends it when it is done
    segment.inputEnded = true;
    if (segment.resampler) {
      const tail = segment.resampler.flush();
      if (tail.length) this.head.streamAudio({ audio: tail });
    }
    this.head.streamNotifyEnd();
  }

  onPlaybackStarted() {
    const segment = this.segment;
    if (!segment) return;
    const u = segment.utterance;
    u.startClock = this.head.streamAudioStartTime;
    u.startedAt = performance.now();
    u.starts.push({ segmentSample: u.segmentSample, startClock: u.startClock });
    this.recordCues(u); // the cues TalkingHead held until now are in its queue at last
  }

  /** TalkingHead's worklet drained: the utterance is over, or its audio stalled for a second. */
  onPlaybackEnded() {
    const segment = this.segment;
    if (!segment) return; // interrupt() already moved on
    const u = segment.utterance;
    this.segment = null;
    if (segment.inputEnded) {
      u.done = true;
    } else {
      // More audio comes: it restarts as a new segment after a pre-roll, on a new worklet.
      this.state.stalls += 1;
      this.dropWorklet();
      this.log("3D avatar: audio stalled; resuming after a pre-roll", true);
    }
    this.pump();
  }

  /**
   * Ends TalkingHead's stream and mutes its worklet for good; the next streamStart makes a new one.
   * Audio this page handed TalkingHead after the worklet went idle but before the page heard so (a page
   * too busy to hear it in time) restarted that worklet, and its late "playback-started" would time the
   * next segment's cues from the wrong moment: with the port closed it never arrives.
   */
  dropWorklet() {
    const worklet = this.head.streamWorkletNode;
    this.head.streamStop(); // clears the viseme animations, disconnects the worklet
    if (worklet) {
      worklet.port.onmessage = null;
      worklet.port.close();
    }
  }

  /** Keeps a copy of the viseme animations TalkingHead just queued (they leave its queue once played). */
  recordCues(u) {
    if (!this.head) return;
    for (const anim of this.head.animQueue) {
      if (anim.template.name !== "viseme" || this.seenAnims.has(anim)) continue;
      this.seenAnims.add(anim);
      const key = Object.keys(anim.vs)[0] || "";
      this.state.cues.push({
        utterance: u.id, sample: u.sample, segmentSample: u.segmentSample, viseme: key.replace(/^viseme_/, ""),
        ts: anim.ts.slice(),
      });
    }
    if (this.state.cues.length > LOG_LIMIT) this.state.cues.splice(0, this.state.cues.length - LOG_LIMIT);
  }

  // ---------------- teardown ----------------
  dispose() {
    if (this.disposed) return;
    this.disposed = true;
    for (const u of this.queue) if (u.timer) clearTimeout(u.timer);
    this.queue = [];
    this.segment = null;
    clearTimeout(this.lookTimer);
    clearTimeout(this.nodTimer);
    document.removeEventListener("pointerdown", this.onResume);
    document.removeEventListener("keydown", this.onResume);
    if (this.head) {
      this.detachHeadAudio();
      try { this.head.dispose(); } catch (err) { /* half-loaded */ }
      try { if (this.head.audioCtx.state !== "closed") this.head.audioCtx.close(); } catch (err) { /* gone */ }
    }
    this.node.replaceChildren();
    this.state.phase = "disposed";
  }

  /** state with the utterances as plain data (what tests read). */
  snapshot() {
    return { ...this.state, utterances: this.state.utterances.map((u) => u.summary()) };
  }
}
