"""EDM samplers (Karras et al. 2022, Algorithm 2): Heun's 2nd-order method, Euler, or DPM-Solver++(2M), with
optional churn.

As in NVlabs/edm's `edm_sampler`, the state is integrated in float64 (the denoiser sees it in its own precision)
and churn noise comes from the caller's `randn_like`, normally a per-member `StackedRandomGenerator`. The update
runs in place on state-sized buffers from a `Workspace`, so a step allocates nothing.

DPM-Solver++(2M) (Lu et al. 2022; k-diffusion's `sample_dpmpp_2m`) is second order at one network evaluation
per step: it extrapolates the denoised field linearly in log σ from the previous step's. In EDM's σ-parametrisation
(x = y + σn) its update from σ to σ' is x' = (σ'/σ) x + (1 − σ'/σ) D̂, where D̂ is the extrapolated denoiser;
with D̂ = D it is exactly Euler's step. Written here rather than imported because k-diffusion is not a
dependency and the update must run in place on the workspace's buffers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from nrt.model.workspace import Workspace

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 800.0, 7.0
SOLVERS = ("heun", "euler", "dpm2m")
Solver = Literal["heun", "euler", "dpm2m"]


def evaluations(steps: int, solver: str, denoise_to_zero: bool = True) -> int:
    """Network evaluations per sample: Heun corrects every step but the last (to σ = 0), the others never; without
    `denoise_to_zero` that last step, one evaluation at σ_min, is not taken (a 1-step schedule has no σ_min)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r} ({', '.join(SOLVERS)})")
    if steps < 1:
        raise ValueError("the sampler needs at least one step")
    return (2 * steps - 1 if solver == "heun" else steps) - (0 if denoise_to_zero or steps < 2 else 1)


@dataclass(frozen=True)
class SamplerSettings:
    """How a sample is integrated. sigma_min/sigma_max None: the checkpoint's own noise range.

    A sigma_max below the checkpoint's starts from noise of that size: for a residual whose spread is far below
    the checkpoint's σ_max, the first levels of the full range only return the mean, so a few-step sampler
    spends its evaluations where the residual's structure is. `residual_scale` multiplies the sampled residual:
    a few-step sampler's samples are closer to the posterior mean than the converged ODE's (each large step
    moves towards D, an average), and this factor, fitted on training events, restores the spread.
    `denoise_to_zero` False stops at σ_min instead of taking EDM's last step to 0, an evaluation at σ_min whose
    denoiser is the identity up to c_out(σ_min) ≈ σ_min: one evaluation fewer for a change of order σ_min.
    `residual_scale_by_rate`, pairs (rate mm/h, factor) with rising rates, multiplies `residual_scale` by a factor
    of each cell's regression mean: a few-step sampler falls short of the converged ODE's spread more in light
    rain than in heavy (docs/model.md, "A residual scale by rain rate"). Member i still depends only on its noise.
    """

    solver: Solver = "heun"
    steps: int = 18
    rho: float = RHO
    sigma_min: float | None = None
    sigma_max: float | None = None
    churn: float = 0.0
    churn_sigma_min: float = 0.0
    churn_sigma_max: float = math.inf
    churn_noise: float = 1.0
    residual_scale: float = 1.0
    denoise_to_zero: bool = True
    residual_scale_by_rate: tuple[tuple[float, float], ...] = ()

    @property
    def evaluations(self) -> int:
        return evaluations(self.steps, self.solver, self.denoise_to_zero)

    def overridden(self, steps: int | None = None, solver: str | None = None) -> SamplerSettings:
        """These settings with `steps` and `solver` replaced where given (a run's `--steps`, `--solver`)."""
        return replace(self, steps=steps or self.steps, solver=solver or self.solver)

    def residual_scales(self, mean_rate: np.ndarray) -> np.ndarray | float:
        """The factor on the sampled residual at each cell of `mean_rate` (mm/h): `residual_scale` times the factor
        interpolated linearly in log(1 + rate) between the pairs of `residual_scale_by_rate`, constant beyond them."""
        if not self.residual_scale_by_rate:
            return self.residual_scale
        rates, factors = zip(*self.residual_scale_by_rate)
        return self.residual_scale * np.interp(np.log1p(np.maximum(mean_rate, 0.0)), np.log1p(rates), factors)

    def noise_range(self, sigma_min: float, sigma_max: float) -> tuple[float, float]:
        """The range integrated over, given the checkpoint's: the configured levels, within the trained range."""
        low = sigma_min if self.sigma_min is None else max(self.sigma_min, sigma_min)
        high = sigma_max if self.sigma_max is None else min(self.sigma_max, sigma_max)
        if not low < high:
            raise ValueError(f"the sampler's noise range is empty ({low} to {high})")
        return low, high

    def describe(self) -> str:
        text = f"{self.solver} {self.steps} steps ({self.evaluations} network evaluations)"
        if self.churn > 0:
            text += f", churn {self.churn:g}"
        if self.residual_scale != 1:
            text += f", residual x {self.residual_scale:g}"
        if self.residual_scale_by_rate:
            text += ", by rate " + " ".join(f"{rate:g}:{factor:g}" for rate, factor in self.residual_scale_by_rate)
        if not self.denoise_to_zero:
            text += ", stops at sigma_min"
        return text


