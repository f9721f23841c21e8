"""Skill of the residual-diffusion downscaler on real rain texture (an observing-system experiment).

Truth is radar rain averaged to 5 km; the input is the truth averaged to 10 km with IMERG Early's errors from
the error model fitted to real IMERG / Stage IV pairs (`nrt.errormodel`, docs/twin.md; the figures in
docs/model.md's radar OSSE section predate this and used a hand-set log-normal error).
Fields are cut into 48 x 48 tiles (240 km). Training tiles keep truth only inside a DPR-like swath (a
245 km = 49-cell wide strip at a random angle and offset over the whole radar field); test tiles keep the
full truth. Two held-out designs (`prepare --split`), both also scoring the last quarter of every training
event (frames at least GAP_MINUTES after its last training frame: regimes the model has seen):
- `events` (default): trained on the first three quarters of KNMI 2010-08-26, MeteoSwiss 2015-05-15 and
  2016-07-11 and BoM 2020-10-31 00-10 UTC; held out whole: the MeteoSwiss winter event of 2017-01-31 and
  the BoM day from 12:00 to 15:00 UTC (it is dry after 15:00);
- `hours`: the first three quarters of the winter event are trained on too; its last quarter and BoM
  12-15 UTC are the headline test.

    OMP_NUM_THREADS=1 nice -n 10 python scripts/model_skill.py prepare --out skill/     # training + test sets
    OMP_NUM_THREADS=1 nice -n 10 python scripts/model_skill.py train --out skill/       # nrt.model.train.train
    OMP_NUM_THREADS=1 nice -n 10 python scripts/model_skill.py score --out skill/ --tiles 8
    python scripts/model_skill.py regimes --out skill/   # model-free: spread of the truth given the input

The same experiment on the twin scores a checkpoint trained on the twin (the demo) on held-out twin days,
with the inputs the service would have (IMERG at lead 0, hindcast nowcasts at later leads, GEOS-FP, DEM) and
the twin's full 0.05° truth:

    nrt twin generate --start 2024-05-22T00:00Z --end 2024-05-25T00:00Z --out twin-test
    python scripts/model_skill.py twin --tree twin-test --out skill-twin/ --config config/train-demo.toml \
        --checkpoint nrt/model/weights/demo --start 2024-05-22T03:00Z --end 2024-05-23T21:00Z --leads 0 4 --every-hours 6

Held-out real rain of config/realrain.toml and the real IMERG Early / Stage IV pairs, for the shipped
checkpoint (issue 15; tables in docs/model.md):

    OMP_NUM_THREADS=1 nice python scripts/model_skill.py realrain --out skill-real --tiles 3 --steps 8 --solver euler \
        --sampler sampler_sigma_max=none residual_scale=1 'residual_scale_by_rate=[]'
    OMP_NUM_THREADS=1 nice python scripts/model_skill.py pairs --out skill-real --steps 4 --solver euler --every-hours 6 \
        --sampler sampler_sigma_max=none residual_scale=1 'residual_scale_by_rate=[]'

The seed techniques of issue 15 item 5 are scored beside the baseline on the same tiles and seeds, each alone:
`--input-qdm field climatology` (model.input_qdm, reference the field itself or the input's climatology) and
`--condition-noise S [S ...]` (model.condition_noise_sigma). `--events training` scores the training events
instead (with other input errors than training): the validation set on which settings are chosen. realrain also
reports, pooled and per source, the rank histogram's end bins and the members' and the input's power over the
truth's in three wavelength bands, and draws realrain_rank_psd.png.

`score` reports, per test group and pooled over the headline groups: CRPS of the 30-member ensemble
(pysteps), the MAE of the bilinearly upsampled input and of the regression mean alone, the CRPS of the
statistical CSGD ensemble (`nrt.csgd`, builtin parameters, 30 members drawn from the same bilinear input:
the baseline the model must beat), the CRPS skill score 1 - CRPS / CRPS(baseline) against the bilinear input
(whose CRPS is its MAE) and against CSGD, the spread-skill
ratio sqrt((M+1)/M · mean ensemble variance) / RMSE(ensemble mean) (1 for a reliable ensemble) with a
bootstrap interval over tiles, the rank histogram (pysteps, cells where truth or a member reaches
0.1 mm/h) and radially averaged power spectra (pysteps rapsd) of truth, input, regression mean and members.
Results go to skill/scores.json and skill/skill.png.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # the team shares 2 cores

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nrt import config  # noqa: E402
from nrt.csgd import csgd_ensemble, load_params  # noqa: E402
from nrt.downscale import cell_km  # noqa: E402
from nrt.grids import LatLonGrid  # noqa: E402
from nrt.model.conditioning import ChannelSet, Conditioning, raw_channels, upsample  # noqa: E402
from nrt.model.dataset import Sample, read_training_set, write_training_set  # noqa: E402
from nrt.realrain import get_reader  # noqa: E402

with contextlib.redirect_stdout(io.StringIO()):  # pysteps prints a banner on import
    from pysteps.utils import spectral
    from pysteps.verification import ensscores, probscores

log = logging.getLogger("model_skill")
RADAR = Path(os.environ.get("NRT_SHARED_DATA", REPO.parent / "shared" / "data")) / "radar"
TILE = 48  # 5-km cells (240 km)
SWATH_CELLS = 49  # DPR's 245 km swath at 5 km
MEMBERS = 30
RADAR_KM = 5.0  # the radar tiles' cell size
PSD_BANDS_CELLS = ((2, 4), (4, 8), (8, 16))  # wavelength bands (in cells) of the members' / truth's power ratio
CSGD_PARAMS = "builtin:csgd"  # the statistical baseline: CSGD fit on real IMERG Early / Stage IV pairs
CHANNELS = ChannelSet(position=False)  # radar grids carry no geography worth learning: precipitation only


@dataclass(frozen=True)
class Source:
    pattern: str
    reader: str  # a name in nrt.realrain.READERS
    block: int  # native pixels per 5-km cell along each axis
    hours: tuple[int, int] | None = None  # keep files whose HH (UTC) lies in [start, end)
    minutes: int = 5  # time between files


SOURCES = {
    "knmi-20100826": Source("KNMI/2010/08/*.h5", "knmi", 5),
    "mch-20150515": Source("mch/20150515/*.gif", "mch", 5),
    "mch-20160711": Source("mch/20160711/*.gif", "mch", 5),
    "bom-20201031-early": Source("bom/prcp-c10/66/2020/10/31/*.nc", "bom", 10, hours=(0, 10), minutes=10),
    "mch-20170131": Source("mch/20170131/*.gif", "mch", 5),
    "bom-20201031-late": Source("bom/prcp-c10/66/2020/10/31/*.nc", "bom", 10, hours=(12, 15), minutes=10),
}
TRAIN = ("knmi-20100826", "mch-20150515", "mch-20160711", "bom-20201031-early")
TEST = ("mch-20170131", "bom-20201031-late")
TAIL = 0.25  # the last quarter of each training event is held out too: rain of the regimes the model has seen
GAP_MINUTES = 30  # dropped between a training event's training frames and its held-out tail
TAIL_GROUP = "training events, last quarter"
WINTER = "mch-20170131"  # the only cold-season event: held out whole (--split events) or its last quarter (hours)
WINTER_TAIL_GROUP = f"{WINTER}, last quarter"


def split_parts(split: str) -> tuple[list, list, list[str]]:
    """(training parts, test parts, headline test groups) of (source, part, group) triples.

    `events`: the winter event and BoM 12-15 UTC are held out whole, so the test asks for a regime the model
    never saw. `hours`: the winter event's first three quarters are trained on too and its last quarter is
    tested, so the winter regime is in training too. Both also score the summer events' last quarters.
    """
    summer_tails = [(name, "tail", TAIL_GROUP) for name in TRAIN]
    if split == "events":
        return ([(name, "head", name) for name in TRAIN], [(name, "all", name) for name in TEST] + summer_tails, list(TEST))
    late = "bom-20201031-late"
    return ([(name, "head", name) for name in (*TRAIN, WINTER)],
            [(late, "all", late), (WINTER, "tail", WINTER_TAIL_GROUP)] + summer_tails, [late, WINTER_TAIL_GROUP])


def block_mean(values: np.ndarray, block: int) -> np.ndarray:
    """Mean of each block x block cell; NaN unless at least half its pixels are valid."""
    h, w = (values.shape[0] // block) * block, (values.shape[1] // block) * block
    v = values[:h, :w].reshape(h // block, block, w // block, block)
    valid = np.isfinite(v).sum(axis=(1, 3))
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(np.where(np.isfinite(v), v, np.nan), axis=(1, 3))
    return np.where(2 * valid >= block * block, mean, np.nan).astype(np.float32)


def split_files(files: list, minutes: int, part: str) -> list:
    """`all` files, the `head` used for training, or the held-out `tail` (last TAIL, GAP_MINUTES after the head)."""
    if part == "all":
        return files
    tail = max(1, round(TAIL * len(files)))
    gap = -(-GAP_MINUTES // minutes)
    return files[: len(files) - tail - gap] if part == "head" else files[len(files) - tail :]


def load_frames(name: str, part: str = "all") -> list[np.ndarray]:
    """The files of a source (see `split_files`) as 5-km rain-rate fields (mm/h, NaN outside radar coverage)."""
    src = SOURCES[name]
    files = sorted(RADAR.glob(src.pattern))
    if src.hours:
        files = [f for f in files if src.hours[0] <= int(re.search(r"_\d{8}_(\d{2})", f.name).group(1)) < src.hours[1]]
    files = split_files(files, src.minutes, part)
    if not files:
        sys.exit(f"model_skill: no files for {name} under {RADAR}")
    read = get_reader(src.reader)
    return [block_mean(read(path).values[0].astype(np.float64), src.block) for path in files]


def imerg_like(fine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The 10-km input: the fitted IMERG Early error model (`nrt.errormodel.degrade`) applied to the 5-km truth,
    the one degradation the twin and the real-rain training sets use too."""
    from nrt.errormodel import degrade, load_error_model

    return degrade(fine[None], 0.05, load_error_model(), seed=int(rng.integers(2**63))).precipitation[0]


