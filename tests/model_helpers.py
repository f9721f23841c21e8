"""Small synthetic training sets and configs shared by the model tests."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from nrt.grids import LatLonGrid
from nrt.model.conditioning import ChannelSet, Conditioning, raw_channels
from nrt.model.dataset import Sample, write_training_set

GRID = LatLonGrid(0.05, 41.025, -95.975, 32, 48)


def rain_field(rng: np.random.Generator, shape=(32, 48)) -> np.ndarray:
    """Patchy rain: smoothed noise through an exponential, zero below a threshold (mm/h)."""
    smooth = ndimage.gaussian_filter(rng.normal(size=shape), 3)
    rate = np.exp(1.2 * smooth / smooth.std()) - 1.0  # up to ~50 mm/h
    return np.clip(rate, 0, None).astype(np.float32)


def coarsen(fine: np.ndarray) -> np.ndarray:
    return fine.reshape(fine.shape[0] // 2, 2, fine.shape[1] // 2, 2).mean((1, 3))


def write_synthetic_set(path, count: int = 8, seed: int = 0, full_mask: bool = False):
    rng = np.random.default_rng(seed)
    channels = ChannelSet(position=True)
    samples = []
    for index in range(count):
        fine = rain_field(rng)
        cond = Conditioning(coarsen(fine)[None], GRID, lead=index % 3)
        mask = np.ones(fine.shape, bool)
        if not full_mask:  # a slanted swath
            rows, cols = np.indices(fine.shape)
            mask = np.abs(cols - 0.5 * rows - 12 - 2 * index) < 14
        samples.append(Sample(raw_channels(cond, channels)[0], np.where(mask, fine, np.nan), mask, index % 3))
    return write_training_set(path, samples, channels, {"kind": "synthetic test set"})


def tiny_config_text(workdir, dataset, steps=(40, 40), checkpoint_every=10, **train) -> str:
    settings = {
        "dataset": f'"{dataset}"',
        "regression_steps": steps[0],
        "diffusion_steps": steps[1],
        "batch_size": 4,
        "patch_size": 16,
        "min_mask_coverage": 0.5,
        "learning_rate": 2e-3,
        "warmup_steps": 5,
        "ema_decay": 0.9,
        "checkpoint_every": checkpoint_every,
        "log_every": 10,
        "seed": 7,
    }
    settings.update({k: repr(v) if not isinstance(v, str) else f'"{v}"' for k, v in train.items()})
    lines = [
        "[general]", f'workdir = "{workdir}"',
        "[model]", 'device = "cpu"', "patch_size = 16", "patch_overlap = 4",
        "[train]", *(f"{k} = {v}" for k, v in settings.items()),
        "[train.regression]", "model_channels = 8", "channel_mult = [1, 2]",
        "[train.diffusion]", "model_channels = 8", "channel_mult = [1, 2]",
    ]
    return "\n".join(lines) + "\n"


def train_tiny(folder, steps: tuple[int, int]):
    """A tiny model trained on a synthetic set under `folder`: (config, set path, checkpoint path)."""
    from nrt import config
    from nrt.model.train import train

    dataset = write_synthetic_set(folder / "set.safetensors")
    conf = folder / "train.toml"
    conf.write_text(tiny_config_text(folder / "work", dataset, steps=steps))
    cfg = config.load(conf)
    return cfg, dataset, train(cfg, dataset, folder / "model.safetensors", folder / "run", progress=False).output
