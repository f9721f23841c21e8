"""Fingerprint what `nrt demo` makes, so a refactor can show that it changed no product.

Runs `nrt demo` (fixed twin seed, the cheapest sampler settings) in a work directory and digests every file
under its product tree (netCDF variables with their raw values and attributes, JSON, image pixels, other
bytes) and the catalog's products, runs and scores, leaving out what differs from run to run by design:
creation times (`history`, `generated_at`, `created`...), the work directory's absolute path, run ids and
stage timings.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/demo_fingerprint.py --workdir /tmp/fp --out /tmp/fp.json
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/demo_fingerprint.py --workdir /tmp/fp --check tests/data/demo_fingerprint.json
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/demo_fingerprint.py --workdir /tmp/fps \
        --config tests/data/demo_fingerprint.toml --check tests/data/demo_fingerprint_small.json

`--check` exits 1 and names every file whose digest differs from the recorded one. One thread keeps torch's
CPU reductions in one order (the recorded fingerprint was made so).
`tests/data/demo_fingerprint.json` was recorded with the default config on a CPU with avx512_bf16, where
bf16 autocast is on; on a CPU without bf16 the networks run in float32 and every ensemble differs. The small
config pins `model.bf16 = false`, so its record holds on any CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np

# Attribute and JSON keys whose values are wall-clock times, or checksums of files that carry their creation
# time (`history`): the files themselves are digested without it.
VOLATILE_KEYS = {"history", "generated_at", "created", "updated", "date_created", "date_modified", "created_at",
                 "started_at", "finished_at", "updated_at", "DateTime", "sha256", "file:checksum"}
DEMO_ARGS = ["--cycles", "2", "--steps", "1", "--solver", "euler", "--seed", "20250101"]


def _clean(value, workdir: str):
    if isinstance(value, dict):
        return {k: _clean(v, workdir) for k, v in sorted(value.items()) if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_clean(v, workdir) for v in value]
    if isinstance(value, str):
        return value.replace(workdir, "<workdir>")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def netcdf_digest(path: Path, workdir: str) -> dict[str, str]:
    import netCDF4

    out = {}
    with netCDF4.Dataset(path) as ds:
        ds.set_auto_maskandscale(False)
        out["global_attrs"] = _digest(_clean({k: ds.getncattr(k) for k in ds.ncattrs()}, workdir))
        for group in [ds, *ds.groups.values()]:
            for name, var in group.variables.items():
                values = np.ascontiguousarray(var[...])
                attrs = _clean({k: var.getncattr(k) for k in var.ncattrs()}, workdir)
                out[f"{group.path}:{name}"] = _digest([str(values.dtype), list(values.shape), list(var.dimensions), attrs],
                                                      values.tobytes())
    return out


def image_digest(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return _digest([image.mode, list(image.size)], np.asarray(image).tobytes())


def tiff_digest(path: Path, workdir: str) -> str:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tags = {tag.name: tag.value for tag in page.tags.values() if tag.name not in VOLATILE_KEYS}
        return _digest(_clean({k: v if isinstance(v, (int, float, str)) else repr(v) for k, v in tags.items()}, workdir),
                       page.asarray().tobytes())


def file_digest(path: Path, workdir: str):
    suffix = path.suffix.lower()
    if suffix == ".nc":
        return netcdf_digest(path, workdir)
    if suffix == ".json":
        return _digest(_clean(json.loads(path.read_text()), workdir))
    if suffix == ".png":
        return image_digest(path)
    if suffix in (".tif", ".tiff"):
        return tiff_digest(path, workdir)
    return _digest(path.read_bytes().replace(workdir.encode(), b"<workdir>"))


def catalog_digest(catalog: Path, workdir: str) -> dict[str, str]:
    with sqlite3.connect(catalog) as db:
        products = db.execute(
            "SELECT kind, valid_time, cycle_time, lead, members, path, checkpoint, superseded_by IS NULL "
            "FROM products ORDER BY kind, valid_time, cycle_time").fetchall()
        runs = db.execute("SELECT cycle_time, state, error, degraded FROM runs ORDER BY cycle_time, id").fetchall()
        scores = db.execute(
            "SELECT p.kind, p.valid_time, p.cycle_time, s.truth_source, s.metric, s.threshold, s.lead, s.model, s.value "
            "FROM scores s JOIN products p ON p.id = s.product_id "
            "ORDER BY p.kind, p.valid_time, p.cycle_time, s.truth_source, s.metric, s.threshold, s.lead, s.model").fetchall()
        jobs = db.execute("SELECT kind, key, state, attempts, error FROM jobs ORDER BY key").fetchall()
    return {
        "catalog:products": _digest(_clean([list(row) for row in products], workdir)),
        "catalog:runs": _digest(_clean([list(row) for row in runs], workdir)),
        "catalog:scores": _digest([[*row[:-1], None if row[-1] is None else float(np.float32(row[-1]))] for row in scores]),
        "catalog:jobs": _digest([list(row) for row in jobs]),
    }


def fingerprint(workdir: Path) -> dict:
    workdir = workdir.resolve()
    products = workdir / "products"
    files = {str(path.relative_to(products)): file_digest(path, str(workdir))
             for path in sorted(products.rglob("*")) if path.is_file() and not path.name.startswith(".")}
    return {"demo_args": DEMO_ARGS, "files": files, **catalog_digest(workdir / "catalog.sqlite", str(workdir))}


def run_demo(workdir: Path, config: Path | None) -> None:
    command = [sys.executable, "-m", "nrt.cli", "--log-level", "WARNING", *(["--config", str(config)] if config else []),
               "demo", *DEMO_ARGS, "--no-progress", "--workdir", str(workdir)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def differences(recorded: dict, now: dict) -> list[str]:
    lines = []
    for key in sorted(set(recorded) | set(now)):
        if key == "files":
            for name in sorted(set(recorded[key]) | set(now[key])):
                if recorded[key].get(name) != now[key].get(name):
                    lines.append(f"{name}: {recorded[key].get(name)} != {now[key].get(name)}")
        elif recorded.get(key) != now.get(key):
            lines.append(f"{key}: {recorded.get(key)} != {now.get(key)}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="demo work directory (its products are replaced)")
    parser.add_argument("--config", type=Path, help="nrt config for the demo (default: the packaged one)")
    parser.add_argument("--out", type=Path, help="write the fingerprint here (JSON)")
    parser.add_argument("--check", type=Path, help="compare with this recorded fingerprint; exit 1 on any difference")
    parser.add_argument("--no-run", action="store_true", help="fingerprint the work directory as it is")
    args = parser.parse_args(argv)
    if not args.no_run:
        run_demo(args.workdir, args.config)
    now = fingerprint(args.workdir)
    if args.out:
        args.out.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    if args.check:
        diff = differences(json.loads(args.check.read_text()), now)
        for line in diff:
            print(f"differs: {line}")
        print(f"{len(now['files'])} product files: {'identical' if not diff else f'{len(diff)} difference(s)'}")
        return 1 if diff else 0
    print(json.dumps(now, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