def swath_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A DPR-like strip SWATH_CELLS wide at a random angle through a random point of the field."""
    rows, cols = np.indices(shape)
    angle = rng.uniform(0, np.pi)
    centre = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
    distance = (rows - centre[0]) * np.cos(angle) - (cols - centre[1]) * np.sin(angle)
    return np.abs(distance) < SWATH_CELLS / 2


def tiles_of(field: np.ndarray) -> list[tuple[int, int]]:
    """Origins of TILE x TILE tiles every half tile (they overlap by half), centred in the field."""
    h, w = field.shape
    step = TILE // 2
    r0, c0 = ((h - TILE) % step) // 2, ((w - TILE) % step) // 2
    return [(r, c) for r in range(r0, h - TILE + 1, step) for c in range(c0, w - TILE + 1, step)]


def fake_grid() -> LatLonGrid:
    """Only the shape matters: position channels are off."""
    return LatLonGrid(0.05, 0.025, 0.025, TILE, TILE)


def csgd_members(params, rate: np.ndarray, cell: tuple[float, float], seed: int) -> np.ndarray:
    """(MEMBERS, lat, lon) CSGD ensemble; member i draws around rate[i mod len(rate)] (rate: (given, lat, lon) mm/h)."""
    per_member = rate[np.arange(MEMBERS) % rate.shape[0]][:, None]
    return csgd_ensemble(per_member, params, members=MEMBERS, cell_km=cell, seed=seed)[:, 0]


def make_samples(parts, train: bool, seed: int) -> tuple[list[Sample], list[np.ndarray], list[dict]]:
    """Tiles of (source, part, group) triples; training tiles keep truth inside a swath, test tiles everywhere."""
    rng = np.random.default_rng(seed)
    samples, inputs, index = [], [], []
    for name, part, group in parts:
        frames = load_frames(name, part)
        kept = 0
        for number, frame in enumerate(frames):
            mask_full = swath_mask(frame.shape, rng) if train else np.ones(frame.shape, bool)
            for r, c in tiles_of(frame):
                truth = frame[r : r + TILE, c : c + TILE]
                valid = np.isfinite(truth)
                if valid.mean() < 0.9 or np.nanmean(truth >= 0.1) < 0.05:  # mostly outside coverage, or dry
                    continue
                coarse = imerg_like(np.where(valid, truth, np.nan), rng)
                mask = valid & mask_full[r : r + TILE, c : c + TILE]
                if train and mask.sum() < 0.2 * TILE * TILE:
                    continue
                cond = Conditioning(coarse[None], fake_grid(), lead=0)
                samples.append(Sample(raw_channels(cond, CHANNELS)[0], truth, mask, 0))
                inputs.append(coarse)
                index.append({"source": name, "group": group, "part": part, "frame": number, "row": r, "col": c})
                kept += 1
        log.info("%s (%s): %d frames -> %d %s tiles", name, part, len(frames), kept, "training" if train else "test")
    return samples, inputs, index


def prepare(out: Path, seed: int, split: str) -> None:
    """Write train.safetensors / test.safetensors (nrt training sets) and the test tiles' 10-km inputs."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    train_parts, test_parts, headline = split_parts(split)
    for name, parts, train in (("train", train_parts, True), ("test", test_parts, False)):
        samples, inputs, index = make_samples(parts, train, seed + (0 if train else 1))
        write_training_set(out / f"{name}.safetensors", samples, CHANNELS,
                           {"experiment": "radar OSSE", "split": split, "set": name, "headline_groups": headline,
                            "tiles": index, "seed": seed})
        if not train:
            save_file({"coarse": np.stack(inputs)}, str(out / "test_inputs.safetensors"))
        log.info("%s: %d tiles", name, len(samples))


