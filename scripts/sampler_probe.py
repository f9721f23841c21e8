"""Few-step samplers against Heun 18 from the same latents, on a few tiles of training events (issue 19).

Cheaper than `model_skill.py realrain` and free of truth: for each candidate, the mean ensemble standard
deviation (mm/h) as a share of Heun 18's, and how far its members lie from Heun 18's members of the same
latents (RMS, in units of Heun 18's ensemble spread). Training events only: tuning never sees `[holdout]`.

    OMP_NUM_THREADS=1 nice python scripts/sampler_probe.py solver=dpm2m,steps=4,sigma_max=80 solver=euler,steps=4
    OMP_NUM_THREADS=1 nice python scripts/sampler_probe.py --members 30 ...   # seconds per 30-member sample

Candidates are comma-separated `SamplerSettings` fields (solver, steps, rho, sigma_min, sigma_max, churn,
residual_scale, ...).
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

EVENTS = ("mrms-20160921", "knmi-20100826-night", "saf-20180601-morning", "fmi-20160928")


def parse(candidate: str) -> SamplerSettings:
    types = {f.name: f.type for f in dataclasses.fields(SamplerSettings)}
    values = {}
    for item in candidate.split(","):
        key, _, value = item.partition("=")
        if key not in types:
            sys.exit(f"sampler_probe: {candidate}: {key!r} is not a SamplerSettings field ({', '.join(types)})")
        values[key] = value if key == "solver" else int(value) if key == "steps" else float(value)
    return SamplerSettings(**values)


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
    parser.add_argument("--members", type=int, default=8)
    args = parser.parse_args()
    candidates = [(text, parse(text)) for text in args.candidates]
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    cfg = config.load(None)
    ds = Downscaler.load(args.checkpoint, "cpu", config.ModelConfig(device="cpu", patch_size=64, patch_overlap=8))
    catalogue, error_model = load_catalogue(cfg.train.realrain_catalogue), load_error_model(cfg.train.error_model)
    cases = []
    for k, name in enumerate(EVENTS):
        assert not catalogue.is_held_out(name), name
        frames = cached_event_frames(catalogue.events[name], default_radar_dir(), Path(cfg.train.realrain_cache).expanduser())
        found = real_rain_cases(frames, error_model, tile=64, per_frame=4, seed=99 + k)
        cases.append(found[len(found) // 2][0])

    def run(settings: SamplerSettings) -> tuple[list[np.ndarray], float]:
        ds.sampler = settings
        started = time.perf_counter()
        return [ds.sample(cond, members=args.members, seed=5 + j) for j, cond in enumerate(cases)], time.perf_counter() - started

    reference, seconds = run(SamplerSettings(solver="heun", steps=18))
    spread = [np.nanmean(r.std(axis=0)) for r in reference]
    print(f"heun 18: {seconds / len(cases):.1f} s per sample ({args.members} members, 64 x 64)", flush=True)
    for text, settings in candidates:
        out, seconds = run(settings)
        share = np.mean([np.nanmean(o.std(axis=0)) / s for o, s in zip(out, spread)])
        apart = np.mean([np.sqrt(np.nanmean((o - r) ** 2)) / s for o, r, s in zip(out, reference, spread)])
        print(f"{text}: spread {share:.3f} of Heun 18's, members {apart:.3f} spreads from Heun 18's, "
              f"{seconds / len(cases):.1f} s per sample", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
