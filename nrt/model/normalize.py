"""Per-channel z-scoring with statistics measured on the training set and stored in the checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# A channel that never varies in training (say position on a one-row grid) keeps unit scale instead of 1/0.
_MIN_STD = 1e-6


@dataclass(frozen=True)
class ChannelStats:
    names: tuple[str, ...]
    mean: np.ndarray  # (C,) float64
    std: np.ndarray  # (C,) float64

    @classmethod
    def fit(cls, names, arrays, masks=None) -> ChannelStats:
        """Mean and std of each channel over many (C, H, W) arrays, ignoring NaN and cells outside `masks`.

        Accumulates sums in float64 so millions of cells do not lose precision.
        """
        names = tuple(names)
        count = np.zeros(len(names))
        total = np.zeros(len(names))
        total_sq = np.zeros(len(names))
        for index, array in enumerate(arrays):
            array = np.asarray(array, dtype=np.float64).reshape(len(names), -1)
            valid = np.isfinite(array)
            if masks is not None:
                valid &= np.asarray(masks[index], dtype=bool).reshape(1, -1)
            values = np.where(valid, array, 0.0)
            count += valid.sum(axis=1)
            total += values.sum(axis=1)
            total_sq += (values**2).sum(axis=1)
        if np.any(count == 0):
            empty = [name for name, n in zip(names, count) if n == 0]
            raise ValueError(f"no valid values to normalise channel(s) {', '.join(empty)}")
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        return cls(names, mean, np.where(std < _MIN_STD, 1.0, std))

    def _shaped(self, like) -> tuple:
        shape = (len(self.names), 1, 1)
        if isinstance(like, torch.Tensor):
            return (
                torch.as_tensor(self.mean, dtype=like.dtype, device=like.device).reshape(shape),
                torch.as_tensor(self.std, dtype=like.dtype, device=like.device).reshape(shape),
            )
        return self.mean.reshape(shape).astype(like.dtype), self.std.reshape(shape).astype(like.dtype)

    def apply(self, x):
        """(…, C, H, W) physical to z-scores; missing (NaN) cells become 0, the training mean."""
        mean, std = self._shaped(x)
        z = (x - mean) / std
        return torch.nan_to_num(z, nan=0.0) if isinstance(z, torch.Tensor) else np.nan_to_num(z, nan=0.0)

    def invert(self, z):
        mean, std = self._shaped(z)
        return z * std + mean

    def to_dict(self) -> dict:
        return {"names": list(self.names), "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> ChannelStats:
        names = tuple(data["names"])
        mean, std = np.asarray(data["mean"], dtype=np.float64), np.asarray(data["std"], dtype=np.float64)
        if mean.shape != (len(names),) or std.shape != (len(names),) or np.any(std <= 0):
            raise ValueError("normalisation statistics do not match their channel names or have std <= 0")
        return cls(names, mean, std)
