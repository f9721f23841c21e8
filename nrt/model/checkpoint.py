"""Checkpoints: safetensors weights plus a JSON sidecar (model config, normalisation statistics, provenance).

The same metadata is embedded in the safetensors header, so the weights file alone is self-describing and a
single atomic write; the sidecar adds the file's sha256, which products record. Reading verifies the hash and
that the sidecar describes these very weights. Pickle-based formats (.pt/.pth/.ckpt) are never opened.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from nrt.errors import DataError
from nrt.io import atomic_path, sha256_file

FORMAT = "nrt-checkpoint/1"
_META_KEY = "nrt"
_PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin"}
# Keys a sidecar may hold that its header lacks: statistics of the training set added to a checkpoint trained
# before they were recorded (the header would change the weights file's hash). Present in both, they must agree.
SIDECAR_ANNOTATIONS = frozenset({"input_quantiles"})


@dataclass
class Checkpoint:
    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict
    sha256: str


def paths_for(path: str | Path) -> tuple[Path, Path]:
    """(weights, sidecar) for `x`, `x.safetensors` or `x.json`."""
    path = Path(path)
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise DataError(path, "pickle-based checkpoints are refused; use a .safetensors checkpoint")
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def write_weights(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """One atomic safetensors file carrying `meta` (JSON) in its header."""
    body = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(body, str(tmp), metadata={"format": FORMAT, _META_KEY: json.dumps(meta, sort_keys=True)})
        os.chmod(tmp, 0o644)  # safetensors creates 0600; weights are not secret and services read them


def read_weights(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    if not path.is_file():
        raise DataError(path, "no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(path, f"not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    if header.get("format") != FORMAT or _META_KEY not in header:
        raise DataError(path, f"not an nrt checkpoint (header format {header.get('format')!r}, expected {FORMAT!r})")
    try:
        meta = json.loads(header[_META_KEY])
    except json.JSONDecodeError as exc:
        raise DataError(path, f"checkpoint metadata is not valid JSON ({exc.msg})") from None
    return tensors, meta


def save(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> str:
    """Write weights and sidecar atomically (weights first); returns the weights' sha256."""
    weights, sidecar = paths_for(path)
    write_weights(weights, tensors, meta)
    digest = sha256_file(weights)
    with atomic_path(sidecar) as tmp:
        tmp.write_text(json.dumps({**meta, "weights": weights.name, "sha256": digest}, indent=2, sort_keys=True) + "\n")
    return digest


def load(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read and verify a checkpoint written by `save`; any inconsistency is a one-line `DataError`."""
    weights, sidecar = paths_for(path)
    if not sidecar.is_file():
        raise DataError(sidecar, "checkpoint JSON sidecar is missing")
    try:
        described = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(sidecar, f"not valid JSON ({exc})") from None
    if not isinstance(described, dict) or "sha256" not in described:
        raise DataError(sidecar, "no sha256 recorded for the weights")
    if not weights.is_file():
        raise DataError(weights, "no such checkpoint file")
    digest = sha256_file(weights)
    if digest != described["sha256"]:
        raise DataError(weights, f"sha256 {digest[:12]}… differs from {described['sha256'][:12]}… in {sidecar.name}: altered or mismatched file")
    tensors, meta = read_weights(weights, device)
    annotations = {k: v for k, v in described.items() if k in SIDECAR_ANNOTATIONS and k not in meta}
    if {k: v for k, v in described.items() if k not in ("weights", "sha256", *annotations)} != meta:
        raise DataError(sidecar, f"describes a different model than the header of {weights.name}")
    return Checkpoint(weights, tensors, {**meta, **annotations}, digest)
