"""A tiny, randomly initialised MuseTalk pipeline for CPU tests (graph tests).

Same code path as the real pipeline, with tiny UNet/VAE configs (narrower than
the oracle's "small" ones), a whisper-tiny-shaped encoder (width 384 and 4
layers, i.e. 5 stacked states, are fixed by the UNet; the feed-forward is
narrow), a parser that calls everything skin and landmarks on an ellipse in
the middle of the frame. No files are read.
"""
from __future__ import annotations

import numpy as np
import torch

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


def ellipse_landmarks(frame_bgr: np.ndarray) -> tuple[np.ndarray, float]:
    """68 points on an ellipse around the frame centre; point 29 at the centre (box = middle half)."""
    h, w = frame_bgr.shape[:2]
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    points = np.stack([w / 2 + w / 4 * np.cos(angles), h / 2 + h / 4 * np.sin(angles)], -1)
    points[29] = (w / 2, h / 2)
    return points.astype(np.float32), 1.0


def all_skin_parser(image, mode: str):
    """Parser stand-in: a 512×512 all-skin mask ('jaw' keeps the lower half after blending rules)."""
    from PIL import Image

    return Image.fromarray(np.full((512, 512), 255, np.uint8))


def tiny_pipeline(seed: int = 0, config=None):
    """MuseTalkPipeline with small random networks on CPU, float32."""
    from diffusers import AutoencoderKL
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    from .audio import WhisperAudioEncoder
    from .inference import MuseTalkNets
    from .pipeline import MuseTalkConfig, MuseTalkPipeline
    from .unet import PositionalEncoding, build_unet

    torch.manual_seed(seed)
    config = config or MuseTalkConfig(device="cpu")
    nets = MuseTalkNets(build_unet(TINY_UNET).eval(), AutoencoderKL(**TINY_VAE).eval(), PositionalEncoding(384))
    whisper = WhisperModel(WhisperConfig(**TINY_WHISPER)).encoder
    audio = WhisperAudioEncoder(whisper, WhisperFeatureExtractor(feature_size=80), config.audio)
    return MuseTalkPipeline(nets, audio, all_skin_parser, ellipse_landmarks, config)
