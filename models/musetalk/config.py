"""MuseTalk's settings, its presets, and the files each preset needs.

Built from JSON-able options (serve_config.yaml `backends.musetalk.options`), as every mode:

    MuseTalkPipeline(config="official" | "tiny" | {"preset": ..., field: value, ...},
                     device="auto" | "cuda" | "cpu", seed=0)

"official" loads upstream v1.5's networks from the official files (weights.py).
"tiny" reads no file: the same code path with tiny UNet and VAE widths (narrower than the
oracle's "small" ones), a whisper-tiny-shaped encoder (width 384 and 4 layers, i.e. 5
stacked states, are fixed by the UNet; the feed-forward is narrow), all with weights drawn
from `seed`, and the face stand-ins of testing.py; on the CPU unless `device` says
otherwise. For graph tests and benchmarks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..options import override_fields, preset_name
from ..weights import WeightFile
from .audio import AudioConfig

PRESETS = ("official", "tiny")

# UNet and VAE widths (diffusers configs). FULL_*: the official networks' (musetalk.json,
# sd-vae-ft-mse); SMALL_*: the oracle's seeded ones; TINY_*: the tiny preset's.
SMALL_UNET = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=[32, 64, 64, 64], center_input_sample=False,
    cross_attention_dim=384,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=8, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, out_channels=4, sample_size=32,
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
)
FULL_UNET = {**SMALL_UNET, "block_out_channels": [320, 640, 1280, 1280], "sample_size": 64}  # musetalk.json
_VAE_BLOCKS = dict(down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4)
SMALL_VAE = {**_VAE_BLOCKS, "block_out_channels": [32, 32, 64, 64], "layers_per_block": 1}
FULL_VAE = {**_VAE_BLOCKS, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2}  # sd-vae-ft-mse
TINY_UNET = {**SMALL_UNET, "block_out_channels": [16, 16, 32, 32], "norm_num_groups": 8}
TINY_VAE = {**_VAE_BLOCKS, "block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 8}
TINY_WHISPER = dict(
    d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=96, num_mel_bins=80,
    decoder_layers=1, decoder_attention_heads=6, decoder_ffn_dim=64, vocab_size=64, max_target_positions=8,
    pad_token_id=1, bos_token_id=1, eos_token_id=1, decoder_start_token_id=1,
)


@dataclass(frozen=True)
class MuseTalkConfig:
    """Pipeline settings; defaults are upstream v1.5's where it has one."""

    preset: str = "official"  # "official": the HF files; "tiny": seeded, file-free
    batch_size: int = 8
    extra_margin: int = 10
    parsing_mode: str = "jaw"
    cheek_width: int = 90
    blur_fraction: float = 0.1  # realtime_inference.py's mask blur
    audio: AudioConfig = field(default_factory=AudioConfig)
    silence_rms: float = 3e-3  # about -50 dBFS
    crossfade_frames: int = 2  # at most the audio lookahead - 1 (the frames known ahead)
    min_landmark_score: float = 0.3
    min_face_px: int = 32
    device: str | None = None  # None: CUDA when available; the pipeline's `device` overrides it
    fp16: bool = True  # on CUDA only
    compile: str | None = None  # torch.compile of the UNet and VAE decoder (models/compiled.py); None: off


def pipeline_config(value: MuseTalkConfig | str | dict | None) -> MuseTalkConfig:
    """A config from its JSON form: None / "official", "tiny", or a dict of fields over a
    "preset" (default "official"), e.g. {"preset": "tiny", "batch_size": 5, "fp16": false}.
    Unknown fields are a ValueError that lists the known ones."""
    if isinstance(value, MuseTalkConfig):
        return value
    if value is not None and not isinstance(value, (str, dict)):
        raise ValueError(f"config must be a preset name or a dict of fields, got {type(value).__name__}")
    preset = preset_name(value)
    if preset not in PRESETS:
        raise ValueError(f"unknown musetalk preset {preset!r}; known: {', '.join(PRESETS)}")
    changes = {k: v for k, v in value.items() if k != "preset"} if isinstance(value, dict) else {}
    base = MuseTalkConfig(preset=preset, device="cpu" if preset == "tiny" else None)
    return override_fields(base, changes, "config")


def weight_files(config: Any = None, **options) -> list[WeightFile]:
    """The official files the `musetalk` mode needs with these options (the mode registry's
    hook): none for the tiny preset."""
    from .weights import ALL_FILES

    return [] if preset_name(config) == "tiny" else list(ALL_FILES)