def skill_config(out: Path, regression_steps: int, diffusion_steps: int, transform: dict):
    demo = config.load(REPO / "config" / "train-demo.toml")
    train = demo.train.model_dump()
    train.update(dataset=str(out / "train.safetensors"), output=str(out / "model.safetensors"), run_dir=str(out / "run"),
                 regression_steps=regression_steps, diffusion_steps=diffusion_steps, use_random_error=False,
                 use_geosfp=False, use_dem=False, use_position=False, min_mask_coverage=0.3, **transform)
    return config.from_dict({"general": {"workdir": str(out / "work")}, "model": {"device": "cpu"}, "train": train}, "model_skill")


def run_training(out: Path, regression_steps: int, diffusion_steps: int, transform: dict) -> None:
    from nrt.model.train import train

    cfg = skill_config(out, regression_steps, diffusion_steps, transform)
    result = train(cfg, cfg.train.dataset, cfg.train.output, cfg.train.run_dir, progress=sys.stderr.isatty())
    log.info("trained: %s %s losses %s", result.output, result.sha256[:12], result.losses)


class Pooled:
    """Scores pooled over test tiles."""

    def __init__(self, to_model_space, cell_size_km: float = RADAR_KM):
        self.to_model_space = to_model_space  # mm/h -> the model's transformed, z-scored units
        self.cell_km = cell_size_km  # nominal cell size of the scored fields, for the spectra's wavelengths
        self.cells: dict[str, list[np.ndarray]] = {"var": [], "sq_err": [], "var_z": [], "sq_err_z": [], "bias": []}
        self.crps = probscores.CRPS_init()
        self.crps_csgd = probscores.CRPS_init()
        self.rank = ensscores.rankhist_init(MEMBERS, 0.1)
        self.tiles: list[tuple[float, float]] = []  # (sum of ensemble variance, sum of squared error) per field
        self.sums = {"abs_bilinear": 0.0, "abs_regression": 0.0, "abs_ens_mean": 0.0, "sq_ens_mean": 0.0, "ens_var": 0.0, "n": 0}
        self.spectra: dict[str, list[np.ndarray]] = {"truth": [], "input (bilinear)": [], "regression mean": [], "ensemble members": []}
        self.freq = None

    def add(self, truth, bilinear, regression, members, csgd=None):
        """One field: truth, the bilinear input and regression mean (lat, lon), members and CSGD members (M, lat, lon)."""
        valid = np.isfinite(truth) & np.isfinite(bilinear) & np.all(np.isfinite(members), axis=0)
        if csgd is not None:
            valid &= np.all(np.isfinite(csgd), axis=0)
            probscores.CRPS_accum(self.crps_csgd, csgd[:, valid][:, :, None], truth[valid][:, None])
        t, b, r, m = truth[valid], bilinear[valid], regression[valid], members[:, valid]
        probscores.CRPS_accum(self.crps, m[:, :, None], t[:, None])
        ensscores.rankhist_accum(self.rank, m[:, :, None], t[:, None])
        ens_mean = m.mean(axis=0)
        s = self.sums
        s["abs_bilinear"] += np.abs(b - t).sum()
        s["abs_regression"] += np.abs(r - t).sum()
        s["abs_ens_mean"] += np.abs(ens_mean - t).sum()
        s["sq_ens_mean"] += ((ens_mean - t) ** 2).sum()
        s["ens_var"] += m.var(axis=0, ddof=1).sum()
        s["n"] += t.size
        self.tiles.append((float(m.var(axis=0, ddof=1).sum()), float(((ens_mean - t) ** 2).sum())))
        z_t, z_m = self.to_model_space(t), self.to_model_space(m)
        for key, value in (("var", m.var(axis=0, ddof=1)), ("sq_err", (ens_mean - t) ** 2), ("bias", ens_mean - t),
                           ("var_z", z_m.var(axis=0, ddof=1)), ("sq_err_z", (z_m.mean(axis=0) - z_t) ** 2)):
            self.cells[key].append(value)
        if valid.mean() >= 0.5:  # no-data cells are 0 in every field alike, so the fields' spectra compare like with like
            for key, field in (("truth", truth), ("input (bilinear)", bilinear), ("regression mean", regression)):
                psd, self.freq = spectral.rapsd(np.where(valid, field, 0.0), fft_method=np.fft, return_freq=True)
                self.spectra[key].append(psd)
            self.spectra["ensemble members"].append(
                np.mean([spectral.rapsd(np.where(valid, x, 0.0), fft_method=np.fft) for x in members], axis=0))

    def calibration(self) -> dict:
        """Spread/skill in the model's own space, and in mm/h by fifths of ensemble variance (where it goes wrong)."""
        if not self.cells["var"]:
            return {}
        c = {k: np.concatenate(v) for k, v in self.cells.items()}
        factor = (MEMBERS + 1) / MEMBERS
        order = np.argsort(c["var"])
        return {
            "spread_skill_model_space": float(np.sqrt(factor * c["var_z"].mean() / c["sq_err_z"].mean())),
            "spread_skill_by_variance_fifth": [float(np.sqrt(factor * c["var"][q].mean() / c["sq_err"][q].mean()))
                                               for q in np.array_split(order, 5)],
        }

    def spread_skill_interval(self, draws: int = 2000, seed: int = 0) -> list[float]:
        """5-95 % bootstrap interval of the pooled spread/skill, resampling whole fields.

        Cells of one field share their errors, and a few heavy-rain cells carry most of the variance, so the
        pooled ratio is far less certain than the cell count suggests.
        """
        if len(self.tiles) < 2:
            return [float("nan"), float("nan")]
        var, sq = np.array(self.tiles).T
        pick = np.random.default_rng(seed).integers(0, len(var), size=(draws, len(var)))
        ratio = np.sqrt((MEMBERS + 1) / MEMBERS * var[pick].sum(axis=1) / sq[pick].sum(axis=1))
        return [float(v) for v in np.quantile(ratio, [0.05, 0.95])]

    def rank_summary(self, ranks: np.ndarray) -> dict:
        """The rank histogram's lowest and highest bins and its mean absolute departure, each x uniform (1/(M+1))."""
        if not np.all(np.isfinite(ranks)):
            return {}
        uniform = 1 / ranks.size
        return {"lowest_bin_x_uniform": float(ranks[0] / uniform), "highest_bin_x_uniform": float(ranks[-1] / uniform),
                "mean_abs_departure_x_uniform": float(np.abs(ranks / uniform - 1).mean())}

    def psd_ratios(self) -> dict:
        """Power of the members and of the bilinear input over the truth's, summed in PSD_BANDS_CELLS wavelength bands."""
        if self.freq is None or not self.spectra["truth"]:
            return {}
        wavelength = 1 / np.where(self.freq > 0, self.freq, np.nan)  # cells
        mean = {k: np.mean(v, axis=0) for k, v in self.spectra.items() if v}
        out = {}
        for low, high in PSD_BANDS_CELLS:
            band = (wavelength >= low) & (wavelength < high)
            truth = mean["truth"][band].sum()
            out[f"{low * self.cell_km:g}-{high * self.cell_km:g} km"] = {
                "members": float(mean["ensemble members"][band].sum() / truth) if truth > 0 else float("nan"),
                "input": float(mean["input (bilinear)"][band].sum() / truth) if truth > 0 else float("nan")}
        return out

    def result(self) -> dict:
        s = self.sums
        n = max(s["n"], 1)
        rmse = np.sqrt(s["sq_ens_mean"] / n)
        crps = float(probscores.CRPS_compute(self.crps))
        crps_csgd = float(probscores.CRPS_compute(self.crps_csgd)) if self.crps_csgd["n"] else float("nan")
        mae_bilinear = float(s["abs_bilinear"] / n)
        ranks = ensscores.rankhist_compute(self.rank)
        return {
            "cells": int(s["n"]),
            "crps_ensemble": crps,
            "crps_csgd": crps_csgd,
            "crpss_vs_bilinear": 1 - crps / mae_bilinear if mae_bilinear > 0 else float("nan"),
            "crpss_vs_csgd": 1 - crps / crps_csgd if crps_csgd > 0 else float("nan"),
            "mae_bilinear_input": mae_bilinear,
            "mae_regression_mean": float(s["abs_regression"] / n),
            "mae_ensemble_mean": float(s["abs_ens_mean"] / n),
            "rmse_ensemble_mean": float(rmse),
            "spread_skill": float(np.sqrt((MEMBERS + 1) / MEMBERS * s["ens_var"] / n) / rmse) if rmse > 0 else float("nan"),
            "spread_skill_90pct_interval": self.spread_skill_interval(),
            "ensemble_mean_bias": float(np.concatenate(self.cells["bias"]).mean()) if self.cells["bias"] else float("nan"),
            **self.calibration(),
            "rank_histogram": [float(v) for v in ranks],
            "rank_histogram_summary": self.rank_summary(ranks),
            "spectra": {k: np.mean(v, axis=0).tolist() for k, v in self.spectra.items() if v},
            "spectra_wavelength_km": (self.cell_km / self.freq[1:]).tolist() if self.freq is not None else [],
            "psd_ratio_to_truth": self.psd_ratios(),
        }


