"""Audio prompts for MuseTalk v1.5: whisper-tiny encoder states, per video frame.

Data flow (upstream `AudioProcessor`, re-stated in our own code):

    wav 16 kHz -> 30 s segments -> log-mel [80, 3000] each (WhisperFeatureExtractor)
      -> whisper-tiny encoder, all 5 hidden states stacked   [T, 5, 384], T = 50 per second
      -> trimmed to the audio's length, zero-padded left/right
      -> per frame f: 10 positions from floor(f * 50 / fps)  [50, 384] (row = position*5 + state)

The 5 states are the encoder input (after the convolutions and position
embedding), the outputs of layers 1-3 and the final layer norm of layer 4:
exactly `hidden_states` of transformers' `WhisperEncoder`.

Streaming (`AudioStream`): upstream encodes whole 30 s segments of a finished
clip. A live session gets audio in chunks, so we re-encode a sliding buffer
that holds `context_s` seconds of audio before the first frame to emit, up to
all audio received so far (one 30 s encoder pass per chunk: the context costs
carry memory, not compute). Frame f's window reads encoder positions up to
2f + 5, i.e. audio up to the end of frame f + 2, so a stream emits a frame
`lookahead_frames` (>= 2) frames after its audio arrived. The mel floor follows
the loudest audio heard so far (see `StreamingPrompts._mel`).

Streamed vs whole-clip prompts on the oracle's 2.23 s waveform, 200 ms chunks,
oracle-seeded whisper (mean |diff| / mean |whole-clip|; benchmarks/musetalk.py):

    context_s        0.2    0.5    1.0    2.0
    lookahead 2     0.20   0.17   0.14   0.095
    lookahead 3     0.20   0.16   0.13   0.088
    lookahead 5     0.19   0.16   0.13   0.080

Seeded weights attend globally over the whole 30 s input, so every state moves
with any audio change; the real encoder attends mostly locally and should do far
better (no official weights on the build machine to measure). We take 2 s of
context (the largest the clip could test; free in compute) and 3 frames of
lookahead (120 ms, one frame more than the window needs, for the conv edge).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE_HZ = 16_000
WHISPER_RATE_HZ = 50  # encoder positions per second (hop 160, conv stride 2)
SAMPLES_PER_POSITION = SAMPLE_RATE_HZ // WHISPER_RATE_HZ  # 320
SEGMENT_SAMPLES = 30 * SAMPLE_RATE_HZ  # whisper's fixed 30 s input


@dataclass(frozen=True)
class AudioConfig:
    """Per-frame window (upstream defaults) and streaming choices.

    pad_left / pad_right: `audio_padding_length_left/right` upstream; the window
    is 2 * (pad_left + pad_right + 1) = 10 encoder positions.
    context_s: left context of the streaming buffer (measured, see module doc).
    lookahead_frames: frames a stream holds back; 2 is the minimum the window needs.
    """

    pad_left: int = 2
    pad_right: int = 2
    context_s: float = 2.0
    lookahead_frames: int = 3

    @property
    def window(self) -> int:
        return 2 * (self.pad_left + self.pad_right + 1)


def _stack_states(encoder: torch.nn.Module, mel: torch.Tensor) -> torch.Tensor:
    """mel: B×80×3000 -> B×1500×5×384, the 5 hidden states stacked per position."""
    out = encoder(mel, output_hidden_states=True)
    return torch.stack(out.hidden_states, dim=2)


class WhisperAudioEncoder:
    """Mel features and stacked whisper-tiny encoder states for 16 kHz audio."""

    def __init__(self, encoder: torch.nn.Module, feature_extractor, config: AudioConfig | None = None):
        self.encoder = encoder.eval()
        self.feature_extractor = feature_extractor
        self.config = config or AudioConfig()

    @classmethod
    def from_pretrained(cls, folder: Path, config: AudioConfig | None = None) -> "WhisperAudioEncoder":
        """Load `config.json`, the weights and `preprocessor_config.json` of openai/whisper-tiny.

        transformers' own loader reads the official file (safetensors); we keep only
        the encoder, and refuse a file that leaves encoder weights uninitialised.
        """
        from transformers import WhisperFeatureExtractor, WhisperModel

        model, info = WhisperModel.from_pretrained(folder, local_files_only=True, output_loading_info=True)
        mismatched = [m[0] if isinstance(m, tuple) else m for m in info["mismatched_keys"]]
        bad = [k for k in [*info["missing_keys"], *mismatched] if "encoder" in k]
        if bad:
            raise ValueError(f"whisper checkpoint in {folder} does not fit the encoder: {bad[:5]}")
        extractor = WhisperFeatureExtractor.from_pretrained(folder, local_files_only=True)
        return cls(model.encoder, extractor, config)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype

    def mel(self, wav: np.ndarray) -> torch.Tensor:
        """wav: (n,) float32, n <= 30 s -> 1×80×3000 log-mel, zero-padded to 30 s, normalised on its own max."""
        feats = self.feature_extractor(wav, sampling_rate=SAMPLE_RATE_HZ, return_tensors="pt")
        return feats.input_features

    @torch.no_grad()
    def encode(self, wav: np.ndarray) -> torch.Tensor:
        """wav (n,) float32, n <= 30 s -> 1500×5×384 float32 states (positions past the audio included)."""
        return self.encode_mel(self.mel(wav))

    @torch.no_grad()
    def encode_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """1×80×3000 log-mel -> 1500×5×384 float32 states."""
        return _stack_states(self.encoder, mel.to(self.device, self.dtype))[0].float().cpu()

    def whole_clip_states(self, wav: np.ndarray) -> torch.Tensor:
        """Upstream semantics: 30 s segments encoded on their own, concatenated, trimmed.

        wav: (n,) float32 -> T×5×384 with T = floor(n / 16000 * 50) (float formula as upstream).
        """
        segments = [wav[i : i + SEGMENT_SAMPLES] for i in range(0, max(len(wav), 1), SEGMENT_SAMPLES)]
        states = torch.cat([self.encode(seg) for seg in segments], dim=0)
        actual_length = math.floor(len(wav) / SAMPLE_RATE_HZ * WHISPER_RATE_HZ)
        return states[:actual_length]

    def prompts(self, wav: np.ndarray, fps: float = 25.0) -> torch.Tensor:
        """Whole clip -> F×50×384 prompts, F = floor(n / 16000 * int(fps))."""
        return frame_prompts(self.whole_clip_states(wav), len(wav), fps, self.config)


def frame_start(frame: int, fps: float) -> int:
    """Start of a frame's window in the padded states: floor(f * 50 / int(fps))."""
    return math.floor(frame * (WHISPER_RATE_HZ / int(fps)))  # upstream truncates 29.97 to 29


