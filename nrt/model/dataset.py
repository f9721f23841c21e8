"""Training sets: (conditioning channels, truth, mask, lead) samples on the 0.05° grid, in one safetensors file.

The pure core takes arrays (`write_training_set`, `read_training_set`); `build_from_catalog` is the I/O edge
that collocates the catalog's granules: IMERG at lead 0 and hindcast nowcasts at leads 1-8, GEOS-FP and DEM
as conditioning, the DPR swath gridded to 0.05° as truth (mask = inside the swath).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from nrt.errors import DataError
from nrt.io import atomic_path
from nrt.model.conditioning import ChannelSet

FORMAT = "nrt-trainingset/1"


@dataclass
class Sample:
    channels: np.ndarray  # (C, lat, lon) physical units, order = ChannelSet.names()
    truth: np.ndarray  # (lat, lon) mm/h, NaN outside the swath
    mask: np.ndarray  # (lat, lon) bool: truth is valid here
    lead: int = 0
    time: datetime | None = None


@dataclass
class TrainingSet:
    channels: np.ndarray  # (N, C, lat, lon) float32
    truth: np.ndarray  # (N, lat, lon) float32
    mask: np.ndarray  # (N, lat, lon) bool
    lead: np.ndarray  # (N,) int64
    channel_set: ChannelSet
    times: list[str | None] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.lead)


def write_training_set(path: str | Path, samples: list[Sample], channel_set: ChannelSet, provenance: dict | None = None) -> Path:
    """Stack `samples` into one atomic safetensors file; the truth is NaN wherever the mask is false."""
    path = Path(path)
    if not samples:
        raise DataError(path, "no training samples to write")
    names = channel_set.names()
    shape = samples[0].truth.shape
    for index, s in enumerate(samples):
        if s.channels.shape != (len(names), *shape) or s.truth.shape != shape or s.mask.shape != shape:
            raise DataError(path, f"sample {index} has shapes {s.channels.shape}/{s.truth.shape}/{s.mask.shape}, expected ({len(names)}, {shape[0]}, {shape[1]})")
    mask = np.stack([np.asarray(s.mask, dtype=bool) & np.isfinite(s.truth) for s in samples])
    truth = np.where(mask, np.stack([s.truth for s in samples]), np.nan).astype(np.float32)
    tensors = {
        "channels": torch.from_numpy(np.stack([s.channels for s in samples]).astype(np.float32)),
        "truth": torch.from_numpy(truth),
        "mask": torch.from_numpy(mask.astype(np.uint8)),
        "lead": torch.tensor([int(s.lead) for s in samples], dtype=torch.int64),
    }
    times = [s.time.isoformat() if s.time else None for s in samples]
    metadata = {
        "format": FORMAT,
        "channel_set": json.dumps(channel_set.to_dict()),
        "times": json.dumps(times),
        "provenance": json.dumps(provenance or {}, default=str),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_training_set(path: str | Path) -> TrainingSet:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such training set")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(path, f"not a readable safetensors training set ({str(exc).splitlines()[0]})") from None
    if meta.get("format") != FORMAT or not {"channels", "truth", "mask", "lead"} <= tensors.keys():
        raise DataError(path, f"not an nrt training set (format {meta.get('format')!r}, expected {FORMAT!r})")
    channel_set = ChannelSet.from_dict(json.loads(meta["channel_set"]))
    channels = tensors["channels"].numpy()
    if channels.shape[1] != len(channel_set.names()):
        raise DataError(path, f"{channels.shape[1]} channels stored but the channel set names {len(channel_set.names())}")
    return TrainingSet(
        channels=channels,
        truth=tensors["truth"].numpy(),
        mask=tensors["mask"].numpy().astype(bool),
        lead=tensors["lead"].numpy(),
        channel_set=channel_set,
        times=json.loads(meta.get("times", "[]")),
        provenance=json.loads(meta.get("provenance", "{}")),
    )