def score(out: Path, tiles: int, steps: int, solver: str, seed: int, checkpoint: Path | None) -> dict:
    import torch

    from nrt.model.inference import Downscaler

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    path = checkpoint or out / "model.safetensors"
    ds = Downscaler.load(path, "cpu", config.ModelConfig(device="cpu", patch_size=TILE, patch_overlap=8))
    from safetensors.numpy import load_file

    test = read_training_set(out / "test.safetensors")
    coarse_inputs = load_file(str(out / "test_inputs.safetensors"))["coarse"]
    index = test.provenance["tiles"]
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[int]] = {}
    for i, entry in enumerate(index):
        by_group.setdefault(entry["group"], []).append(i)
    chosen = sorted(j for ids in by_group.values() for j in rng.choice(ids, size=min(tiles, len(ids)), replace=False))
    headline, per_group = Pooled(ds.spec.normalize_target), {name: Pooled(ds.spec.normalize_target) for name in by_group}
    params = load_params(CSGD_PARAMS)
    started = time.time()
    for k, i in enumerate(chosen):
        cond = Conditioning(coarse_inputs[i][None], fake_grid(), lead=0)
        members = ds.sample(cond, members=MEMBERS, seed=seed + i, steps=steps, solver=solver)
        regression = ds.regression_mean(cond)[0]
        bilinear = test.channels[i, 0]
        csgd = csgd_members(params, bilinear[None], (RADAR_KM, RADAR_KM), seed + i)
        group = index[i]["group"]
        for target in [per_group[group]] + ([headline] if group in test.provenance["headline_groups"] else []):
            target.add(test.truth[i], bilinear, regression, members, csgd)
        log.info("tile %d/%d (%s) %.0f s", k + 1, len(chosen), group, time.time() - started)
    result = {"checkpoint": str(path), "sha256": ds.sha256, "csgd_params": CSGD_PARAMS, "steps": steps, "solver": solver,
              "members": MEMBERS, "tiles": len(chosen), "seconds": round(time.time() - started, 1), "split": test.provenance["split"],
              "headline_groups": test.provenance["headline_groups"], "held_out": headline.result(),
              "by_group": {name: p.result() for name, p in per_group.items()}}
    (out / "scores.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "skill.png")
    return result


INPUT_BINS_MMH = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, np.inf)


