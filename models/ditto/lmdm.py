"""LMDM denoiser: the MotionDecoder transformer of Ditto's motion diffusion.

The network predicts the clean motion window x0 from a noisy one. Its
parameter names and shapes are those of the official checkpoint
`ditto_pytorch/models/lmdm_v0.4_hubert.pth` (`ckpt["model_state_dict"]`,
249 tensors), so that file loads strictly. The architecture follows the EDGE
dance decoder that Ditto builds on:

    x_t ++ cond_frame  -> input_projection -> 8 x FiLM decoder layer -> final_layer
    cond (per frame)   -> cond_projection -> 2 x encoder layer ----^ (cross-attention)
    timestep           -> sinusoid -> MLP -> FiLM scale/shift + 2 extra memory tokens

Positions enter through a rotary embedding applied to the full model width
(before the heads are split) of queries and keys; one rotary module is shared
by every layer, so its `freqs` buffer appears under 11 keys in the state dict.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LMDMConfig:
    """Shapes of the MotionDecoder; defaults are the official v0.4 HuBERT model."""

    motion_dim: int = 265  # scale 1 + pitch/yaw/roll 3x66 bins + t 3 + exp 63
    cond_dim: int = 1103  # HuBERT 1024 + emotion 8 + eye open 2 + eye ball 6 + source kp 63
    seq_frames: int = 80
    latent_dim: int = 512
    ff_size: int = 1024
    num_layers: int = 8
    num_heads: int = 8
    cond_layers: int = 2
    dropout: float = 0.1  # only matters in training; kept so the modules match
    guidance_weight: float = 2.0

    @classmethod
    def tiny(cls) -> "LMDMConfig":
        """A small network with the official input/output layout, for CPU tests."""
        return cls(latent_dim=32, ff_size=64, num_layers=2, num_heads=2)


class RotaryEmbedding(nn.Module):
    """Rotates interleaved feature pairs (2i, 2i+1) by angle position * freqs[i].

    `freqs` is a fixed function of the width (1 / 10000^(2i/dim)), not learned;
    it is stored in the checkpoint only because it is a registered buffer.
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.register_buffer("freqs", freqs)  # (dim/2,)

    def angles(self, seq_len: int) -> torch.Tensor:
        """(seq_len, dim): each pair's angle, repeated for both members of the pair."""
        pos = torch.arange(seq_len, device=self.freqs.device).to(self.freqs.dtype)
        ang = pos[:, None] * self.freqs[None, :]  # L x dim/2
        return ang.repeat_interleave(2, dim=-1)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x L x dim -> same, rotated along the sequence axis (-2)."""
        ang = self.angles(x.shape[-2]).to(x)
        pairs = x.unflatten(-1, (-1, 2))  # B x L x dim/2 x 2
        # (a, b) -> (-b, a): the 90-degree turn of each pair
        turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return x * ang.cos() + turned * ang.sin()


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t: (B,) integer steps -> B x dim sinusoids (sin half, then cos half)."""
    half = dim // 2
    step = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, device=t.device) * -step)
    arg = t[:, None] * freqs[None, :]
    return torch.cat((arg.sin(), arg.cos()), dim=-1)


class DenseFiLM(nn.Module):
    """Timestep vector -> per-channel (scale, shift), each B x 1 x dim."""

    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(nn.Mish(), nn.Linear(dim, dim * 2))

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = self.block(t)[:, None, :].chunk(2, dim=-1)
        return scale, shift


