"""MuseTalk audio prompts: parity with the oracle (2a) and streaming behaviour."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.musetalk.audio import AudioConfig, AudioStream, StreamingPrompts, WhisperAudioEncoder, frame_starts
from models.musetalk.weights import WHISPER_FILES, folder_of
from tests.parity.test_musetalk_seeded import write_whisper


@pytest.fixture(scope="module")
def fixture_npz(oracle):
    return np.load(oracle / "musetalk" / "audio_whisper_short.npz")


@pytest.fixture(scope="module")
def whisper(oracle, tmp_path_factory):
    """Seeded whisper-tiny loaded through the real loader from an offline HF cache."""
    cache = tmp_path_factory.mktemp("hf-cache")
    mp = pytest.MonkeyPatch()
    import huggingface_hub.constants as c

    mp.setattr(c, "HF_HUB_CACHE", str(cache))
    mp.setattr(c, "HF_HUB_OFFLINE", True)
    write_whisper(cache, oracle)
    encoder = WhisperAudioEncoder.from_pretrained(folder_of(WHISPER_FILES[0]))
    yield encoder
    mp.undo()


@pytest.fixture(scope="module")
def stacked(whisper, fixture_npz):
    return whisper.whole_clip_states(fixture_npz["waveform"])


@pytest.mark.oracle
def test_mel_matches_oracle(whisper, fixture_npz):
    mel = whisper.mel(fixture_npz["waveform"])[0].numpy()
    np.testing.assert_allclose(mel, fixture_npz["input_features_seg0"], rtol=1e-4, atol=1e-4)


@pytest.mark.oracle
def test_stacked_states_match_oracle(stacked, fixture_npz):
    expected = fixture_npz["whisper_stacked_trimmed"]
    assert tuple(stacked.shape) == expected.shape
    np.testing.assert_allclose(stacked.numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.oracle
@pytest.mark.parametrize("fps, key", [(25, "fps25"), (30, "fps30"), (29.97, "fps29_97")])
def test_prompts_match_oracle(whisper, stacked, fixture_npz, fps, key):
    from models.musetalk.audio import frame_prompts

    n = int(fixture_npz["n_samples"])
    prompts = frame_prompts(stacked, n, fps, whisper.config).numpy()
    starts = fixture_npz[f"frame_start_{key}"]
    np.testing.assert_array_equal(frame_starts(len(starts), fps), starts)
    assert len(prompts) == len(starts)
    if f"audio_prompts_{key}" in fixture_npz:
        np.testing.assert_allclose(prompts, fixture_npz[f"audio_prompts_{key}"], rtol=1e-4, atol=1e-4)
    else:
        frames = fixture_npz[f"audio_prompts_{key}_frames"]
        np.testing.assert_allclose(prompts[frames], fixture_npz[f"audio_prompts_{key}_selected"], rtol=1e-4, atol=1e-4)


@pytest.mark.oracle
def test_prompt_rows_are_position_major(stacked, whisper, fixture_npz):
    """Row j*5+s of a prompt is position j, state s (frame 10 reads padded positions 20.., trimmed 16..)."""
    prompts = frame_prompts_25(whisper, stacked, fixture_npz)
    np.testing.assert_array_equal(prompts[10, 7 * 5 + 3].numpy(), stacked[20 + 7 - 4, 3].numpy())


def frame_prompts_25(whisper, stacked, fixture_npz):
    from models.musetalk.audio import frame_prompts

    return frame_prompts(stacked, int(fixture_npz["n_samples"]), 25, whisper.config)


def stream_prompts(whisper, wav: np.ndarray, chunk: int, config: AudioConfig) -> torch.Tensor:
    streamer = StreamingPrompts(whisper, config)
    stream, out = AudioStream(), []
    for i in range(0, len(wav), chunk):
        prompts, stream = streamer.push(stream, wav[i : i + chunk])
        out.append(prompts)
    prompts, stream = streamer.flush(stream)
    out.append(prompts)
    return torch.cat(out)


@pytest.mark.oracle
def test_streaming_with_full_context_equals_whole_clip(whisper, fixture_npz):
    """With a context longer than the clip, every pass sees the clip from sample 0; the emitted
    frames and their order are exactly the whole-clip ones, only the right edge differs."""
    wav = fixture_npz["waveform"][: 640 * 50]  # whole frames: 2 s
    whole = whisper.prompts(wav, fps=25)
    streamed = stream_prompts(whisper, wav, chunk=640 * 25, config=AudioConfig(context_s=5.0, lookahead_frames=25))
    assert streamed.shape == whole.shape
    # 25 frames of lookahead: each pass sees >= 1 s of audio past its frames; the last pass (flush) is exact.
    np.testing.assert_allclose(streamed[-20:].numpy(), whole[-20:].numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.oracle
def test_streaming_chunks_emit_in_order_with_lookahead(whisper, fixture_npz):
    wav = fixture_npz["waveform"][: 640 * 20]
    config = AudioConfig(context_s=0.5, lookahead_frames=3)
    streamer = StreamingPrompts(whisper, config)
    prompts, stream = streamer.push(AudioStream(), wav[: 640 * 5])
    assert len(prompts) == 2 and stream.frames_done == 2
    prompts, stream = streamer.push(stream, wav[640 * 5 :])
    assert len(prompts) == 15
    prompts, stream = streamer.flush(stream)
    assert len(prompts) == 3 and stream.frames_done == 20
    # the carry keeps only the left context, not the whole stream
    assert len(stream.history) <= 0.5 * 16000 + 640 * 6


@pytest.mark.oracle
def test_stream_mel_floor_follows_loudest_audio(whisper, fixture_npz):
    """Clamping a quiet buffer's mel at (running max - 2) equals whisper's own normalisation
    of that audio next to the louder audio that set the max."""
    wav = fixture_npz["waveform"]
    quiet, loud = 0.01 * wav[:8000], wav[16000:24000]
    streamer = StreamingPrompts(whisper, AudioConfig())
    joint = whisper.mel(np.concatenate([quiet, np.zeros(16000, np.float32), loud]))
    mel, mel_max = streamer._mel(quiet, float(joint.max()))
    assert mel_max == float(joint.max())
    np.testing.assert_allclose(mel[0, :, :45].numpy(), joint[0, :, :45].numpy(), atol=1e-5)  # quiet frames
    np.testing.assert_allclose(mel[0, :, 60:90].numpy(), joint[0, :, 60:90].numpy(), atol=1e-5)  # silence / padding
