"""Masked losses: the truth (DPR gridded to 0.05°) exists only inside the swath, so both losses take a mask."""

from __future__ import annotations

import torch

from nrt.model.precond import SIGMA_DATA


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over cells where `mask` is true (0 when the mask is empty, so a batch never yields NaN)."""
    mask = mask.to(values.dtype).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def regression_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked MSE; target cells outside the mask may hold anything (NaN included)."""
    target = torch.where(mask.bool(), target, prediction.detach())
    return masked_mean((prediction - target) ** 2, mask)


class EDMLoss:
    """EDM training loss on the residual: σ ~ logNormal(P_mean, P_std), weight (σ² + σ_d²)/(σ σ_d)²."""

    def __init__(self, p_mean: float = 0.0, p_std: float = 1.2, sigma_data: float = SIGMA_DATA):
        self.p_mean, self.p_std, self.sigma_data = p_mean, p_std, sigma_data

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def draw(self, batch: int, shape: tuple[int, ...], generator: torch.Generator | None = None):
        """(σ (batch,), unit normal noise (batch, *shape)) on the CPU, so every rank can draw a global batch alike."""
        sigma = (torch.randn(batch, generator=generator) * self.p_std + self.p_mean).exp()
        return sigma, torch.randn((batch, *shape), generator=generator)

    def __call__(self, denoiser, residual, condition, lead, mask, *, sigma=None, noise=None, generator=None) -> torch.Tensor:
        """denoiser(x, sigma, condition, lead) -> D; residual (B, 1, H, W), NaN allowed outside `mask`.

        σ and the unit noise are drawn here unless given (`draw`).
        """
        if sigma is None:
            sigma, noise = self.draw(residual.shape[0], tuple(residual.shape[1:]), generator)
        sigma, noise = sigma.to(residual.device), noise.to(residual.device)
        residual = torch.where(mask.bool(), residual, torch.zeros_like(residual))
        denoised = denoiser(residual + noise * sigma.reshape(-1, 1, 1, 1), sigma, condition, lead)
        return masked_mean(self.weight(sigma).reshape(-1, 1, 1, 1) * (denoised - residual) ** 2, mask)