def film(x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    scale, shift = scale_shift
    return (scale + 1) * x + shift


class CondEncoderLayer(nn.Module):
    """Pre-norm self-attention + feed-forward over the condition tokens."""

    def __init__(self, cfg: LMDMConfig, rotary: RotaryEmbedding):
        super().__init__()
        d = cfg.latent_dim
        self.self_attn = nn.MultiheadAttention(d, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.linear1 = nn.Linear(d, cfg.ff_size)
        self.linear2 = nn.Linear(cfg.ff_size, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.rotary = rotary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x L x d."""
        h = self.norm1(x)
        qk = self.rotary.rotate(h)  # values stay unrotated
        x = x + self.self_attn(qk, qk, h, need_weights=False)[0]
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))


class FiLMDecoderLayer(nn.Module):
    """Pre-norm self-attention, cross-attention and feed-forward, each FiLM-modulated by t."""

    def __init__(self, cfg: LMDMConfig, rotary: RotaryEmbedding):
        super().__init__()
        d = cfg.latent_dim
        self.self_attn = nn.MultiheadAttention(d, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(d, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.linear1 = nn.Linear(d, cfg.ff_size)
        self.linear2 = nn.Linear(cfg.ff_size, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.film1 = DenseFiLM(d)
        self.film2 = DenseFiLM(d)
        self.film3 = DenseFiLM(d)
        self.rotary = rotary

    def forward(self, x: torch.Tensor, memory: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: B x L x d motion tokens; memory: B x M x d; t: B x d."""
        h = self.norm1(x)
        qk = self.rotary.rotate(h)
        x = x + film(self.self_attn(qk, qk, h, need_weights=False)[0], self.film1(t))
        h = self.norm2(x)
        # the memory gets rotated too, including the two time tokens at its end
        q, k = self.rotary.rotate(h), self.rotary.rotate(memory)
        x = x + film(self.multihead_attn(q, k, memory, need_weights=False)[0], self.film2(t))
        h = self.linear2(F.gelu(self.linear1(self.norm3(x))))
        return x + film(h, self.film3(t))


class DecoderStack(nn.Module):
    """Holds the decoder layers under `stack.<i>` as the checkpoint names them."""

    def __init__(self, layers: list[FiLMDecoderLayer]):
        super().__init__()
        self.stack = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        for layer in self.stack:
            x = layer(x, memory, t)
        return x


class MotionDecoder(nn.Module):
    """(x_t, cond_frame, cond, t) -> predicted clean motion x0."""

    def __init__(self, cfg: LMDMConfig = LMDMConfig()):
        super().__init__()
        self.cfg = cfg
        d = cfg.latent_dim
        self.rotary = RotaryEmbedding(d)
        self.time_mlp = nn.Sequential(nn.Identity(), nn.Linear(d, d * 4), nn.Mish())  # [0] = sinusoid
        self.to_time_cond = nn.Sequential(nn.Linear(d * 4, d))
        self.to_time_tokens = nn.Sequential(nn.Linear(d * 4, d * 2))  # two memory tokens
        # learned stand-ins for the condition when it is dropped (guidance)
        self.null_cond_embed = nn.Parameter(torch.zeros(1, cfg.seq_frames, d))
        self.null_cond_hidden = nn.Parameter(torch.zeros(1, d))
        self.norm_cond = nn.LayerNorm(d)
        self.input_projection = nn.Linear(cfg.motion_dim * 2, d)  # frame ++ conditioning frame
        self.cond_encoder = nn.Sequential(*[CondEncoderLayer(cfg, self.rotary) for _ in range(cfg.cond_layers)])
        self.cond_projection = nn.Linear(cfg.cond_dim, d)
        self.non_attn_cond_projection = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.seqTransDecoder = DecoderStack([FiLMDecoderLayer(cfg, self.rotary) for _ in range(cfg.num_layers)])
        self.final_layer = nn.Linear(d, cfg.motion_dim)

    def encode_cond(self, cond: torch.Tensor, keep: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """cond: B x L x cond_dim -> (tokens B x L x d, pooled vector B x d)."""
        if keep:
            tokens = self.cond_encoder(self.cond_projection(cond))
            return tokens, self.non_attn_cond_projection(tokens.mean(dim=-2))
        b = cond.shape[0]
        # dropped condition: upstream runs the encoder and then replaces both its
        # tokens and its pooled vector by the learned nulls, so skipping it is exact
        tokens = self.null_cond_embed.to(cond.dtype).expand(b, -1, -1)
        return tokens, self.null_cond_hidden.to(cond.dtype).expand(b, -1)

    def forward(
        self,
        x: torch.Tensor,
        cond_frame: torch.Tensor,
        cond: torch.Tensor,
        t: torch.Tensor,
        keep_cond: bool = True,
    ) -> torch.Tensor:
        """x: B x L x 265 noisy motion; cond_frame: B x 265 (motion the window starts from);
        cond: B x L x 1103; t: (B,) int64 steps -> B x L x 265 predicted x0."""
        frame = cond_frame[:, None, :].expand(-1, x.shape[1], -1)
        h = self.input_projection(torch.cat([x, frame], dim=-1))  # B x L x d
        tokens, pooled = self.encode_cond(cond, keep_cond)
        t_hidden = self.time_mlp(timestep_embedding(t, self.cfg.latent_dim))  # B x 4d
        t_vec = self.to_time_cond(t_hidden) + pooled  # B x d, drives FiLM
        t_tokens = self.to_time_tokens(t_hidden).unflatten(-1, (2, -1))  # B x 2 x d
        memory = self.norm_cond(torch.cat((tokens, t_tokens), dim=-2))  # B x (L+2) x d
        return self.final_layer(self.seqTransDecoder(h, memory, t_vec))

    def guided(self, x, cond_frame, cond, t) -> torch.Tensor:
        """Classifier-free guidance: uncond + w * (cond - uncond)."""
        uncond = self.forward(x, cond_frame, cond, t, keep_cond=False)
        conditioned = self.forward(x, cond_frame, cond, t, keep_cond=True)
        return uncond + (conditioned - uncond) * self.cfg.guidance_weight


def load_lmdm(path, cfg: LMDMConfig = LMDMConfig()) -> MotionDecoder:
    """The official checkpoint: `ckpt["model_state_dict"]`, strict, weights only."""
    from ..weights import load_torch_state_dict

    model = MotionDecoder(cfg)
    model.load_state_dict(load_torch_state_dict(path)["model_state_dict"], strict=True)
    return model.eval()