def frame_starts(num_frames: int, fps: float) -> np.ndarray:
    """frame_start for frames 0..num_frames-1."""
    return np.array([frame_start(f, fps) for f in range(num_frames)], dtype=np.int64)


def left_padding(fps: float, config: AudioConfig) -> int:
    """Zero positions put before the states: ceil(50 / int(fps)) * pad_left."""
    return math.ceil(WHISPER_RATE_HZ / int(fps)) * config.pad_left


def frame_prompts(states: torch.Tensor, n_samples: int, fps: float, config: AudioConfig) -> torch.Tensor:
    """states: T×5×384 trimmed -> F×50×384, windows over the zero-padded states (upstream rule)."""
    fps_int = int(fps)
    num_frames = math.floor(n_samples / SAMPLE_RATE_HZ * fps_int)
    pad = math.ceil(WHISPER_RATE_HZ / fps_int)
    # Right padding is 3x larger than the left upstream; it only has to cover the last window.
    zeros_left = states.new_zeros((pad * config.pad_left, *states.shape[1:]))
    zeros_right = states.new_zeros((pad * 3 * config.pad_right, *states.shape[1:]))
    padded = torch.cat([zeros_left, states, zeros_right], dim=0)
    starts = frame_starts(num_frames, fps)
    windows = [padded[s : s + config.window] for s in starts]  # each 10×5×384
    if not windows:
        return states.new_zeros((0, config.window * states.shape[1], states.shape[2]))
    return torch.stack(windows).flatten(1, 2)  # F×(10·5)×384


# ---------------------------------------------------------------- streaming


@dataclass
class AudioStream:
    """Carry of the streaming audio prompts: recent audio and what was emitted.

    history: float32 samples [start, start + len(history)) of the stream.
    start: absolute index of history[0], a multiple of 320 (one encoder position).
    frames_done: frames whose prompts were emitted.
    mel_max: loudest normalised log-mel value heard so far (sets the mel floor, see `_mel`).
    """

    history: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    start: int = 0
    frames_done: int = 0
    mel_max: float = -np.inf

    @property
    def n_seen(self) -> int:
        return self.start + len(self.history)


