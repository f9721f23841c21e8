"""Retention of products: delete old products while keeping the catalog and the disk consistent.

Order of deletion: the catalog row first (its own committed transaction), then the file. A crash between
the two leaves an unregistered file, never a row pointing at a missing file; the orphan sweep below
removes such files on the next run. (Renaming the file to a trash name first and deleting the row after
would open the opposite window, a row whose file is gone, which readers would trip over.)

Each run also:
- deletes rows whose file has vanished (someone removed it by hand) so no row points at nothing;
- sweeps orphans: files under the product directory that no row names, and stale `.name.part-*` temp
  files of crashed writers, both only when older than `grace` (a writer renames its file before
  registering it);
- drops EF5 GeoTIFFs whose time stamp is older than the product cutoff, and empty date directories;
- rewrites `latest.json`.
Raw granules age out the same way in `nrt.sources.retention`.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from nrt.io import Deletions, inside, is_temp_name, older_than, sweep
from nrt.products.publish import LATEST, update_latest
from nrt.timeline import utc

log = logging.getLogger("nrt.products")

_EF5_NAME = re.compile(r"^prcp\.(\d{12})\.tif$")
_PRODUCT_NAME = re.compile(r"^nrt_[a-z0-9_]+?_\d{8}T\d{4}Z_c\d{8}T\d{4}Z\.(nc|png)$")  # kinds include accumulation_3h


@dataclass
class PruneReport(Deletions):
    products: int = 0  # product rows deleted for age
    dangling: int = 0  # rows deleted because their file was gone

    def line(self) -> str:
        return super().line(f"{self.products} products, {self.dangling} dangling rows")


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
                report.delete(path)
        elif is_temp_name(path.name) and older_than(path, grace_epoch):
            report.delete(path)


def prune(
    catalog,
    product_dir: str | Path,
    older_than: dt.timedelta,
    now: dt.datetime | None = None,
    *,
    ef5_dir: str | Path | None = None,
    grace: dt.timedelta = dt.timedelta(hours=1),
    latest_hours: float = 24.0,
) -> PruneReport:
    """Delete products with valid time before `now - older_than`, rows and files together (see the module
    docstring for the guarantees)."""
    now = utc(now or dt.datetime.now(dt.timezone.utc))
    product_dir = Path(product_dir)
    ef5_dir = Path(ef5_dir) if ef5_dir else product_dir / "ef5"
    report = PruneReport()
    grace_epoch = (now - grace).timestamp()

    cutoff = now - older_than
    for row in catalog.products(until=cutoff):
        if row.valid_time >= cutoff:
            continue
        if catalog.delete_product(row.id):
            report.products += 1
        path = Path(row.path)
        if inside(path, product_dir):
            report.delete(path)

    # Rows whose files vanished, then files no row names.
    known = set()
    for row in catalog.products():
        path = Path(row.path)
        if path.is_file():
            known.add(path.resolve())
        elif catalog.delete_product(row.id):
            log.warning("retention: product %d pointed at missing %s; row deleted", row.id, path)
            report.dangling += 1

    sweep(product_dir, known, _PRODUCT_NAME.match, grace_epoch, report, skip={product_dir / LATEST, ef5_dir})
    _prune_ef5(ef5_dir, cutoff, grace_epoch, report)
    if product_dir.is_dir():
        update_latest(catalog, product_dir, latest_hours, now)
    log.info("retention: %s", report.line())
    return report
