"""EDM preconditioning (Karras et al. 2022, Table 1) around a raw network F, and the regression wrapper.

D(x; σ) = c_skip(σ)·x + c_out(σ)·F([c_in(σ)·x, condition]; c_noise(σ), lead). c_in scales only the noisy
input: the condition is already z-scored and must reach F unchanged at every noise level.
"""

from __future__ import annotations

import torch
from torch import nn

SIGMA_DATA = 0.5


def edm_coefficients(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA):
    """(c_skip, c_out, c_in, c_noise) for noise levels `sigma`."""
    if not isinstance(sigma, torch.Tensor):
        sigma = torch.tensor(sigma, dtype=torch.float64)
    var = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / var
    c_out = sigma * sigma_data / var.sqrt()
    c_in = 1 / var.sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


class EDMPrecond(nn.Module):
    def __init__(self, net: nn.Module, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.net, self.sigma_data = net, sigma_data

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, condition: torch.Tensor, lead: torch.Tensor) -> torch.Tensor:
        """x (B, 1, H, W) noisy residual; sigma (B,) or scalar; condition (B, C, H, W); lead (B,)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        shape = (-1, 1, 1, 1)
        net_in = torch.cat([c_in.reshape(shape) * x, condition.to(x.dtype)], dim=1)
        f = self.net(net_in, c_noise, lead).float()
        return c_skip.reshape(shape) * x.float() + c_out.reshape(shape) * f


class RegressionNet(nn.Module):
    """The regression UNet: predicts the (normalised) mean from the condition, at a fixed noise label of 0."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, condition: torch.Tensor, lead: torch.Tensor) -> torch.Tensor:
        labels = torch.zeros(condition.shape[0], device=condition.device)
        return self.net(condition, labels, lead).float()
