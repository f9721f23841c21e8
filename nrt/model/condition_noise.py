"""Noise injected into the precipitation condition (Hess et al. 2025), one stream per ensemble member.

Hess et al. noise a coarse input up to the level where its small-scale errors are masked and let the
generative model rebuild those scales. Here white Gaussian noise of standard deviation `sigma` is added to
the precipitation channel of the network's normalised (transformed, z-scored) inputs, separately for each
member: white noise outweighs the red rain spectrum at the smallest scales first. Member i draws its noise
from its own generator, seeded from (seed, i) on another spawn key than its latents
(`nrt.model.member_noise`), so member i's condition and latents depend only on (seed, i), not on the
ensemble size, and sigma = 0 leaves the inputs (and the ensemble) exactly as without it.
"""

from __future__ import annotations

import numpy as np
import torch

CONDITION_STREAM = 1  # second spawn-key element: member i's condition noise, apart from its latents


def condition_seed(seed: int, member: int) -> int:
    """A 64-bit seed for `member`'s condition noise in the ensemble seeded `seed`."""
    return int(np.random.SeedSequence(int(seed), spawn_key=(int(member), CONDITION_STREAM)).generate_state(1, np.uint64)[0])


def inject(z: torch.Tensor, sigma: float, seed: int, channel: int = 0) -> torch.Tensor:
    """(member, C, H, W) normalised inputs with sigma * N(0, 1) added to `channel` of row i from member i's
    stream; `z` itself when sigma is 0."""
    if sigma < 0:
        raise ValueError(f"condition noise sigma {sigma} must not be negative")
    if sigma == 0:
        return z
    out = z.clone()
    for member in range(z.shape[0]):
        generator = torch.Generator(device=z.device).manual_seed(condition_seed(seed, member))
        noise = torch.randn(z.shape[-2:], generator=generator, device=z.device, dtype=z.dtype)
        out[member, channel].add_(noise, alpha=sigma)
    return out
