"""Few-step samplers against Heun 18 from the same latents, on tiles of training events (issue 19).

Cheaper than `model_skill.py realrain` and free of truth: for each candidate, the ensemble spread (mm/h) as a
share of Heun 18's, pooled and by the rain rate of Heun 18's ensemble mean, and how far its members lie from
Heun 18's members of the same latents (RMS, in units of Heun 18's ensemble spread). One residual scale can only
fix the pooled share; a share that rises with the rain rate (too narrow in light rain, too wide in heavy once
scaled) is what `residual_scale_by_rate` corrects. Training events only: tuning never sees `[holdout]`.

    OMP_NUM_THREADS=2 python scripts/sampler_probe.py \\
        solver=dpm2m,steps=4,sigma_max=80,denoise_to_zero=false,residual_scale=1.18 \\
        solver=dpm2m,steps=4,sigma_max=80,denoise_to_zero=false,residual_scale=1.18,residual_scale_by_rate=0.5:1.08/2:1.04/8:0.9/32:0.78
    OMP_NUM_THREADS=1 python scripts/sampler_probe.py --per-event 1 --members 8 ...   # quicker, coarser
    OMP_NUM_THREADS=1 python scripts/sampler_probe.py --wettest --per-event 4 ...     # heavy rain

Candidates are comma-separated `SamplerSettings` fields (solver, steps, rho, sigma_min, sigma_max, churn,
residual_scale, denoise_to_zero, residual_scale_by_rate as rate:factor/..., ...); a field not given takes the
`SamplerSettings` default (Heun 18, no scales), not the config's. The reference is `--reference` (Heun 18 from
the checkpoint's σ_max, EDM's last step taken).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nrt import config  # noqa: E402
from nrt.model.sampler import SamplerSettings  # noqa: E402

# Bins of the reference ensemble mean, mm/h: dry and drizzle, light, moderate, heavy, very heavy.
RATE_EDGES = (0.0, 0.2, 1.0, 4.0, 16.0, np.inf)


def parse(candidate: str) -> SamplerSettings:
    fields = {f.name: f for f in dataclasses.fields(SamplerSettings)}
    values = {}
    for item in candidate.split(","):
        key, _, value = item.partition("=")
        if key not in fields:
            sys.exit(f"sampler_probe: {candidate}: {key!r} is not a SamplerSettings field ({', '.join(fields)})")
        default = fields[key].default
        if key == "residual_scale_by_rate":  # rate:factor/rate:factor/...
            try:
                values[key] = tuple((float(rate), float(factor)) for rate, factor in
                                    (pair.split(":") for pair in value.split("/")))
            except ValueError:
                sys.exit(f"sampler_probe: {candidate}: {key} takes rate:factor/rate:factor/..., not {value!r}")
        elif isinstance(default, bool):
            if value not in ("true", "false"):
                sys.exit(f"sampler_probe: {candidate}: {key} takes true or false, not {value!r}")
            values[key] = value == "true"
        else:
            values[key] = value if key == "solver" else int(value) if key == "steps" else float(value)
    return SamplerSettings(**values)


def spread_by_rate(candidate: np.ndarray, reference: np.ndarray) -> tuple[float, list[tuple[str, float, int]]]:
    """√(Σ var / Σ var_reference) over the cells of (tile, member, y, x) ensembles: pooled, and per bin of the
    reference ensemble mean (label, share, cells)."""
    var, ref_var, ref_mean = candidate.var(axis=1), reference.var(axis=1), reference.mean(axis=1)
    valid = np.isfinite(var) & np.isfinite(ref_var)
    bins = []
    for low, high in zip(RATE_EDGES[:-1], RATE_EDGES[1:]):
        cells = valid & (ref_mean >= low) & (ref_mean < high)
        share = float(np.sqrt(var[cells].sum() / ref_var[cells].sum())) if cells.any() else float("nan")
        bins.append((f"{low:g}-{high:g}", share, int(cells.sum())))
    return float(np.sqrt(var[valid].sum() / ref_var[valid].sum())), bins


def pick_tiles(found: list, count: int, wettest: bool) -> list:
    """`count` of an event's (inputs, truth, time) cases: evenly spaced through the event, or the `wettest` by
    their input's mean rate (never the truth's), to see how a sampler fares in heavy rain."""
    if wettest:
        def input_rate(case) -> float:  # a tile without any input is the driest
            precip = case[0].precip[np.isfinite(case[0].precip)]
            return float(precip.mean()) if precip.size else -np.inf

        return sorted(found, key=input_rate, reverse=True)[:count]
    return [found[(j + 1) * len(found) // (count + 1)] for j in range(count)]


def main() -> int:
    import torch

    from nrt.errormodel import load_error_model
    from nrt.model.inference import Downscaler
    from nrt.model.realset import real_rain_cases
    from nrt.realrain.cache import cached_event_frames
    from nrt.realrain.events import default_radar_dir, load_catalogue

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="+", help="e.g. solver=dpm2m,steps=4,sigma_max=80")
    parser.add_argument("--checkpoint", default="builtin:demo")
    parser.add_argument("--members", type=int, default=30)
    parser.add_argument("--per-event", type=int, default=2, help="64 x 64 tiles per training event")
    parser.add_argument("--reference", default="solver=heun,steps=18", help="the sampler the candidates are held to")
    parser.add_argument("--wettest", action="store_true",
                        help="take each event's tiles with the highest input rate instead of evenly spaced ones")
    args = parser.parse_args()
    reference_settings = parse(args.reference)
    candidates = [(text, parse(text)) for text in args.candidates]
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    cfg = config.load(None)
    ds = Downscaler.load(args.checkpoint, "cpu", config.ModelConfig(device="cpu", patch_size=64, patch_overlap=8))
    catalogue, error_model = load_catalogue(cfg.train.realrain_catalogue), load_error_model(cfg.train.error_model)
    cases = []
    for k, event in enumerate(catalogue.training()):
        frames = cached_event_frames(event, default_radar_dir(), Path(cfg.train.realrain_cache).expanduser())
        found = real_rain_cases(frames, error_model, tile=64, per_frame=4, seed=199 + k)
        cases += [case[0] for case in pick_tiles(found, args.per_event, args.wettest)]

    def run(settings: SamplerSettings) -> tuple[np.ndarray, float]:
        ds.sampler = settings
        started = time.perf_counter()
        out = np.stack([ds.sample(cond, members=args.members, seed=5 + j) for j, cond in enumerate(cases)])
        return out, time.perf_counter() - started

    reference, seconds = run(reference_settings)
    spread = np.nanmean(reference.std(axis=1), axis=(1, 2))
    tiles = f"{len(cases)} {'wettest ' if args.wettest else ''}tiles of training events"
    print(f"{args.reference}: {seconds / len(cases):.1f} s per sample ({tiles}, {args.members} members, 64 x 64)", flush=True)
    for text, settings in candidates:
        out, seconds = run(settings)
        pooled, bins = spread_by_rate(out, reference)
        apart = np.nanmean(np.sqrt(np.nanmean((out - reference) ** 2, axis=(1, 2, 3))) / spread)
        by_rate = ", ".join(f"{label} mm/h {share:.3f} ({cells} cells)" for label, share, cells in bins)
        print(f"{text} ({settings.evaluations} evaluations): spread {pooled:.3f} of the reference's "
              f"[by its mean rate: {by_rate}], members {apart:.3f} spreads from the reference's, "
              f"{seconds / len(cases):.1f} s per sample", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
