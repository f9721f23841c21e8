"""What defines a trained model besides its weights: channels, transform, normalisation and network sizes.

It is stored in the checkpoint metadata (see `checkpoint.py`) and rebuilt from it at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nrt.model.conditioning import PRECIP_CHANNELS, ChannelSet
from nrt.model.networks import NetworkSpec, SongUNet
from nrt.model.normalize import ChannelStats
from nrt.model.precond import EDMPrecond, RegressionNet
from nrt.model.sampler import SIGMA_MAX, SIGMA_MIN
from nrt.model.transforms import PrecipTransform

MAX_RATE_MMH = 500.0  # above any 0.05°, 30-min rain rate on record


@dataclass(frozen=True)
class ModelSpec:
    channels: ChannelSet
    transform: PrecipTransform
    input_stats: ChannelStats  # of the transformed raw channels, order = channels.names()
    target_stats: ChannelStats  # of the transformed truth inside the mask
    regression: NetworkSpec  # in_channels = number of condition channels
    diffusion: NetworkSpec  # in_channels = noisy residual + condition + regression mean
    sigma_data: float = 0.5
    sigma_min: float = SIGMA_MIN  # the noise range the sampler integrates over, from the training config
    sigma_max: float = SIGMA_MAX

    def __post_init__(self):
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"noise range needs 0 < sigma_min < sigma_max (got {self.sigma_min}, {self.sigma_max})")
        names = tuple(self.channels.names())
        if self.input_stats.names != names:
            raise ValueError(f"normalisation channels {self.input_stats.names} differ from the model's {names}")
        if self.regression.in_channels != len(names) or self.diffusion.in_channels != len(names) + 2:
            raise ValueError("network input sizes do not match the conditioning channels")

    def normalize_inputs(self, raw):
        """(…, C, H, W) physical channels to the network's z-scored inputs (precipitation transformed first)."""
        x = raw.clone() if isinstance(raw, torch.Tensor) else np.array(raw, dtype=np.float32)
        for index, name in enumerate(self.input_stats.names):
            if name in PRECIP_CHANNELS:
                x[..., index, :, :] = self.transform.forward(x[..., index, :, :])
        return self.input_stats.apply(x)

    def normalize_target(self, rate):
        """(…, 1, H, W) mm/h truth to z-scored transformed units (NaN stays NaN so masks still apply)."""
        mean, std = float(self.target_stats.mean[0]), float(self.target_stats.std[0])
        return (self.transform.forward(rate) - mean) / std

    def denormalize_target(self, z):
        """Inverse of `normalize_target`, clipped to [0, MAX_RATE_MMH] mm/h.

        The cap only acts when a network extrapolates far outside its training data (inputs many standard
        deviations out): exp() of such a value would otherwise overflow to inf.
        """
        mean, std = float(self.target_stats.mean[0]), float(self.target_stats.std[0])
        rate = self.transform.inverse(z * std + mean)
        return rate.clamp(max=MAX_RATE_MMH) if isinstance(rate, torch.Tensor) else np.minimum(rate, MAX_RATE_MMH)

    def build(self) -> tuple[RegressionNet, EDMPrecond]:
        return RegressionNet(SongUNet(self.regression)), EDMPrecond(SongUNet(self.diffusion), self.sigma_data)

    def to_dict(self) -> dict:
        return {
            "channels": self.channels.to_dict(),
            "transform": self.transform.to_dict(),
            "input_stats": self.input_stats.to_dict(),
            "target_stats": self.target_stats.to_dict(),
            "regression": self.regression.to_dict(),
            "diffusion": self.diffusion.to_dict(),
            "sigma_data": self.sigma_data,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        """Checkpoints written before the noise range was recorded get the training defaults (`records_noise_range`)."""
        return cls(
            channels=ChannelSet.from_dict(data["channels"]),
            transform=PrecipTransform.from_dict(data["transform"]),
            input_stats=ChannelStats.from_dict(data["input_stats"]),
            target_stats=ChannelStats.from_dict(data["target_stats"]),
            regression=NetworkSpec.from_dict(data["regression"]),
            diffusion=NetworkSpec.from_dict(data["diffusion"]),
            sigma_data=float(data["sigma_data"]),
            sigma_min=float(data.get("sigma_min", SIGMA_MIN)),
            sigma_max=float(data.get("sigma_max", SIGMA_MAX)),
        )


def records_noise_range(data: dict) -> bool:
    """Whether a checkpoint's model description carries its own sigma_min and sigma_max."""
    return "sigma_min" in data and "sigma_max" in data