def regimes(out: Path) -> str:
    """Model-free: the spread of the truth given the input, by input intensity, in training and test sets.

    The ensemble's spread at a given input can only be as right as this conditional spread is alike between
    the data the model learnt from and the data it is scored on.
    """
    train, test = read_training_set(out / "train.safetensors"), read_training_set(out / "test.safetensors")
    sets = {"training (swath cells)": (train, np.arange(len(train.truth)))}
    for i, entry in enumerate(test.provenance["tiles"]):
        sets.setdefault(entry["group"], (test, []))[1].append(i)
    edges = list(zip(INPUT_BINS_MMH[:-1], INPUT_BINS_MMH[1:]))
    rows = ["| input (mm/h) | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    columns = []
    for data, picked in sets.values():
        picked = np.asarray(picked)
        x, t = data.channels[picked, 0], data.truth[picked]
        keep = data.mask[picked] & np.isfinite(t) & np.isfinite(x)
        x, t = x[keep], t[keep]
        columns.append([(t[(x >= lo) & (x < hi)]) for lo, hi in edges])
    for b, (lo, hi) in enumerate(edges):
        cells = [f"{c[b].std():.2f} ({c[b].size})" if c[b].size else "-" for c in columns]
        rows.append(f"| {lo:g}-{hi:g} | " + " | ".join(cells) + " |")
    return "standard deviation of the truth (mm/h) given the bilinear input, (cells)\n\n" + "\n".join(rows)


def twin_score(args) -> dict:
    """Score a checkpoint on a twin tree against the twin's full truth, by lead (see the module docstring)."""
    import torch
    import xarray as xr

    from nrt.store import Catalog
    from nrt.model.dataset import CatalogInputs, register_tree
    from nrt.model.inference import Downscaler
    from nrt.timeline import cycle_times, utc

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    base = config.load(args.config)
    cfg = config.from_dict({**base.model_dump(mode="json", exclude={"general"}), "general": {"workdir": str(args.out / "work")}}, "model_skill")
    start, end = utc(args.start), utc(args.end)
    ds = Downscaler.load(args.checkpoint, "cpu", cfg.model)
    truth = xr.concat([xr.load_dataset(f, engine="netcdf4")["precipitation"] for f in sorted(Path(args.tree).glob("truth/*.nc"))], "time")
    with Catalog.from_config(cfg, migrate=True) as catalog:
        register_tree(cfg, catalog, args.tree)
        inputs = CatalogInputs(cfg, catalog, start, end, max(args.leads))
    grid = inputs.grid
    pooled = {lead: Pooled(ds.spec.normalize_target) for lead in args.leads}
    params = load_params(CSGD_PARAMS)
    started, scored = time.time(), 0
    for valid in cycle_times(start, end, timedelta(hours=args.every_hours)):
        observed = truth.sel(time=np.datetime64(valid.replace(tzinfo=None), "ns")).sel(
            lat=grid.lats, lon=grid.lons, method="nearest", tolerance=1e-3).values.astype(np.float32)
        if np.mean(observed >= 0.1) < 0.05:  # dry over the domain: nothing to downscale
            continue
        geos = inputs.geosfp(valid)
        for lead in args.leads:
            cond = inputs.conditioning(valid, lead, geos)
            if cond is None:
                continue
            members = ds.sample(cond, members=MEMBERS, seed=args.seed + scored, steps=args.steps, solver=args.solver)
            regression = ds.regression_mean(cond)[0]
            fine = upsample(cond.precip)  # member i of CSGD draws around nowcast member i, as in the service
            csgd = csgd_members(params, fine, cell_km(grid), args.seed + scored)
            pooled[lead].add(observed, fine[0], regression, members, csgd)
            scored += 1
            log.info("%s lead %d scored (%.0f s)", valid.isoformat(), lead, time.time() - started)
    result = {"checkpoint": str(args.checkpoint), "sha256": ds.sha256, "csgd_params": CSGD_PARAMS, "steps": args.steps, "solver": args.solver,
              "members": MEMBERS, "fields": scored, "seconds": round(time.time() - started, 1),
              "by_lead": {str(lead): p.result() for lead, p in pooled.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scores.json").write_text(json.dumps(result, indent=1))
    return result


class Climate:
    """Wet fraction (>= 0.1 mm/h), mean and 99th percentile of truth, bilinear input and ensemble members."""

    def __init__(self):
        self.values: dict[str, list[np.ndarray]] = {"truth": [], "input": [], "members": []}

    def add(self, truth, bilinear, members):
        valid = np.isfinite(truth) & np.isfinite(bilinear)
        self.values["truth"].append(truth[valid])
        self.values["input"].append(bilinear[valid])
        self.values["members"].append(members[:, valid].ravel())

    def result(self) -> dict:
        out = {}
        for name, parts in self.values.items():
            v = np.concatenate(parts) if parts else np.empty(0)
            out[name] = {"wet_fraction": float((v >= 0.1).mean()) if v.size else float("nan"),
                         "mean_mm_h": float(v.mean()) if v.size else float("nan"),
                         "p99_mm_h": float(np.percentile(v, 99)) if v.size else float("nan")}
        return out


OFF = "off"


def variants(args) -> list[tuple[str, str, float]]:
    """(name, input QDM mode, condition noise sigma): the baseline, then each technique alone, all on the same tiles."""
    out = [("baseline", OFF, 0.0)]
    out += [(f"qdm {mode}", mode, 0.0) for mode in args.input_qdm if mode != OFF]
    out += [(f"noise {sigma:g}", OFF, sigma) for sigma in args.condition_noise if sigma > 0]
    return out


def variant_downscaler(args, mode: str, sigma: float, reference: Path | None):
    """The checkpoint loaded as the service loads it, with the techniques switched by config keys (and the
    sampler keys of --sampler)."""
    from nrt.model.inference import Downscaler

    qdm_keys = {"input_qdm": mode != OFF, "input_qdm_reference": str(reference) if mode == "climatology" else "field"}
    return Downscaler.load(args.checkpoint, "cpu", sampler_config(args, patch_size=args.tile, patch_overlap=8,
                                                                  condition_noise_sigma=sigma, **qdm_keys))


def write_climatology(values: list[np.ndarray], path: Path, note: str) -> Path:
    """Wet quantiles of the model's precipitation channel (0.05°, bilinear) over `values`, as a QDM reference file."""
    from nrt.model.qdm import wet_quantiles

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**wet_quantiles(np.concatenate([v.ravel() for v in values])).to_dict(), "note": note}, indent=1))
    return path


def source_climatologies(cfg, catalogue, error_model, sources: set[str], tile: int, folder: Path) -> dict[str, Path]:
    """QDM reference per source: its input's climatology, from the inputs of its TRAINING events, degraded with
    the training recipe's seeds (what the service would have archived from a region before the scored event)."""
    from nrt.model.realset import real_rain_cases
    from nrt.realrain.cache import cached_event_frames
    from nrt.realrain.events import default_radar_dir

    fields: dict[str, list[np.ndarray]] = {}
    for index, event in enumerate(catalogue.training()):
        if event.source not in sources:
            continue
        frames = cached_event_frames(event, default_radar_dir(), Path(cfg.train.realrain_cache).expanduser())
        cases = real_rain_cases(frames, error_model, tile=tile, per_frame=cfg.train.tiles_per_frame,
                                seed=cfg.train.seed + 7919 * index)
        fields.setdefault(event.source, []).extend(upsample(cond.precip) for cond, _, _ in cases)
    return {source: write_climatology(parts, folder / f"{source}.json", f"inputs of the training events of {source}")
            for source, parts in fields.items()}


PSD_BANDS_KM = ((10.0, 20.0), (20.0, 40.0))  # the fine scales the downscaler adds (0.05° cells, 64-cell tiles)


def psd_ratio(result: dict) -> dict:
    """Members' over truth's radially averaged power, averaged in wavelength bands (1 = the truth's texture)."""
    if "truth" not in result["spectra"]:
        return {}
    wavelength = np.array(result["spectra_wavelength_km"])
    truth, members = (np.array(result["spectra"][k])[1:] for k in ("truth", "ensemble members"))
    return {f"{low:g}-{high:g} km": float(np.mean(members[(wavelength >= low) & (wavelength < high)])
                                          / np.mean(truth[(wavelength >= low) & (wavelength < high)]))
            for low, high in PSD_BANDS_KM}


def sampler_config(args, **options):
    """The model config section for scoring: CPU, `options`, and the sampler keys given with --sampler."""
    from nrt.errors import ConfigError

    values = {}
    for key, value in (item.partition("=")[::2] for item in args.sampler):
        try:  # none unsets a key; [...] is a list, as JSON
            values[key] = None if value == "none" else json.loads(value) if value.startswith("[") else value
        except ValueError as exc:
            sys.exit(f"model_skill --sampler {key}: {value!r} is not a JSON list ({exc})")
    try:
        return config.from_dict({"model": {"device": "cpu", **options, **values}}, "model_skill --sampler").model
    except ConfigError as exc:
        sys.exit(str(exc))


def scored_sampler(ds, args):
    """The sampler `ds.sample` ran: the config's, with --steps and --solver where given."""
    return ds.sampler.overridden(args.steps, args.solver)


def sampler_record(sampler) -> dict:
    """The sampler's settings for the JSON result (no bound: null, as JSON has no infinity)."""
    return {key: None if value == float("inf") else value for key, value in dataclasses.asdict(sampler).items()}


def scored_events(catalogue, names: list[str]):
    """--events: the held-out events, every training event, or the named ones."""
    if names == ["held-out"]:
        return catalogue.held_out()
    if names == ["training"]:
        return catalogue.training()
    unknown = [name for name in names if name not in catalogue.events]
    if unknown:
        sys.exit(f"model_skill: --events: no event named {unknown[0]!r} in {catalogue.path}")
    return [catalogue.events[name] for name in names]


