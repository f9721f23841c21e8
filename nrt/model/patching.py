"""Patches: random ones for training where the truth mask covers enough, overlapping ones for inference.

Inference splits any domain into a grid of overlapping tiles, runs the network on all of them (and all
members) in one batch, and blends the outputs back with weights that taper linearly across each overlap. The
sampler calls the blend at every step, so every tile sees the same full-domain state and no seam can grow.
Tiles are at most `max_patch` cells a side; along each axis they are shrunk to the smallest multiple of the
network's downsampling that still covers the axis with as few tiles (the demo's 66 rows take two 40-row
tiles rather than two 64-row ones), so little work is spent on overlap and padding.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def tile_length(length: int, max_patch: int, overlap: int, multiple: int = 1) -> int:
    """The shortest tile (a multiple of `multiple`, <= max_patch) covering `length` with the fewest tiles."""
    if max_patch % multiple:
        raise ValueError(f"patch size {max_patch} is not a multiple of {multiple}")
    if not 0 <= overlap < max_patch:
        raise ValueError(f"patch overlap {overlap} must be in [0, {max_patch})")
    if length <= max_patch:
        return _round_up(length, multiple)
    count = math.ceil((length - overlap) / (max_patch - overlap))
    return _round_up(math.ceil((length + (count - 1) * overlap) / count), multiple)


def axis_starts(length: int, patch: int, overlap: int) -> list[int]:
    """Patch origins along one axis: the first at 0, the last flush with the end, neighbours overlapping >= `overlap`."""
    if length < patch:
        raise ValueError(f"axis of {length} cells is shorter than the {patch}-cell patch (pad first)")
    if not 0 <= overlap < patch:
        raise ValueError(f"patch overlap {overlap} must be in [0, {patch})")
    if length == patch:
        return [0]
    count = max(2, math.ceil((length - overlap) / (patch - overlap)))
    # integer floor keeps every step <= patch - overlap, because (length - patch)/(count - 1) <= patch - overlap
    return [(i * (length - patch)) // (count - 1) for i in range(count)]


def _taper(starts: list[int], patch: int) -> list[np.ndarray]:
    """1-D blend weights per patch: a linear ramp across each overlap with a neighbour, 1 elsewhere."""
    weights = []
    for index, start in enumerate(starts):
        w = np.ones(patch)
        if index > 0:
            overlap = starts[index - 1] + patch - start
            w[:overlap] = np.minimum(w[:overlap], (np.arange(overlap) + 1) / (overlap + 1))
        if index < len(starts) - 1:
            overlap = start + patch - starts[index + 1]
            ramp = (np.arange(overlap) + 1) / (overlap + 1)
            w[patch - overlap :] = np.minimum(w[patch - overlap :], ramp[::-1])
        weights.append(w)
    return weights


class PatchGrid:
    """Overlapping tiles covering an (height, width) domain; `pad` first when the domain is under one tile.

    `shape` is the (possibly padded) domain the tiles cover and `tile` the (rows, cols) of every tile.
    """

    def __init__(self, height: int, width: int, max_patch: int, overlap: int, multiple: int = 1):
        self.domain = (height, width)
        tile_h = tile_length(height, max_patch, overlap, multiple)
        tile_w = tile_length(width, max_patch, overlap, multiple)
        self.tile = (tile_h, tile_w)
        self.shape = (max(height, tile_h), max(width, tile_w))
        rows, cols = axis_starts(self.shape[0], tile_h, overlap), axis_starts(self.shape[1], tile_w, overlap)
        self.origins = [(r, c) for r in rows for c in cols]
        window = np.stack([np.outer(rw, cw) for rw in _taper(rows, tile_h) for cw in _taper(cols, tile_w)])
        total = np.zeros(self.shape)
        for (r, c), w in zip(self.origins, window):
            total[r : r + tile_h, c : c + tile_w] += w
        self._window = torch.from_numpy(window).float()
        self._total = torch.from_numpy(total).float()

    def __len__(self) -> int:
        return len(self.origins)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Replicate-pad (…, H, W) on the domain to the covered `shape`."""
        return pad_to(x, *self.shape)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., : self.domain[0], : self.domain[1]]

    def extract(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, *shape) -> (B * P, C, *tile), tile index fastest; copied into `out` (any dtype) when given."""
        (th, tw), n = self.tile, len(self.origins)
        if out is None:
            out = x.new_empty((x.shape[0] * n, *x.shape[1:-2], th, tw))
        grouped = out.view(x.shape[0], n, *out.shape[1:])
        for k, (r, c) in enumerate(self.origins):
            grouped[:, k].copy_(x[..., r : r + th, c : c + tw])
        return out

    def blend(self, tiles: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(B * P, C, *tile) -> (B, C, *shape), a weighted mean wherever tiles overlap; written into `out` when given."""
        (th, tw), n = self.tile, len(self.origins)
        grouped = tiles.reshape(-1, n, *tiles.shape[1:])
        window, total = self._weights(tiles.device, tiles.dtype)
        if out is None:
            out = tiles.new_empty(grouped.shape[0], grouped.shape[2], *self.shape)
        out.zero_()
        for k, (r, c) in enumerate(self.origins):
            out[..., r : r + th, c : c + tw].addcmul_(grouped[:, k], window[k])
        return out.div_(total)

    def _weights(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The tile windows and their sum, moved to `device`/`dtype` once and kept there."""
        if self._window.device != device or self._window.dtype != dtype:
            self._window, self._total = self._window.to(device, dtype), self._total.to(device, dtype)
        return self._window, self._total


def pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Replicate-pad (…, H, W) at the bottom/right up to at least (height, width)."""
    extra_h, extra_w = max(0, height - x.shape[-2]), max(0, width - x.shape[-1])
    if not extra_h and not extra_w:
        return x
    shape = x.shape
    padded = F.pad(x.reshape(-1, 1, *shape[-2:]), (0, extra_w, 0, extra_h), mode="replicate")
    return padded.reshape(*shape[:-2], *padded.shape[-2:])


class PatchSampler:
    """Draws training patches uniformly among positions where the truth mask covers >= `min_coverage`."""

    def __init__(self, masks: np.ndarray, patch: int, min_coverage: float):
        _, h, w = np.shape(masks)
        if h < patch or w < patch:
            raise ValueError(f"training fields of {h}x{w} cells are smaller than the {patch}-cell patch")
        self.patch, self._cols = patch, w - patch + 1
        self._flat = []
        for mask in masks:
            # Summed-area table: the covered count of every patch position in O(1).
            table = np.zeros((h + 1, w + 1), dtype=np.int64)
            table[1:, 1:] = np.asarray(mask, dtype=bool).cumsum(0).cumsum(1)
            counts = table[patch:, patch:] - table[:-patch, patch:] - table[patch:, :-patch] + table[:-patch, :-patch]
            self._flat.append(np.flatnonzero(counts >= min_coverage * patch * patch))
        self.positions_per_sample = np.array([len(f) for f in self._flat])
        if self.positions_per_sample.sum() == 0:
            raise ValueError(f"no {patch}x{patch} patch has truth coverage >= {min_coverage:.0%}; lower min_mask_coverage")

    def draw(self, rng: np.random.Generator, count: int) -> list[tuple[int, int, int]]:
        """`count` (sample, row, col) origins, each eligible position equally likely."""
        weights = self.positions_per_sample / self.positions_per_sample.sum()
        samples = rng.choice(len(weights), size=count, p=weights)
        out = []
        for s in samples:
            flat = self._flat[s][rng.integers(len(self._flat[s]))]
            out.append((int(s), int(flat // self._cols), int(flat % self._cols)))
        return out
