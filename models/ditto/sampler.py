"""DDIM sampler of the LMDM, exactly as Ditto runs it.

- The network predicts x0 (not noise); the noise estimate is derived from it.
- Classifier-free guidance with weight 2 on every step.
- Cosine schedule over 1000 steps (s = 0.008, betas clipped at 0.999), computed
  in float64, cast to float32, cumulative product taken in float32.
- S sampling steps at t = int(linspace(-1, 999, S+1)) reversed: 999, 899, ..., 99
  for S = 10; eta = 1, so every step but the last adds fresh-looking noise.
- That per-step noise is drawn ONCE per setup and reused for every window of a
  stream; only the starting point x_init is drawn per window. Both come from a
  NoiseSource, so tests can inject the reference's arrays and a stream can
  regenerate its noise from a seed in any process.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .lmdm import MotionDecoder

N_TRAIN_STEPS = 1000


def cosine_alphas_cumprod(n_steps: int = N_TRAIN_STEPS, s: float = 0.008) -> torch.Tensor:
    """(n_steps,) float32 cumulative alphas of the cosine schedule."""
    steps = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps + s
    f = torch.cos(steps / (1 + s) * math.pi / 2).pow(2)
    f = f / f[0]
    betas = np.clip((1 - f[1:] / f[:-1]).numpy(), 0, 0.999)
    # float32 before the product, as the reference does it
    return torch.cumprod(1.0 - torch.tensor(betas, dtype=torch.float32), dim=0)


def ddim_time_pairs(sampling_steps: int, n_steps: int = N_TRAIN_STEPS) -> list[tuple[int, int]]:
    """[(t, t_next), ...] from t = n_steps-1 down to t_next = -1 (the final x0 step)."""
    times = torch.linspace(-1, n_steps - 1, steps=sampling_steps + 1).int().tolist()
    times = times[::-1]
    return list(zip(times[:-1], times[1:]))


class NoiseSource(Protocol):
    """Where the sampler's randomness comes from."""

    def step_noise(self, n: int, shape: tuple[int, ...]) -> list[torch.Tensor]:
        """n per-step noise tensors, drawn once per setup."""

    def x_init(self, window: int, shape: tuple[int, ...]) -> torch.Tensor:
        """The starting point of window number `window` of a stream."""


@dataclass(frozen=True)
class SeededNoise:
    """Noise as a pure function of (seed, what is drawn): a stream needs only its seed
    and window counter to continue in another process."""

    seed: int = 0

    def _gen(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + salt) % (2**63))

    def step_noise(self, n, shape):
        g = self._gen(0)
        return [torch.randn(shape, generator=g) for _ in range(n)]

    def x_init(self, window, shape):
        return torch.randn(shape, generator=self._gen(1 + window))


@dataclass(frozen=True)
class FixedNoise:
    """Given arrays (e.g. the reference's): step noise (n, ...) and one x_init per window."""

    steps: np.ndarray
    x_inits: np.ndarray

    def step_noise(self, n, shape):
        assert len(self.steps) >= n, "not enough step noise"
        return [torch.from_numpy(np.asarray(a, dtype=np.float32)).reshape(shape) for a in self.steps[:n]]

    def x_init(self, window, shape):
        return torch.from_numpy(np.asarray(self.x_inits[window], dtype=np.float32)).reshape(shape)


class DDIMSampler:
    """Guided x0-prediction DDIM over one window of motion."""

    def __init__(self, model: MotionDecoder, sampling_steps: int, noise: NoiseSource):
        self.model = model
        self.noise = noise
        self.shape = (1, model.cfg.seq_frames, model.cfg.motion_dim)
        ac = cosine_alphas_cumprod()
        self.sqrt_recip1m = torch.sqrt(1.0 / (1.0 - ac))  # 1/sqrt(1-a)
        self.sqrt_recipm1 = torch.sqrt(1.0 / ac - 1)  # sqrt((1-a)/a)
        self.time_pairs = ddim_time_pairs(sampling_steps)
        self.alpha_next_sqrt, self.sigma, self.c = self._coefficients(ac)
        self.step_noise = noise.step_noise(len(self.alpha_next_sqrt), self.shape)

    def _coefficients(self, ac: torch.Tensor):
        """Per step (all but the last): sqrt(a_next), sigma and c of DDIM with eta = 1."""
        alpha_next_sqrt, sigma, c = [], [], []
        for t, t_next in self.time_pairs:
            if t_next < 0:
                continue
            a, a_next = ac[t], ac[t_next]
            s = ((1 - a / a_next) * (1 - a_next) / (1 - a)).sqrt()
            alpha_next_sqrt.append(a_next.sqrt())
            sigma.append(s)
            c.append((1 - a_next - s**2).sqrt())
        return alpha_next_sqrt, sigma, c

    @torch.no_grad()
    def predict(self, x, cond_frame, cond, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x: 1 x L x 265 at step t -> (pred_noise, guided x0), both 1 x L x 265."""
        t_vec = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x0 = self.model.guided(x, cond_frame, cond, t_vec)
        noise = self.sqrt_recip1m[t] * x - x0 / self.sqrt_recipm1[t]
        return noise, x0

    @torch.no_grad()
    def sample(self, cond_frame: torch.Tensor, cond: torch.Tensor, x_init: torch.Tensor) -> torch.Tensor:
        """cond_frame: 1 x 265; cond: 1 x L x 1103; x_init: 1 x L x 265 -> 1 x L x 265,
        on the model's device (inputs are moved there; the noise once, on first use)."""
        device = next(self.model.parameters()).device
        if self.step_noise and self.step_noise[0].device != device:
            self.step_noise = [n.to(device) for n in self.step_noise]
        x, cond_frame, cond = x_init.to(device), cond_frame.to(device), cond.to(device)
        for i, (t, t_next) in enumerate(self.time_pairs):
            pred_noise, x0 = self.predict(x, cond_frame, cond, t)
            if t_next < 0:
                return x0
            x = x0 * self.alpha_next_sqrt[i] + self.c[i] * pred_noise + self.sigma[i] * self.step_noise[i]
        return x