def sigma_steps(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO) -> torch.Tensor:
    """The noise levels σ_0 > … > σ_{N-1} of EDM's schedule, then σ_N = 0 (float64, length steps + 1)."""
    if steps < 1:
        raise ValueError("the sampler needs at least one step")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"the noise range needs 0 < sigma_min < sigma_max (got {sigma_min}, {sigma_max})")
    if rho <= 0:
        raise ValueError(f"the schedule's rho must be positive (got {rho})")
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
    solver: Solver = "heun",
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
    churn: float = 0.0,
    churn_sigma_min: float = 0.0,
    churn_sigma_max: float = math.inf,
    churn_noise: float = 1.0,
    randn_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
    workspace: Workspace | None = None,
    denoise_to_zero: bool = True,
) -> torch.Tensor:
    """Integrate the probability-flow ODE (SDE with churn > 0) from σ_max to 0; returns the float64 state.

    `denoise(x, sigma)` returns D(x; σ) for the whole state x (float64; D may be float32); `latents` are standard
    normal with x's shape. The result is a buffer of `workspace` when one is given: copy it before the next call.
    Without `denoise_to_zero` the integration ends at σ_min (the state keeps noise of that size); a 1-step
    schedule, σ_max then 0, has no σ_min level and is unchanged.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r} ({', '.join(SOLVERS)})")
    t_steps = sigma_steps(steps, sigma_min, sigma_max, rho).tolist()
    if not denoise_to_zero and steps > 1:
        t_steps.pop()  # the schedule now ends at σ_min
    workspace = workspace or Workspace()
    names = ("x_cur", "x_next", "d_cur", "d_prime") if solver != "dpm2m" else ("x_cur", "x_next", "d_cur", "d_prev")
    x_cur, x_next, d_cur, d_aux = (
        workspace.get(f"sampler.{name}", latents.shape, torch.float64, latents.device) for name in names
    )
    x_cur.copy_(latents).mul_(t_steps[0])  # widened first, as edm's latents.to(float64) * t_steps[0]
    t_prev = None  # dpm2m: the level of the previous evaluation, whose denoised field is in d_aux
    for t_cur, t_next in zip(t_steps[:-1], t_steps[1:]):
        gamma = min(churn / steps, math.sqrt(2) - 1) if churn_sigma_min <= t_cur <= churn_sigma_max else 0.0
        t_hat = t_cur + gamma * t_cur
        if gamma > 0:  # x_hat = x_cur + sqrt(t_hat² - t_cur²) S_noise ε, in place
            x_cur.add_(randn_like(x_cur), alpha=math.sqrt(t_hat**2 - t_cur**2) * churn_noise)
        if solver == "dpm2m":
            t_prev = _dpm2m_step(denoise, x_cur, x_next, d_cur, d_aux, t_prev, t_hat, t_next)
        else:
            torch.sub(x_cur, denoise(x_cur, t_hat), out=d_cur).div_(t_hat)
            torch.add(x_cur, d_cur, alpha=t_next - t_hat, out=x_next)
            if solver == "heun" and t_next > 0:
                torch.sub(x_next, denoise(x_next, t_next), out=d_aux).div_(t_next)
                d_cur.add_(d_aux).mul_(0.5)  # (d + d')/2: halving is exact, so this equals d/2 + d'/2
                torch.add(x_cur, d_cur, alpha=t_next - t_hat, out=x_next)
        x_cur, x_next = x_next, x_cur
    return x_cur


def _dpm2m_step(denoise, x_cur, x_next, denoised, previous, t_prev, t_hat, t_next) -> float:
    """One DPM-Solver++(2M) step from t_hat to t_next into x_next; `previous` holds D at t_prev (None: first step).

    The last step (to σ = 0) and the first are first order, as in k-diffusion. Returns t_hat, the level of the
    denoised field now in `previous`.
    """
    denoised.copy_(denoise(x_cur, t_hat))
    ratio = t_next / t_hat
    if t_prev is not None and t_next > 0:
        h, h_last = math.log(t_hat / t_next), math.log(t_prev / t_hat)
        weight = h / (2 * h_last)  # D̂ = (1 + 1/(2r)) D - 1/(2r) D_prev with r = h_last / h
        previous.sub_(denoised).mul_(-weight).add_(denoised)  # previous := D + w (D - D_prev)
        torch.mul(x_cur, ratio, out=x_next).add_(previous, alpha=1 - ratio)
    else:
        torch.mul(x_cur, ratio, out=x_next).add_(denoised, alpha=1 - ratio)
    previous.copy_(denoised)
    return t_hat