def realrain_score(args) -> dict:
    """Held-out (or, `--events training`, training) events of config/realrain.toml, per source and pooled: tiles of
    the radar truth at 0.05°, inputs from the fitted IMERG error model (other seeds than training), no GEOS-FP or
    DEM (radar has none). Each variant (`variants`) scores the same tiles with the same seeds."""
    import torch

    from nrt.errormodel import load_error_model
    from nrt.model.realset import real_rain_cases
    from nrt.realrain.cache import cached_event_frames
    from nrt.realrain.events import default_radar_dir, load_catalogue

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = config.load(args.config)
    catalogue = load_catalogue(cfg.train.realrain_catalogue)
    events = scored_events(catalogue, args.events)
    error_model = load_error_model(cfg.train.error_model)
    params = load_params(CSGD_PARAMS)
    runs = variants(args)
    references = {}
    if any(mode == "climatology" for _, mode, _ in runs):
        references = source_climatologies(cfg, catalogue, error_model, {e.source for e in events}, args.tile, args.out / "qdm-reference")
    models: dict[tuple[str, str], object] = {}
    spec = variant_downscaler(args, OFF, 0.0, None).spec
    scores = {name: {"pooled": (Pooled(spec.normalize_target), Climate()), "by_source": {}} for name, _, _ in runs}
    started, sha, sampling, samples = time.time(), None, 0.0, 0
    offset = 1_000_003 if args.events == ["training"] else 0  # validation tiles: other input errors than any held-out run
    for index, event in enumerate(events):
        frames = cached_event_frames(event, default_radar_dir(), Path(cfg.train.realrain_cache).expanduser())
        cases = real_rain_cases(frames, error_model, tile=args.tile, per_frame=4, seed=args.seed + offset + 104729 * (index + 1))
        rng = np.random.default_rng(args.seed + offset + index)
        picked = sorted(rng.choice(len(cases), size=min(args.tiles, len(cases)), replace=False)) if cases else []
        if not picked:
            log.warning("%s: no tile with enough valid cells", event.name)
            continue
        for k, i in enumerate(picked):
            cond, truth, _ = cases[i]
            if args.no_random_error:
                cond.random_error = None
            bilinear = upsample(cond.precip)[0]
            csgd = csgd_members(params, bilinear[None], cell_km(cond.grid), args.seed + i)
            for name, mode, sigma in runs:
                key = (name, event.source)
                if key not in models:
                    models[key] = variant_downscaler(args, mode, sigma, references.get(event.source))
                ds = models[key]
                sha = ds.sha256
                before = time.perf_counter()
                members = ds.sample(cond, members=MEMBERS, seed=args.seed + i, steps=args.steps, solver=args.solver)
                if name == "baseline":
                    sampling, samples = sampling + time.perf_counter() - before, samples + 1
                regression = ds.regression_mean(cond)[0]
                by_source = scores[name]["by_source"].setdefault(event.source, (Pooled(spec.normalize_target), Climate()))
                for target, climate in (by_source, scores[name]["pooled"]):
                    target.add(truth, bilinear, regression, members, csgd)
                    climate.add(truth, bilinear, members)
            log.info("%s tile %d/%d %.0f s", event.name, k + 1, len(picked), time.time() - started)
    out = {name: {"pooled": {**(summary := v["pooled"][0].result()), "psd_ratio": psd_ratio(summary), "climate": v["pooled"][1].result()},
                  "by_source": {src: {**p.result(), "climate": c.result()} for src, (p, c) in sorted(v["by_source"].items())}}
           for name, v in scores.items()}
    sampler = scored_sampler(next(ds for (name, _), ds in models.items() if name == "baseline"), args)  # an event may have no tile
    result = {"checkpoint": str(args.checkpoint), "sha256": sha, "csgd_params": CSGD_PARAMS, "steps": sampler.steps,
              "solver": sampler.solver, "sampler": sampler_record(sampler), "evaluations": sampler.evaluations,
              "members": MEMBERS, "tile": args.tile, "tiles_per_event": args.tiles,
              "random_error": not args.no_random_error, "events": args.events, "scored_events": [e.name for e in events],
              "held_out_events": catalogue.holdout, "qdm_references": {k: str(v) for k, v in references.items()},
              "variants": [{"name": n, "input_qdm": m, "condition_noise_sigma": sg} for n, m, sg in runs],
              "seconds": round(time.time() - started, 1), "seconds_per_sample": round(sampling / max(samples, 1), 2),
              **out["baseline"], "by_variant": out}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "realrain_scores.json").write_text(json.dumps(result, indent=1))
    plot_rank_psd(result, args.out / "realrain_rank_psd.png")
    return result


def pairs_score(args) -> dict:
    """The real IMERG Early / Stage IV pairs (2017-08-01, 0.1°, hourly): the ensemble from IMERG at 0.05°,
    averaged back to 0.1°, scored against Stage IV beside CSGD (run at 0.1°, as fit) and IMERG itself, on the
    hours CSGD was not fit on (12-23 UTC; its parameters hold hours 0-11). The QDM climatology of IMERG is that
    of hours 0-11 too (an input archive before the scored hours)."""
    import torch

    from nrt.errormodel.pairs import read_pair

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    folder = RADAR.parent / "imerg-stageiv" / "20170801"
    pair = read_pair(folder / "IMERGE.hourly.d1.nc", folder / "StageIV_0.1deg.hourly.d1.nc")
    import xarray as xr

    with xr.open_dataset(folder / "IMERGE.hourly.d1.nc") as raw:
        lat0, lon0 = float(raw["lat"].min()), float(raw["lon"].min())
    runs = variants(args)
    reference = None
    if any(mode == "climatology" for _, mode, _ in runs):
        reference = write_climatology([upsample(pair.estimate[h].astype(np.float32)) for h in range(12)],
                                      args.out / "qdm-reference" / "imerg-early-20170801-00-11.json",
                                      "IMERG Early 2017-08-01 00-11 UTC, bilinear to 0.05°")
    models = {name: variant_downscaler(args, mode, sigma, reference) for name, mode, sigma in runs}
    params = load_params(CSGD_PARAMS)
    _, nlat, nlon = pair.estimate.shape
    grid = LatLonGrid(0.05, round(lat0 - 0.025, 3), round(lon0 - 0.025, 3), 2 * nlat, 2 * nlon)
    cell01 = (11.1195, 11.1195 * np.cos(np.radians(pair.latitude)))
    scores = {name: (Pooled(ds.spec.normalize_target, cell_size_km=2 * RADAR_KM), Climate()) for name, ds in models.items()}
    started = time.time()
    hours = list(range(12, 24, args.every_hours))
    for hour in hours:
        imerg, truth = pair.estimate[hour].astype(np.float32), pair.truth[hour].astype(np.float32)
        cond = Conditioning(imerg[None], grid, lead=0)  # the pairs hold no randomError: the group is absent
        csgd = csgd_members(params, imerg[None], cell01, args.seed + hour)
        for name, ds in models.items():
            fine = ds.sample(cond, members=MEMBERS, seed=args.seed + hour, steps=args.steps, solver=args.solver)
            members = fine.reshape(MEMBERS, nlat, 2, nlon, 2).mean(axis=(2, 4))
            regression = ds.regression_mean(cond)[0].reshape(nlat, 2, nlon, 2).mean(axis=(1, 3))
            scores[name][0].add(truth, imerg, regression, members, csgd)
            scores[name][1].add(truth, imerg, members)
            log.info("hour %02d UTC %s %.0f s", hour, name, time.time() - started)
    by_variant = {name: {**p.result(), "climate": c.result()} for name, (p, c) in scores.items()}
    sampler = scored_sampler(models["baseline"], args)
    result = {"checkpoint": str(args.checkpoint), "sha256": models["baseline"].sha256, "steps": sampler.steps,
              "solver": sampler.solver, "sampler": sampler_record(sampler), "evaluations": sampler.evaluations, "members": MEMBERS, "hours_utc": hours, "qdm_reference": str(reference) if reference else None,
              "variants": [{"name": n, "input_qdm": m, "condition_noise_sigma": sg} for n, m, sg in runs],
              "seconds": round(time.time() - started, 1), "scores": by_variant["baseline"], "by_variant": by_variant}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pairs_scores.json").write_text(json.dumps(result, indent=1))
    return result


