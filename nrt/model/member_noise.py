"""Per-member random streams, after NVlabs/edm's `StackedRandomGenerator`.

Member i draws all its noise (latents and churn) from its own generator, seeded from (seed, i) through
numpy's `SeedSequence` spawn keys, so member i is the same field whether the ensemble has 10 members or 30.
"""

from __future__ import annotations

import numpy as np
import torch


def member_seed(seed: int, member: int) -> int:
    """A 64-bit seed for `member` of the ensemble seeded `seed` (the SeedSequence child `member` of `seed`)."""
    return int(np.random.SeedSequence(int(seed), spawn_key=(int(member),)).generate_state(1, np.uint64)[0])


class StackedRandomGenerator:
    """One torch.Generator per member; draws are stacked along the leading (member) axis."""

    def __init__(self, device: torch.device | str, seed: int, members: int):
        self.generators = [torch.Generator(device).manual_seed(member_seed(seed, i)) for i in range(members)]

    def randn(self, shape, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
              out: torch.Tensor | None = None) -> torch.Tensor:
        """Standard normal of `shape`, whose leading axis is the member axis; written into `out` when given."""
        if shape[0] != len(self.generators):
            raise ValueError(f"{shape[0]} rows requested from {len(self.generators)} member generators")
        if out is None:
            out = torch.empty(shape, dtype=dtype, device=device)
        for row, generator in zip(out, self.generators):
            torch.randn(row.shape, generator=generator, dtype=out.dtype, device=out.device, out=row)
        return out

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(x.shape, dtype=x.dtype, device=x.device)
