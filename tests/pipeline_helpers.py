"""A small world for the pipeline, service and demo tests: one twin, one checkpoint, one config shape.

The twin covers a 2° x 1.5° domain in western Iowa on 2024-06-01 06:00-14:00 UTC: GEOS-FP forecasts from
06:00 and 12:00, IMERG Early for every motion window of the cycles 12:00 and 12:30, and a DPR granule
(12:02:57-12:32:57) whose swath covers the domain, so the 12:30 cycle verifies and the 12:00 one does not.
The twin and checkpoint are made once per test session under pytest's base temporary directory and
shared by every test module that asks (tests only read them; a test that deletes files copies the tree).
"""

from __future__ import annotations

import hashlib
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tomli_w

from nrt import config

T1 = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
T2 = datetime(2024, 6, 1, 12, 30, tzinfo=timezone.utc)
TWIN_START = datetime(2024, 6, 1, 6, 0, tzinfo=timezone.utc)
TWIN_END = datetime(2024, 6, 1, 14, 0, tzinfo=timezone.utc)
TWIN_SEED = 20250101
DOMAIN = {"west": -96.0, "south": 41.0, "east": -94.0, "north": 42.5}
MEMBERS = 4
EMAIL = "tests@example.org"
DEMO_WEIGHTS = Path(__file__).resolve().parents[1] / "nrt" / "model" / "weights" / "demo.safetensors"


def shared_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.getbasetemp() / "pipeline-shared"
    path.mkdir(exist_ok=True)
    return path


def model_settings(tmp_path_factory) -> dict:
    """The `[model]` section: the shipped demo checkpoint when it exists, else a tiny one trained here (once).

    Two sampler steps keep the tests fast. They must be Euler steps: Heun's correction on the step from
    sigma_max straight to sigma_min multiplies the denoiser's error at sigma_min by ~sigma_max/2 and
    overflows to inf mm/h (seen with both checkpoints).
    """
    fast = {"device": "cpu", "members": MEMBERS, "sampler_steps": 2, "solver": "euler"}
    if DEMO_WEIGHTS.is_file():
        return {"checkpoint": "builtin:demo", **fast}
    out = shared_dir(tmp_path_factory) / "checkpoint"
    weights = out / "model.safetensors"
    if not weights.is_file():
        train_tiny_checkpoint(out)
    return {"checkpoint": str(weights), **fast, "patch_size": 16, "patch_overlap": 4}


def train_tiny_checkpoint(out: Path) -> Path:
    import torch

    from model_helpers import tiny_config_text, write_synthetic_set
    from nrt.model.train import train

    out.mkdir(parents=True, exist_ok=True)
    dataset = write_synthetic_set(out / "set.safetensors", count=8)
    conf = out / "train.toml"
    conf.write_text(tiny_config_text(out / "work", dataset, steps=(30, 30)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(config.load(conf), dataset, out / "model.safetensors", out / "run", progress=False).output
    finally:
        torch.set_num_threads(threads)


def config_data(workdir: Path, base_url: str, model: dict, **sections) -> dict:
    """Config as plain data (TOML-ready): small domain and ensembles, sources on the mirror at `base_url`."""
    data = {
        "general": {"workdir": str(workdir)},
        "domain": dict(DOMAIN),
        "sources": {
            "imerg": {"pps_url": f"{base_url}/pps", "gesdisc_url": f"{base_url}/gesdisc/data/GPM_L3"},
            "dpr": {"pps_url": f"{base_url}/pps"},
            "geosfp": {"url": f"{base_url}/nccs/datashare/gmao/geos-fp"},
            "dem": {"url": f"{base_url}/dem/nrt_twin_dem.nc"},
            "http": {"retries": 1, "backoff_s": 0.1},
        },
        "nowcast": {"members": MEMBERS},
        "model": dict(model),
        "alerts": {"areas": [{"name": "west_iowa", "west": -95.5, "south": 41.5, "east": -94.5, "north": 42.0,
                              "threshold_mmh": 5.0, "probability": 0.5}]},
        "service": {"catchup_order": "oldest", "worker_poll_s": 0.2},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def make_config(data: dict):
    cfg = config.from_dict(data, "<pipeline test>")
    cfg.secrets = cfg.secrets.model_copy(update={"pps_email": EMAIL, "database_url": None})
    return cfg


def write_toml(path: Path, data: dict) -> Path:
    path.write_text(tomli_w.dumps(data))
    return path


def twin_tree(tmp_path_factory) -> Path:
    """The shared twin mirror tree (generated once; treat as read-only)."""
    from nrt.twin.spec import spec_for_config
    from nrt.twin import generate

    root = shared_dir(tmp_path_factory) / "twin"
    if not (root / "twin.json").is_file():
        cfg = make_config(config_data(root.parent / "unused", "http://127.0.0.1:1", {}))
        generate(spec_for_config(cfg, TWIN_START, TWIN_END, TWIN_SEED), root)
    return root


def copy_tree(root: Path, dest: Path) -> Path:
    shutil.copytree(root, dest)
    return dest


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def visible_files(folder: Path) -> list[Path]:
    """Files a reader would see: no name in the path starts with a dot."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def hidden_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*") if p.is_file())


def ensemble_values(path: Path) -> np.ndarray:
    """The members in the memory layout (member, time, lat, lon), read as nrt reads its products."""
    from nrt.products import read_ensemble

    return read_ensemble(path).values.copy()