def realrain_markdown(named: list[tuple[str, dict]]) -> str:
    rows = ["| set | cells | CRPS ensemble | CRPS CSGD | MAE bilinear input | MAE regression mean | CRPS / input MAE "
            "| spread/skill (5-95 %) | bias (mm/h) | mean truth (mm/h) | wet fraction truth / input / members "
            "| p99 truth / input / members (mm/h) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in named:
        low, high = r["spread_skill_90pct_interval"]
        c = r["climate"]
        ratio = r["crps_ensemble"] / r["mae_bilinear_input"] if r["mae_bilinear_input"] > 0 else float("nan")
        rows.append(f"| {name} | {r['cells']} | {r['crps_ensemble']:.4f} | {r['crps_csgd']:.4f} | {r['mae_bilinear_input']:.4f} | "
                    f"{r['mae_regression_mean']:.4f} | {ratio:.2f} | {r['spread_skill']:.2f} ({low:.2f}-{high:.2f}) | "
                    f"{r['ensemble_mean_bias']:+.4f} | {c['truth']['mean_mm_h']:.3f} | "
                    f"{c['truth']['wet_fraction']:.3f} / {c['input']['wet_fraction']:.3f} / {c['members']['wet_fraction']:.3f} | "
                    f"{c['truth']['p99_mm_h']:.2f} / {c['input']['p99_mm_h']:.2f} / {c['members']['p99_mm_h']:.2f} |")
    return "\n".join(rows)


def techniques_markdown(result: dict, sets: str = "by_source") -> str:
    """Per set (pooled, then each source): CRPS (/ bilinear input MAE), spread/skill and bias of every variant."""
    names = [v["name"] for v in result["variants"]]
    rows = ["| set | " + " | ".join(f"{n}: CRPS (/ input MAE) · spread/skill · bias" for n in names) + " |",
            "|---|" + "---|" * len(names)]
    by_variant = result["by_variant"]
    if sets == "by_source":
        labels = ["pooled", *by_variant["baseline"]["by_source"]]
        pick = {n: {"pooled": v["pooled"], **v["by_source"]} for n, v in by_variant.items()}
    else:
        labels, pick = ["pairs"], {n: {"pairs": v} for n, v in by_variant.items()}
    for label in labels:
        cells = []
        for n in names:
            r = pick[n][label]
            ratio = r["crps_ensemble"] / r["mae_bilinear_input"] if r["mae_bilinear_input"] > 0 else float("nan")
            cells.append(f"{r['crps_ensemble']:.4f} ({ratio:.2f}) · {r['spread_skill']:.2f} · {r['ensemble_mean_bias']:+.4f}")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def rank_psd_markdown(named: list[tuple[str, dict]]) -> str:
    """Rank histogram (lowest, highest bin, mean departure, all x uniform) and band power ratios to the truth."""
    bands = next((list(r["psd_ratio_to_truth"]) for _, r in named if r.get("psd_ratio_to_truth")), [])
    rows = ["| set | rank: lowest bin | highest bin | mean departure | " + " | ".join(f"PSD members / truth {b}" for b in bands)
            + " | " + " | ".join(f"PSD input / truth {b}" for b in bands) + " |", "|---|---|---|---|" + "---|" * (2 * len(bands))]
    for name, r in named:
        rank = r.get("rank_histogram_summary") or {}
        psd = r.get("psd_ratio_to_truth") or {}
        cells = [f"{rank[k]:.2f}" if k in rank else "-" for k in
                 ("lowest_bin_x_uniform", "highest_bin_x_uniform", "mean_abs_departure_x_uniform")]
        cells += [f"{psd[b]['members']:.2f}" if b in psd else "-" for b in bands]
        cells += [f"{psd[b]['input']:.2f}" if b in psd else "-" for b in bands]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_rank_psd(result: dict, path: Path) -> None:
    """Rank histogram and spectra (members, input, regression mean against truth), pooled and per source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    named = [(name, r) for name, r in [("pooled", result["pooled"]), *result["by_source"].items()] if r["cells"]]
    cols = 5
    rows = -(-len(named) // cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(4 * cols, 3.2 * 2 * rows), squeeze=False)
    for k, (name, r) in enumerate(named):
        ranks_ax, spectra_ax = axes[2 * (k // cols), k % cols], axes[2 * (k // cols) + 1, k % cols]
        ranks = r["rank_histogram"]
        ranks_ax.bar(range(len(ranks)), ranks, color="0.4")
        ranks_ax.axhline(1 / len(ranks), color="k", ls="--", lw=1)
        ranks_ax.set_title(f"{name}: rank of truth", fontsize=9)
        for label, psd in r["spectra"].items():
            spectra_ax.loglog(r["spectra_wavelength_km"], psd[1:], label=label)
        spectra_ax.invert_xaxis()
        spectra_ax.set_title(f"{name}: power spectrum", fontsize=9)
        spectra_ax.set_xlabel("wavelength (km)", fontsize=8)
        if k == 0:
            spectra_ax.legend(fontsize=7)
    for ax in axes.ravel()[2 * len(named):]:
        ax.axis("off")
    for k in range(len(named), rows * cols):
        axes[2 * (k // cols), k % cols].axis("off")
        axes[2 * (k // cols) + 1, k % cols].axis("off")
    fig.suptitle(f"real rain, {result['events']} events, {MEMBERS} members; truth or a member >= 0.1 mm/h", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [("held out: " + " + ".join(result["headline_groups"]), result["held_out"]), (TAIL_GROUP, result["by_group"].get(TAIL_GROUP))]
    sets = [(name, r) for name, r in sets if r and r["cells"]]
    fig, axes = plt.subplots(len(sets), 2, figsize=(12, 4 * len(sets)), squeeze=False)
    for (ranks_ax, spectra_ax), (name, r) in zip(axes, sets):
        ranks = r["rank_histogram"]
        ranks_ax.bar(range(len(ranks)), ranks, color="0.4")
        ranks_ax.axhline(1 / len(ranks), color="k", ls="--", lw=1)
        ranks_ax.set(title=f"rank histogram, {name}\n({MEMBERS} members; truth or a member >= 0.1 mm/h)",
                     xlabel="rank of truth", ylabel="frequency")
        ranks_ax.title.set_fontsize(9)
        for label, psd in r["spectra"].items():
            spectra_ax.loglog(r["spectra_wavelength_km"], psd[1:], label=label)
        spectra_ax.invert_xaxis()
        spectra_ax.set(title=f"radially averaged power spectrum,\n{name}", xlabel="wavelength (km)", ylabel="power")
        spectra_ax.title.set_fontsize(9)
        spectra_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(result: dict) -> str:
    rows = ["| test set | cells | CRPS ensemble | CRPS CSGD | MAE bilinear input | MAE regression mean | CRPSS vs bilinear "
            "| CRPSS vs CSGD | MAE ensemble mean | spread/skill (5-95 %) | spread/skill, model space "
            "| spread/skill by fifth of ensemble variance |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    if "held_out" in result:
        named = [("held out: " + " + ".join(result["headline_groups"]), result["held_out"]), *result["by_group"].items()]
    else:
        named = [(f"lead {lead}", r) for lead, r in result["by_lead"].items()]
    for name, r in named:
        low, high = r.get("spread_skill_90pct_interval", [float("nan")] * 2)
        rows.append(f"| {name} | {r['cells']} | {r['crps_ensemble']:.4f} | {r.get('crps_csgd', float('nan')):.4f} | "
                    f"{r['mae_bilinear_input']:.4f} | {r['mae_regression_mean']:.4f} | "
                    f"{r.get('crpss_vs_bilinear', float('nan')):.3f} | {r.get('crpss_vs_csgd', float('nan')):.3f} | "
                    f"{r['mae_ensemble_mean']:.4f} | {r['spread_skill']:.2f} "
                    f"({low:.2f}-{high:.2f}) | {r.get('spread_skill_model_space', float('nan')):.2f} | "
                    f"{' '.join(f'{v:.2f}' for v in r.get('spread_skill_by_variance_fifth', []))} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["prepare", "train", "score", "regimes", "twin", "realrain", "pairs"])
    parser.add_argument("--out", type=Path, default=Path("skill"))
    parser.add_argument("--seed", type=int, default=20250101)
    parser.add_argument("--split", choices=["events", "hours"], default="events",
                        help="prepare: hold out whole events (a regime never seen) or the last quarter of every event")
    parser.add_argument("--regression-steps", type=int, default=500)
    parser.add_argument("--diffusion-steps", type=int, default=3000)
    parser.add_argument("--transform", choices=["log1p", "power"], default="power", help="train: precipitation transform")
    parser.add_argument("--epsilon", type=float, default=1.0, help="train: log1p knee (mm/h)")
    parser.add_argument("--power", type=float, default=0.5, help="train: power-transform exponent")
    parser.add_argument("--tiles", type=int, default=8, help="test tiles scored per held-out source")
    parser.add_argument("--steps", type=int, help="default: 18 (score, twin), else model.sampler_steps")
    parser.add_argument("--solver", choices=["heun", "euler", "dpm2m"], help="default: heun (score, twin), else model.solver")
    parser.add_argument("--sampler", nargs="+", default=[], metavar="KEY=VALUE",
                        help="realrain, pairs: model config keys of the sampler (e.g. sampler_rho=7 churn=0.5; none unsets a key)")
    parser.add_argument("--checkpoint", type=Path, help="score this checkpoint instead of OUT/model.safetensors "
                        "(realrain, pairs: default the shipped demo)")
    parser.add_argument("--tile", type=int, default=64, help="realrain: tile size (0.05° cells); pairs: patch size")
    parser.add_argument("--no-random-error", action="store_true", help="realrain: withhold randomError from the model")
    parser.add_argument("--events", nargs="+", default=["held-out"], metavar="NAME",
                        help="realrain: held-out (default), training (every training event: the validation set on which "
                        "settings are chosen), or named events of config/realrain.toml (to tune on)")
    parser.add_argument("--input-qdm", nargs="+", choices=[OFF, "field", "climatology"], default=[OFF],
                        help="realrain, pairs: also score with model.input_qdm on, reference the field itself or the "
                        "input's climatology (realrain: the source's training events; pairs: IMERG 00-11 UTC)")
    parser.add_argument("--condition-noise", nargs="+", type=float, default=[0.0], metavar="SIGMA",
                        help="realrain, pairs: also score with model.condition_noise_sigma = SIGMA (each level alone)")
    parser.add_argument("--tree", type=Path, help="twin: the held-out twin tree")
    parser.add_argument("--config", type=Path, default=REPO / "config" / "train-demo.toml", help="twin: the training config")
    parser.add_argument("--start", help="twin: first valid time (ISO)")
    parser.add_argument("--end", help="twin: last valid time (ISO)")
    parser.add_argument("--leads", type=int, nargs="+", default=[0, 4])
    parser.add_argument("--every-hours", type=int, default=3, help="twin: spacing of the scored valid times, aligned to multiples of it from 00 UTC")
    args = parser.parse_args()
    if args.action in ("score", "twin"):  # radar OSSE and twin figures in docs/model.md were made with Heun 18
        args.steps, args.solver = args.steps or 18, args.solver or "heun"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.action == "prepare":
        prepare(args.out, args.seed, args.split)
    elif args.action == "train":
        transform = {"precip_transform": args.transform, "precip_epsilon_mmh": args.epsilon, "precip_power": args.power}
        run_training(args.out, args.regression_steps, args.diffusion_steps, transform)
    elif args.action == "score":
        result = score(args.out, args.tiles, args.steps, args.solver, args.seed, args.checkpoint)
        print(markdown(result))
    elif args.action == "regimes":
        print(regimes(args.out))
    elif args.action == "realrain":
        args.checkpoint = args.checkpoint or REPO / "nrt" / "model" / "weights" / "demo"
        result = realrain_score(args)
        print(realrain_markdown([("pooled", result["pooled"]), *result["by_source"].items()]))
        print("\n" + rank_psd_markdown([("pooled", result["pooled"]), *result["by_source"].items()]))
        if len(result["variants"]) > 1:
            print("\n" + techniques_markdown(result))
    elif args.action == "pairs":
        args.checkpoint = args.checkpoint or REPO / "nrt" / "model" / "weights" / "demo"
        result = pairs_score(args)
        print(realrain_markdown([("IMERG Early -> Stage IV, 0.1° hourly", result["scores"])]))
        print("\n" + rank_psd_markdown([("IMERG Early -> Stage IV, 0.1° hourly", result["scores"])]))
        if len(result["variants"]) > 1:
            print("\n" + techniques_markdown(result, sets="pairs"))
    else:
        print(markdown(twin_score(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
