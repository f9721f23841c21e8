"""EDM sampler (Karras et al. 2022, Algorithm 2): Heun's 2nd-order method or Euler, with optional churn."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 800.0, 7.0


def sigma_steps(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO) -> torch.Tensor:
    """The noise levels σ_0 > … > σ_{N-1} of EDM's schedule, then σ_N = 0 (float64, length steps + 1)."""
    if steps < 1:
        raise ValueError("the sampler needs at least one step")
    if steps == 1:
        ramp = torch.zeros(1, dtype=torch.float64)
    else:
        ramp = torch.arange(steps, dtype=torch.float64) / (steps - 1)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def edm_sample(
    denoise: Callable[[torch.Tensor, float], torch.Tensor],
    latents: torch.Tensor,
    *,
    steps: int = 18,
    solver: Literal["heun", "euler"] = "heun",
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
    churn: float = 0.0,
    churn_sigma_min: float = 0.0,
    churn_sigma_max: float = math.inf,
    churn_noise: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Integrate the probability-flow ODE (SDE with churn > 0) from σ_max to 0.

    `denoise(x, sigma)` returns D(x; σ) for the whole state x; `latents` are standard normal with x's shape.
    """
    if solver not in ("heun", "euler"):
        raise ValueError(f"unknown solver {solver!r} (heun or euler)")
    t_steps = sigma_steps(steps, sigma_min, sigma_max, rho).tolist()
    x_next = latents.float() * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        gamma = min(churn / steps, math.sqrt(2) - 1) if churn_sigma_min <= t_cur <= churn_sigma_max else 0.0
        t_hat = t_cur + gamma * t_cur
        if gamma > 0:
            noise = torch.randn(x_cur.shape, device=x_cur.device, generator=generator, dtype=x_cur.dtype)
            x_hat = x_cur + math.sqrt(t_hat**2 - t_cur**2) * churn_noise * noise
        else:
            x_hat = x_cur
        d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if solver == "heun" and t_next > 0:
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next
