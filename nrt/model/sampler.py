"""EDM sampler (Karras et al. 2022, Algorithm 2): Heun's 2nd-order method or Euler, with optional churn.

As in NVlabs/edm's `edm_sampler`, the state is integrated in float64 (the denoiser sees it in its own precision)
and churn noise comes from the caller's `randn_like`, normally a per-member `StackedRandomGenerator`. The update
runs in place on four state-sized buffers from a `Workspace`, so a step allocates nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

from nrt.model.workspace import Workspace

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 800.0, 7.0


def sigma_steps(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO) -> torch.Tensor:
    """The noise levels σ_0 > … > σ_{N-1} of EDM's schedule, then σ_N = 0 (float64, length steps + 1)."""
    if steps < 1:
        raise ValueError("the sampler needs at least one step")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"the noise range needs 0 < sigma_min < sigma_max (got {sigma_min}, {sigma_max})")
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
    randn_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
    workspace: Workspace | None = None,
) -> torch.Tensor:
    """Integrate the probability-flow ODE (SDE with churn > 0) from σ_max to 0; returns the float64 state.

    `denoise(x, sigma)` returns D(x; σ) for the whole state x (float64; D may be float32); `latents` are standard
    normal with x's shape. The result is a buffer of `workspace` when one is given: copy it before the next call.
    """
    if solver not in ("heun", "euler"):
        raise ValueError(f"unknown solver {solver!r} (heun or euler)")
    t_steps = sigma_steps(steps, sigma_min, sigma_max, rho).tolist()
    workspace = workspace or Workspace()
    x_cur, x_next, d_cur, d_prime = (
        workspace.get(f"sampler.{name}", latents.shape, torch.float64, latents.device)
        for name in ("x_cur", "x_next", "d_cur", "d_prime")
    )
    x_cur.copy_(latents).mul_(t_steps[0])  # widened first, as edm's latents.to(float64) * t_steps[0]
    for t_cur, t_next in zip(t_steps[:-1], t_steps[1:]):
        gamma = min(churn / steps, math.sqrt(2) - 1) if churn_sigma_min <= t_cur <= churn_sigma_max else 0.0
        t_hat = t_cur + gamma * t_cur
        if gamma > 0:  # x_hat = x_cur + sqrt(t_hat² - t_cur²) S_noise ε, in place
            x_cur.add_(randn_like(x_cur), alpha=math.sqrt(t_hat**2 - t_cur**2) * churn_noise)
        torch.sub(x_cur, denoise(x_cur, t_hat), out=d_cur).div_(t_hat)
        torch.add(x_cur, d_cur, alpha=t_next - t_hat, out=x_next)
        if solver == "heun" and t_next > 0:
            torch.sub(x_next, denoise(x_next, t_next), out=d_prime).div_(t_next)
            d_cur.add_(d_prime).mul_(0.5)  # (d + d')/2: halving is exact, so this equals d/2 + d'/2
            torch.add(x_cur, d_cur, alpha=t_next - t_hat, out=x_next)
        x_cur, x_next = x_next, x_cur
    return x_cur
