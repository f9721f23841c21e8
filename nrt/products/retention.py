"""Retention: delete old products and raw granules while keeping the catalog and the disk consistent.

Order of deletion: the catalog row first (its own committed transaction), then the file. A crash between
the two leaves an unregistered file, never a row pointing at a missing file; the orphan sweep below
removes such files on the next run. (Renaming the file to a trash name first and deleting the row after
would open the opposite window, a row whose file is gone, which readers would trip over.)

Each run also:
- deletes rows whose file has vanished (someone removed it by hand) so no row points at nothing;
- sweeps orphans: files under the product directory (and under `<data_dir>/<source>/` for the
  time-varying sources) that no row names, and stale `.name.part-*` temp files of crashed writers,
  both only when older than `grace` (a writer renames its file before registering it);
- drops EF5 GeoTIFFs whose time stamp is older than the product cutoff, and empty date directories;
- rewrites `latest.json`.
Files outside the product and data directories (a granule read in place from a local mirror) are never
deleted; only their rows go.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from nrt import sources
from nrt.products.publish import LATEST, ef5_directory, update_latest
from nrt.timeline import utc

log = logging.getLogger("nrt.products")

# Sources whose granules age out; the DEM is static and kept.
PRUNED_SOURCES = ("imerg", "dpr", "geosfp")
_EF5_NAME = re.compile(r"^prcp\.(\d{12})\.tif$")
_PRODUCT_NAME = re.compile(r"^nrt_[a-z0-9_]+?_\d{8}T\d{4}Z_c\d{8}T\d{4}Z\.(nc|png)$")  # kinds include accumulation_3h
_TEMP_NAME = re.compile(r"^\..+\.part-\d+-[0-9a-f]+(\.[A-Za-z0-9]+)?$")  # nrt.io.temp_name, publish.staged_name


@dataclass
class PruneReport:
    products: int = 0  # product rows deleted for age
    granules: int = 0  # granule rows deleted for age
    dangling: int = 0  # rows deleted because their file was gone
    files: int = 0  # files deleted (those rows' files, orphans, temp files, EF5 exports)
    bytes: int = 0

    def line(self) -> str:
        return (
            f"pruned {self.products} products, {self.granules} granules, {self.dangling} dangling rows; "
            f"deleted {self.files} files ({self.bytes / 1e6:.1f} MB)"
        )


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _unlink(path: Path, report: PruneReport) -> None:
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return
    report.files += 1
    report.bytes += size


def _older_than(path: Path, cutoff_epoch: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff_epoch
    except FileNotFoundError:
        return False


def _is_temp(name: str) -> bool:
    return _TEMP_NAME.match(name) is not None


def _sweep(root: Path, known: set[Path], ours, cutoff_epoch: float, report: PruneReport, skip: set[Path]) -> None:
    """Under `root`, delete files older than the cutoff that are stale temp files, or that `ours(name)`
    claims (a product or granule name) and no row names; then remove empty folders as old."""
    if not root.is_dir():
        return
    for dirpath, _, filenames in os.walk(root, topdown=False):
        folder = Path(dirpath)
        if any(folder == s or folder.is_relative_to(s) for s in skip):
            continue
        for name in filenames:
            path = folder / name
            temp = _is_temp(name)
            if path in skip or not (temp or ours(name)) or path.resolve() in known:
                continue
            if _older_than(path, cutoff_epoch):
                log.info("retention: deleting %s file %s", "temp" if temp else "orphan", path)
                _unlink(path, report)
        if folder != root and not any(folder.iterdir()) and _older_than(folder, cutoff_epoch):
            folder.rmdir()


def _prune_ef5(ef5_dir: Path, cutoff: dt.datetime, grace_epoch: float, report: PruneReport) -> None:
    if not ef5_dir.is_dir():
        return
    for path in ef5_dir.rglob("*"):
        if not path.is_file():
            continue
        match = _EF5_NAME.match(path.name)
        if match:
            stamp = dt.datetime.strptime(match.group(1), "%Y%m%d%H%M").replace(tzinfo=dt.timezone.utc)
            if stamp < cutoff:
                _unlink(path, report)
        elif _is_temp(path.name) and _older_than(path, grace_epoch):
            _unlink(path, report)


def prune(
    catalog,
    product_dir: str | Path,
    data_dir: str | Path,
    older_than_products: dt.timedelta,
    older_than_granules: dt.timedelta,
    now: dt.datetime | None = None,
    *,
    ef5_dir: str | Path | None = None,
    grace: dt.timedelta = dt.timedelta(hours=1),
    latest_hours: float = 24.0,
) -> PruneReport:
    """Delete products with valid time before `now - older_than_products` and granules that ended before
    `now - older_than_granules`, rows and files together (see the module docstring for the guarantees)."""
    now = utc(now or dt.datetime.now(dt.timezone.utc))
    product_dir, data_dir = Path(product_dir), Path(data_dir)
    ef5_dir = Path(ef5_dir) if ef5_dir else product_dir / "ef5"
    report = PruneReport()
    grace_epoch = (now - grace).timestamp()

    product_cutoff = now - older_than_products
    for row in catalog.products(until=product_cutoff):
        if row.valid_time >= product_cutoff:
            continue
        if catalog.delete_product(row.id):
            report.products += 1
        path = Path(row.path)
        if _inside(path, product_dir):
            _unlink(path, report)

    granule_cutoff = now - older_than_granules
    for source in PRUNED_SOURCES:
        for row in catalog.granules(source=source, end=granule_cutoff):
            if row.end_time >= granule_cutoff:
                continue
            if catalog.delete_granule(row.id):
                report.granules += 1
            if row.path and _inside(Path(row.path), data_dir):
                _unlink(Path(row.path), report)

    # Rows whose files vanished, then files no row names.
    known_products = set()
    for row in catalog.products():
        path = Path(row.path)
        if path.is_file():
            known_products.add(path.resolve())
        elif catalog.delete_product(row.id):
            log.warning("retention: product %d pointed at missing %s; row deleted", row.id, path)
            report.dangling += 1
    known_granules = set()
    for source in PRUNED_SOURCES:
        for row in catalog.granules(source=source):
            if not row.path:
                continue
            path = Path(row.path)
            if path.is_file():
                known_granules.add(path.resolve())
            elif row.state == "downloaded" and catalog.delete_granule(row.id):
                log.warning("retention: granule %s pointed at missing %s; row deleted", row.name, path)
                report.dangling += 1

    _sweep(product_dir, known_products, _PRODUCT_NAME.match, grace_epoch, report, skip={product_dir / LATEST, ef5_dir})
    for source in PRUNED_SOURCES:
        if (data_dir / source).is_dir():
            _sweep(data_dir / source, known_granules, sources.module(source).parse_name, grace_epoch, report, skip=set())
    _prune_ef5(ef5_dir, product_cutoff, grace_epoch, report)
    if product_dir.is_dir():
        update_latest(catalog, product_dir, latest_hours, now)
    log.info("retention: %s", report.line())
    return report


def prune_from_config(cfg, catalog, now: dt.datetime | None = None) -> PruneReport:
    """`prune` with the retention periods of `cfg.products`."""
    pc = cfg.products
    return prune(
        catalog, cfg.product_dir, cfg.data_dir,
        dt.timedelta(days=pc.retention_days), dt.timedelta(days=pc.granule_retention_days), now,
        ef5_dir=ef5_directory(cfg), grace=dt.timedelta(minutes=pc.orphan_grace_minutes), latest_hours=pc.latest_hours,
    )