class StreamingPrompts:
    """Per-frame prompts from audio that arrives in chunks, at the server's 25 fps."""

    fps = 25
    samples_per_frame = SAMPLE_RATE_HZ // 25  # 640

    def __init__(self, encoder: WhisperAudioEncoder, config: AudioConfig | None = None):
        self.encoder = encoder
        self.config = config or encoder.config
        if self.config.lookahead_frames < 2:
            raise ValueError("the 10-position window reaches 2 frames ahead: lookahead_frames must be >= 2")

    def push(self, stream: AudioStream, audio: np.ndarray) -> tuple[torch.Tensor, AudioStream]:
        """Add audio; return prompts (K×50×384) for frames whose lookahead has arrived."""
        history = np.concatenate([stream.history, np.asarray(audio, np.float32)])
        stream = replace(stream, history=history)
        ready = max(stream.n_seen // self.samples_per_frame - self.config.lookahead_frames, stream.frames_done)
        return self._emit(stream, ready, end=None)

    def flush(self, stream: AudioStream) -> tuple[torch.Tensor, AudioStream]:
        """End of speech: emit the held-back frames; positions past the audio are zeros (as whole-clip)."""
        total = stream.n_seen // self.samples_per_frame
        return self._emit(stream, total, end=stream.n_seen)

    def skip(self, stream: AudioStream) -> AudioStream:
        """Interrupt: count every frame heard as done, without computing its prompt."""
        return self._trim(replace(stream, frames_done=stream.n_seen // self.samples_per_frame))

    def _emit(self, stream: AudioStream, upto: int, end: int | None) -> tuple[torch.Tensor, AudioStream]:
        chunks = []
        # One encoder pass sees at most 30 s: bound the frames per pass by what fits after the context.
        per_pass = max(1, int((30.0 - self.config.context_s) * self.fps) - self.config.lookahead_frames - 4)
        frames_done = stream.frames_done
        while frames_done < upto:
            stop = min(upto, frames_done + per_pass)
            prompts, mel_max = self._prompts(stream, frames_done, stop, end)
            stream = replace(stream, mel_max=mel_max)
            chunks.append(prompts)
            frames_done = stop
        stream = self._trim(replace(stream, frames_done=frames_done))
        if not chunks:
            return torch.zeros((0, 5 * self.config.window, 384)), stream
        return torch.cat(chunks), stream

    def _positions(self, first: int, stop: int) -> tuple[int, int]:
        """Encoder positions [lo, hi) that the windows of frames [first, stop) read (lo may be < 0)."""
        pad = left_padding(self.fps, self.config)
        return frame_start(first, self.fps) - pad, frame_start(stop - 1, self.fps) - pad + self.config.window

    def _prompts(self, stream: AudioStream, first: int, stop: int, end: int | None) -> tuple[torch.Tensor, float]:
        """Prompts K×50×384 of frames [first, stop) and the updated loudest mel value."""
        lo, hi = self._positions(first, stop)
        context = int(self.config.context_s * SAMPLE_RATE_HZ)
        buf_start = max(stream.start, (max(lo, 0) * SAMPLES_PER_POSITION - context))
        buf_start -= buf_start % SAMPLES_PER_POSITION
        buf_stop = min(stream.n_seen, buf_start + SEGMENT_SAMPLES)
        buf = stream.history[buf_start - stream.start : buf_stop - stream.start]
        mel, mel_max = self._mel(buf, stream.mel_max)
        states = self.encoder.encode_mel(mel)  # 1500×5×384, position 0 = buf_start
        first_pos = buf_start // SAMPLES_PER_POSITION
        # Positions before the stream or past its end (at flush) are the zero padding upstream adds.
        valid_hi = (end // SAMPLES_PER_POSITION) if end is not None else stream.n_seen // SAMPLES_PER_POSITION
        window = states.new_zeros((hi - lo, *states.shape[1:]))
        a, b = max(lo, first_pos), min(hi, valid_hi, first_pos + states.shape[0])
        if b > a:
            window[a - lo : b - lo] = states[a - first_pos : b - first_pos]
        pad = left_padding(self.fps, self.config)
        starts = [frame_start(f, self.fps) - pad - lo for f in range(first, stop)]
        return torch.stack([window[s : s + self.config.window] for s in starts]).flatten(1, 2), mel_max

    def _mel(self, buf: np.ndarray, mel_max: float) -> tuple[torch.Tensor, float]:
        """Log-mel of the buffer with the floor set by the loudest audio of the whole stream.

        Whisper clamps log-mel at (its input's max - 8) before scaling by (x + 4) / 4; the 30 s
        input is mostly zero padding, which sits exactly at that floor. A short buffer has a
        lower max than the whole clip, so its padding, and everything attending to it, would
        shift. Normalised, the floor is max - 2, and raising it only needs the running max:
        max((max(L, m-8)+4)/4, R-2) = (max(L, M-8)+4)/4 for M >= m.
        """
        mel = self.encoder.mel(buf)
        mel_max = max(mel_max, float(mel.max()))
        return torch.clamp(mel, min=mel_max - 2.0), mel_max

    def _trim(self, stream: AudioStream) -> AudioStream:
        """Drop audio older than the left context of the next frame to emit."""
        lo, _ = self._positions(stream.frames_done, stream.frames_done + 1)
        keep_from = max(0, lo * SAMPLES_PER_POSITION - int(self.config.context_s * SAMPLE_RATE_HZ))
        keep_from -= keep_from % SAMPLES_PER_POSITION
        if keep_from <= stream.start:
            return stream
        return replace(stream, history=stream.history[keep_from - stream.start :].copy(), start=keep_from)
