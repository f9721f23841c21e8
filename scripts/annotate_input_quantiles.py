"""Add the training input's precipitation quantiles (`input_quantiles`) to a checkpoint trained before they were
recorded: the sidecar JSON only (`nrt.model.checkpoint.SIDECAR_ANNOTATIONS`), the weights stay byte-identical.

The training set is rebuilt with the checkpoint's own recipe and must match what the checkpoint recorded:
the same events with the same example counts, and the same number of twin examples. For the shipped demo:

    nrt twin generate --start 2024-04-01T00:00Z --end 2024-04-11T00:00Z --out ~/.cache/nrt/twin-train
    OMP_NUM_THREADS=1 nice nrt --config config/train-demo.toml train --register-tree ~/.cache/nrt/twin-train \\
        --build-only --dataset rebuilt.safetensors
    python scripts/annotate_input_quantiles.py nrt/model/weights/demo rebuilt.safetensors

Checkpoints trained since record the quantiles themselves (`nrt.model.train`), in the header too.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nrt.errors import DataError  # noqa: E402
from nrt.io import atomic_path, sha256_file  # noqa: E402
from nrt.model import checkpoint  # noqa: E402
from nrt.model.dataset import read_training_set  # noqa: E402
from nrt.model.qdm import training_input_quantiles  # noqa: E402
from nrt.model.spec import ModelSpec  # noqa: E402


def same_recipe(recorded: dict, rebuilt: dict) -> list[str]:
    """Differences between the checkpoint's `training_data` and a rebuilt set's provenance."""
    problems = []
    for name in sorted(set(recorded.get("events", {})) | set(rebuilt.get("events", {}))):
        want, got = recorded.get("events", {}).get(name, {}), rebuilt.get("events", {}).get(name, {})
        if want.get("examples") != got.get("examples") or want.get("frames") != got.get("frames"):
            problems.append(f"{name}: {want.get('examples')} examples recorded, {got.get('examples')} rebuilt")
    if recorded.get("twin_examples") != rebuilt.get("twin_examples"):
        problems.append(f"twin: {recorded.get('twin_examples')} examples recorded, {rebuilt.get('twin_examples')} rebuilt")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="NAME, NAME.safetensors or NAME.json")
    parser.add_argument("dataset", type=Path, help="the training set rebuilt with the checkpoint's config")
    args = parser.parse_args()
    try:
        ckpt = checkpoint.load(args.checkpoint)
        data = read_training_set(args.dataset)
    except DataError as exc:
        print(f"annotate_input_quantiles: {exc}", file=sys.stderr)
        return 2
    problems = same_recipe(ckpt.meta.get("training_data", {}), data.provenance)
    if problems:
        print(f"annotate_input_quantiles: {args.dataset}: not the checkpoint's training set ({'; '.join(problems)})", file=sys.stderr)
        return 2
    quantiles = training_input_quantiles(data.channels[:, 0], args.dataset.name, sha256_file(args.dataset))
    config_file = ckpt.meta.get("provenance", {}).get("config_file", "?")
    spec = ModelSpec.from_dict(ckpt.meta["model"])
    precip = spec.transform.forward(data.channels[:, 0].astype(np.float64))
    precip = precip[np.isfinite(precip)]
    recorded = spec.input_stats
    quantiles["source"] = (
        f"rebuilt {datetime.now(timezone.utc):%Y-%m-%d} with the recipe of {config_file} (nrt train --build-only; "
        f"every event's example count and the twin's equal training_data): {len(data.channels)} examples, every finite "
        f"cell of channel precip. Transformed precip mean/std: rebuilt {precip.mean():.5f}/{precip.std():.4f}, recorded "
        f"in training {recorded.mean[0]:.5f}/{recorded.std[0]:.4f}. The set the weights were trained on had sha256 "
        f"{ckpt.meta.get('provenance', {}).get('dataset_sha256', '?')}")
    sidecar = checkpoint.paths_for(args.checkpoint)[1]
    described = json.loads(sidecar.read_text())
    described["input_quantiles"] = quantiles
    with atomic_path(sidecar) as tmp:
        tmp.write_text(json.dumps(described, indent=2, sort_keys=True) + "\n")
    checkpoint.load(args.checkpoint)
    print(f"{sidecar}: input_quantiles from {args.dataset} (wet fraction {quantiles['precip']['wet_fraction']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
