"""Products and the catalog: publish one valid time, look up the best available, keep `latest.json`.

A newer cycle's product for the same valid time supersedes an older one when its lead is smaller; the
catalog ranks them (smallest lead, then newest cycle). Each file is complete on disk (atomic rename)
before its row is registered, so a row always points at a whole file.

`latest.json` in the product directory lists, for every valid time of the last `latest_hours` before the
newest one, the best product of each kind (paths relative to the product directory). It is rebuilt from
the catalog and replaced atomically after each publish and prune, so a poller never reads half a file.
Two writers racing may leave the older of two snapshots for one publish interval; the next update fixes it.

Before anything is written an ensemble must look like rain (`check_plausible`): enough valid cells, rates
within physical bounds, no all-NaN member. A product failing that is neither written nor ranked, so it can
never supersede a good one.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from nrt.errors import NrtError, StorageError
from nrt.grids import LatLonGrid
from nrt.io import atomic_path, fsync_dir, sha256_file
from nrt.products.alerts import AlertState, alert_states
from nrt.products.ef5 import export_ef5, export_range
from nrt.products.netcdf import (
    ENSEMBLE, PRECIP_VAR, QUICKLOOK, SUMMARY, accumulation_kind, data_vars, ensemble_dataset, product_path, write_dataset,
)
from nrt.products.quicklook import quicklook as draw_quicklook, quicklook_title
from nrt.products.stac import STAC_DIR, update_stac
from nrt.products.summary import (
    ProductStats,
    best_mean_fields,
    product_stats,
    summarize,
    write_accumulations,
    write_summary,
)
from nrt.timeline import floor_halfhour, isoformat, utc

log = logging.getLogger("nrt.products")

LATEST = "latest.json"


@dataclass(frozen=True)
class ProductRecord:
    """A product file written and registered (satisfies the metrics' ProductLike: kind, size)."""

    id: int
    kind: str
    path: Path
    size: int
    sha256: str
    valid_time: dt.datetime
    cycle_time: dt.datetime
    lead: int


@dataclass
class Published:
    products: list[ProductRecord]
    stats: ProductStats
    best: bool  # this cycle's ensemble is now the best available for its valid time
    ef5: list[Path] = field(default_factory=list)


class ImplausibleProduct(NrtError):
    """An ensemble that must not be published; `stage` tells the worker's metrics where the cycle stopped."""

    stage = "products"

    def __init__(self, valid_time: dt.datetime, cycle_time: dt.datetime, reason: str):
        self.reason = reason
        super().__init__(f"ensemble for {isoformat(valid_time)} (cycle {isoformat(cycle_time)}) not published: {reason}")


def check_plausible(members: np.ndarray, limits, valid_time: dt.datetime, cycle_time: dt.datetime) -> None:
    """Raise `ImplausibleProduct` unless the (member, ..., lat, lon) rates look like rain.

    `limits` has `min_valid_fraction` and `max_rate_mmh` (`PublishSettings`, or the `products` config section).
    """
    values = np.asarray(members, dtype=np.float32).reshape(members.shape[0], -1)
    finite = np.isfinite(values)

    def refuse(reason: str):
        raise ImplausibleProduct(valid_time, cycle_time, reason)

    empty = np.flatnonzero(~finite.any(axis=1))
    if empty.size:
        refuse(f"{empty.size} of {values.shape[0]} members are all NaN (first: member {empty[0]})")
    fraction = float(finite.mean())
    if fraction < limits.min_valid_fraction:
        refuse(f"only {fraction:.1%} of cells are valid (products.min_valid_fraction {limits.min_valid_fraction:g})")
    low, high = float(values[finite].min()), float(values[finite].max())
    if low < 0 or high > limits.max_rate_mmh:
        refuse(f"rates span {low:g}..{high:g} mm/h, outside 0..{limits.max_rate_mmh:g} (products.max_rate_mmh)")


# Less free space than this after a failed write reads as a full disk (HDF5 reports it without errno).
FULL_DISK_BYTES = 16 << 20


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a failed product write into one `StorageError` line naming the file (and a full disk as such)."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        # netCDF-C/HDF5 report a full disk as "NetCDF: HDF error" or even "Permission denied": ask the disk.
        directory = next((p for p in Path(path).parents if p.exists()), Path("/"))
        free = shutil.disk_usage(directory).free
        if getattr(exc, "errno", None) == errno.ENOSPC or free < FULL_DISK_BYTES:
            raise StorageError(path, f"No space left on device ({free} bytes free)") from None
        raise StorageError(path, (exc.strerror if isinstance(exc, OSError) else None) or str(exc)) from None


def staged_name(final: Path) -> Path:
    """A hidden sibling of `final` keeping its suffix (matplotlib picks the format from it); retention sweeps it."""
    return final.with_name(f".{final.stem}.part-{os.getpid()}-{secrets.token_hex(4)}{final.suffix}")


@contextmanager
def placed_while_leased(catalog, final: Path) -> Iterator[Path]:
    """Yield a staging path to write `final` to; rename it into place only if the job's lease still holds.

    The lease is checked after the (slow) write, just before the (instant) rename, so a worker frozen in
    mid-write cannot overwrite the new owner's file when it resumes. An unfenced catalog always places.
    """
    staged = staged_name(final)
    try:
        yield staged
        catalog.check_lease()
        os.replace(staged, final)
        fsync_dir(final.parent)
    finally:
        staged.unlink(missing_ok=True)


@contextmanager
def placed(catalog, final: Path) -> Iterator[Path]:
    """Write `final` through a lease-checked staging path (see `placed_while_leased`), a failure as one line.

    The lease is checked before the write too: a worker that lost its job's lease must not even start.
    """
    catalog.check_lease()
    with writing(final), placed_while_leased(catalog, final) as staged:
        yield staged


def register_file(catalog, kind: str, path: Path, *, valid_time, cycle_time, lead: int, members: int, checkpoint: str | None) -> ProductRecord:
    size, digest = path.stat().st_size, sha256_file(path)
    product_id = catalog.register_product(kind, valid_time, cycle_time, lead, members, str(path), size, digest, checkpoint=checkpoint)
    return ProductRecord(product_id, kind, path, size, digest, utc(valid_time), utc(cycle_time), int(lead))


def best_available(catalog, valid_time: dt.datetime, kind: str = ENSEMBLE):
    """The best product row of `kind` for `valid_time` whose file exists (smallest lead, then newest cycle).

    A row whose file has gone (it should not happen: prune deletes rows first) is skipped with a warning.
    """
    valid = utc(valid_time)
    for row in catalog.products(since=valid, until=valid, kind=kind):
        if Path(row.path).is_file():
            return row
        log.warning("catalog product %d (%s) points at a missing file %s", row.id, kind, row.path)
    return None


def latest_index(catalog, product_dir: Path, hours: float = 24.0, now: dt.datetime | None = None) -> dict:
    """The content of `latest.json` (pure over the catalog's current products)."""
    product_dir = Path(product_dir)
    newest = catalog.products(current_only=True)
    index: dict = {
        "generated_at": isoformat(now or dt.datetime.now(dt.timezone.utc)),
        "product_dir": str(product_dir),
        "newest_valid_time": None,
        "valid_times": {},
    }
    if not newest:
        return index
    last = max(row.valid_time for row in newest)
    index["newest_valid_time"] = isoformat(last)
    for row in catalog.products(since=last - dt.timedelta(hours=hours), current_only=True):
        path = Path(row.path)
        entry = {
            "path": str(path.relative_to(product_dir)) if path.is_relative_to(product_dir) else str(path),
            "cycle_time": isoformat(row.cycle_time),
            "lead": row.lead,
            "members": row.members,
            "size": row.size,
            "sha256": row.sha256,
        }
        index["valid_times"].setdefault(isoformat(row.valid_time), {})[row.kind] = entry
    return index


def update_latest(catalog, product_dir: Path, hours: float = 24.0, now: dt.datetime | None = None) -> Path:
    """Rewrite `<product_dir>/latest.json` atomically from the catalog; returns its path."""
    path = Path(product_dir) / LATEST
    text = json.dumps(latest_index(catalog, product_dir, hours, now), indent=1, sort_keys=True)
    with writing(path), atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    return path


def ef5_directory(cfg) -> Path:
    return cfg.products.ef5_directory or cfg.product_dir / "ef5"


@dataclass(frozen=True)
class PublishSettings:
    """What publishing uses, taken from the config once by `publish_settings(cfg)` (keys of `products`
    unless noted)."""

    product_dir: Path
    min_valid_fraction: float  # `check_plausible`'s limits
    max_rate_mmh: float
    thresholds_mmh: tuple[float, ...]
    accumulation_hours: tuple[int, ...]
    quantize: bool
    deflate_level: int
    quicklook: bool
    quicklook_threshold_mmh: float
    quicklook_member: int
    basins: tuple
    areas: tuple  # `alerts.areas`: drawn on the quicklook, and the alert states of a cycle
    ef5_export: bool
    ef5_dir: Path
    ef5_stamp: str
    ef5_nodata: float
    latest_hours: float


def publish_settings(cfg) -> PublishSettings:
    pc = cfg.products
    return PublishSettings(
        cfg.product_dir, pc.min_valid_fraction, pc.max_rate_mmh, tuple(pc.thresholds_mmh), tuple(pc.accumulation_hours),
        pc.quantize, pc.deflate_level, pc.quicklook, pc.quicklook_threshold_mmh, pc.quicklook_member, tuple(pc.basins),
        tuple(cfg.alerts.areas), pc.ef5_export, ef5_directory(cfg), pc.ef5_stamp, pc.ef5_nodata, pc.latest_hours,
    )


def export_best_ef5(catalog, valid_time: dt.datetime, out_dir: Path, *, stamp: str = "end", nodata: float = -9999.0) -> list[Path]:
    """Export the best-available ensemble of `valid_time` for EF5; [] when there is none."""
    row = best_available(catalog, valid_time, ENSEMBLE)
    if row is None:
        return []
    return export_ef5(row.path, out_dir, stamp=stamp, nodata=nodata)


def publish_valid_time(
    precip: xr.DataArray,
    *,
    settings: PublishSettings,
    catalog,
    grid: LatLonGrid,
    valid_time: dt.datetime,
    cycle_time: dt.datetime,
    forecast_reference_time: dt.datetime,
    lead: int,
    attrs: Mapping | None = None,
    quicklook: bool | None = None,
    input_precipitation=None,
) -> Published:
    """Write, register and index every product of one valid time of one cycle.

    In order: the ensemble file; its summary (statistics); one accumulation file per configured window, over
    the best-available means of the preceding half hours (so the pipeline should publish a cycle's valid
    times oldest first);
    a quicklook PNG (by default for the cycle's newest valid time only, when `products.quicklook`); the EF5
    GeoTIFFs when `products.ef5_export` and this ensemble is now the best available; then `latest.json`.
    `precip` is (member, [time=1,] lat, lon) in mm/h; `attrs` carries the provenance (see
    `netcdf.global_attrs`), its `checkpoint_sha256` also goes to the catalog. `input_precipitation` (lat, lon)
    is the upsampled model input stored beside the members as the verification baseline.
    """
    pc = settings
    valid, cycle = utc(valid_time), utc(cycle_time)
    check_plausible(np.asarray(precip.values), pc, valid, cycle)
    meta = {**(attrs or {}), "cycle_time": cycle}
    checkpoint = meta.get("checkpoint_sha256") or None
    ds = ensemble_dataset(precip, grid=grid, valid_time=valid, forecast_reference_time=forecast_reference_time, lead=lead, attrs=meta,
                          input_precipitation=input_precipitation)
    members = ds.sizes["member"]
    where = dict(valid_time=valid, cycle_time=cycle, lead=lead, members=members, checkpoint=checkpoint)
    records = []

    ens_path = product_path(pc.product_dir, ENSEMBLE, valid, cycle)
    with placed(catalog, ens_path) as staged:
        write_dataset(staged, ds, data_vars(ds), deflate_level=pc.deflate_level, quantize=pc.quantize,
                      chunks={"member": 1, "time": 1})
    records.append(register_file(catalog, ENSEMBLE, ens_path, **where))

    values = ds[PRECIP_VAR].values[:, 0]
    stats = summarize(values, pc.thresholds_mmh)
    sum_path = product_path(pc.product_dir, SUMMARY, valid, cycle)
    with placed(catalog, sum_path) as staged:
        write_summary(
            staged, stats, grid=grid, valid_time=valid, forecast_reference_time=forecast_reference_time,
            attrs={**meta, "lead_half_hours": int(lead)}, quantize=pc.quantize, deflate_level=pc.deflate_level,
        )
    records.append(register_file(catalog, SUMMARY, sum_path, **where))
    accum_paths = write_accumulations(
        pc.product_dir, best_mean_fields(catalog, valid, max(pc.accumulation_hours), stats["mean"]), pc.accumulation_hours,
        grid=grid, valid_time=valid, cycle_time=cycle, forecast_reference_time=forecast_reference_time,
        attrs={**meta, "lead_half_hours": int(lead)}, quantize=pc.quantize, deflate_level=pc.deflate_level,
        place=lambda path: placed(catalog, path),
    )
    records.extend(register_file(catalog, accumulation_kind(h), path, **where) for h, path in accum_paths.items())

    if quicklook is None:
        quicklook = pc.quicklook and valid == floor_halfhour(cycle)
    if quicklook:
        ql_path = product_path(pc.product_dir, QUICKLOOK, valid, cycle)
        with placed(catalog, ql_path) as staged:
            draw_quicklook(
                ds[PRECIP_VAR], staged, threshold=pc.quicklook_threshold_mmh, member=min(pc.quicklook_member, members - 1),
                title=quicklook_title(valid, cycle, lead, members), areas=pc.areas, basins=pc.basins,
            )
        records.append(register_file(catalog, QUICKLOOK, ql_path, **where))

    best_row = best_available(catalog, valid, ENSEMBLE)
    is_best = best_row is not None and best_row.id == records[0].id
    ef5 = []
    if pc.ef5_export and is_best:
        # As `nrt export ef5` does (nodata filled from older cycles, the rest logged), so both give identical GeoTIFFs.
        ef5 = export_range(catalog, valid, valid, pc.ef5_dir, stamp=pc.ef5_stamp, nodata=pc.ef5_nodata, gaps_file=False).written
    with writing(pc.product_dir / "latest.json"):
        update_latest(catalog, pc.product_dir, pc.latest_hours)
    with writing(pc.product_dir / STAC_DIR):  # a disk filling up here once gave a bare "[Errno 28]" (the soak)
        update_stac(catalog, pc.product_dir, pc.latest_hours)
    result = Published(records, product_stats(stats, pc.thresholds_mmh), is_best, ef5)
    log.info(
        "published %s cycle %s lead %d: %d files, mean %.3f mm/h%s",
        isoformat(valid), isoformat(cycle), lead, len(records), result.stats.mean_rain_rate,
        "" if is_best else " (a better product exists)",
    )
    return result


@dataclass(frozen=True)
class PublishedCycle:
    products: list[ProductRecord]
    summary: ProductStats  # of the newest valid time
    alerts: list[AlertState]  # one per configured area, from the newest valid time


def publish_cycle(
    ensemble: np.ndarray, valid_times: list[tuple[dt.datetime, int, np.ndarray]], *, settings: PublishSettings, catalog, grid: LatLonGrid,
    cycle_time: dt.datetime, forecast_reference_time: dt.datetime, attrs: Mapping,
) -> PublishedCycle:
    """`publish_valid_time` for each (valid time, lead, input precipitation) of a cycle, oldest first, with the
    `ensemble` (member, time, lat, lon); the newest valid time's ensemble sets the alert states."""
    products, published, alerts = [], None, []
    for k, (valid, lead, input_precipitation) in enumerate(valid_times):
        members = xr.DataArray(ensemble[:, k : k + 1], dims=("member", "time", "lat", "lon"))
        published = publish_valid_time(
            members, settings=settings, catalog=catalog, grid=grid, valid_time=valid, cycle_time=cycle_time,
            forecast_reference_time=forecast_reference_time, lead=lead, attrs=attrs, input_precipitation=input_precipitation,
        )
        products.extend(published.products)
        if k == len(valid_times) - 1:
            alerts = alert_states(members, grid, settings.areas)
            for alert in alerts:
                if alert.active:
                    log.warning("ALERT %s: P(rain > %g mm/h) = %.2f >= %.2f at %s",
                                alert.area, alert.threshold, alert.probability, alert.level, isoformat(valid))
    return PublishedCycle(products, published.stats, alerts)
