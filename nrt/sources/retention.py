"""Retention of raw granules: rows and files of the time-varying sources deleted together, orphans swept.

As for products (`nrt.products.retention`): each row is deleted in its own committed transaction, then its
file, so a crash leaves an unregistered file (swept on the next run once older than `grace`), never a row
pointing at nothing; rows whose file vanished are deleted. Files outside `data_dir` (a granule read in place
from a local mirror) are never deleted; only their rows go. The DEM is static and kept.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from nrt import sources
from nrt.io import Deletions, inside, sweep
from nrt.timeline import utc

log = logging.getLogger("nrt.sources")

PRUNED_SOURCES = ("imerg", "dpr", "geosfp")


@dataclass
class GranulePrune(Deletions):
    granules: int = 0  # granule rows deleted for age
    dangling: int = 0  # rows deleted because their file was gone

    def line(self) -> str:
        return super().line(f"{self.granules} granules, {self.dangling} dangling rows")


def prune_granules(catalog, data_dir: str | Path, older_than: dt.timedelta, now: dt.datetime | None = None, *,
                   grace: dt.timedelta = dt.timedelta(hours=1)) -> GranulePrune:
    """Delete the granules that ended before `now - older_than`, rows and files together."""
    now = utc(now or dt.datetime.now(dt.timezone.utc))
    data_dir = Path(data_dir)
    report = GranulePrune()
    cutoff = now - older_than
    for source in PRUNED_SOURCES:
        for row in catalog.granules(source=source, end=cutoff):
            if row.end_time >= cutoff:
                continue
            if catalog.delete_granule(row.id):
                report.granules += 1
            if row.path and inside(Path(row.path), data_dir):
                report.delete(Path(row.path))

    known = set()
    for source in PRUNED_SOURCES:
        for row in catalog.granules(source=source):
            if not row.path:
                continue
            path = Path(row.path)
            if path.is_file():
                known.add(path.resolve())
            elif row.state == "downloaded" and catalog.delete_granule(row.id):
                log.warning("retention: granule %s pointed at missing %s; row deleted", row.name, path)
                report.dangling += 1
    for source in PRUNED_SOURCES:
        sweep(data_dir / source, known, sources.module(source).parse_name, (now - grace).timestamp(), report)
    log.info("retention: %s", report.line())
    return report
