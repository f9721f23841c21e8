"""Products with the real catalog (SQLite): publish, best available and supersede, latest.json,
accumulations over the best-available sequence, EF5 export by daemon and CLI, retention."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr

from nrt.store import Catalog
from nrt.cli import main
from nrt.grids import LatLonGrid
from nrt.io import sha256_file
from nrt.products import best_available, prune, publish_settings, publish_valid_time
from nrt.sources.retention import prune_granules
from nrt.timeline import HALF_HOUR, floor_halfhour, isoformat
from nrt.service.queue import JobQueue

UTC = dt.timezone.utc
GRID = LatLonGrid(0.05, 41.025, -94.475, 10, 12)
V = dt.datetime(2024, 6, 1, 12, 30, tzinfo=UTC)


def field(value: float, members: int = 4, seed: int | None = None) -> xr.DataArray:
    if seed is None:
        values = np.full((members, *GRID.shape), value, np.float32)
    else:
        values = np.random.default_rng(seed).gamma(0.5, value, (members, *GRID.shape)).astype(np.float32)
    return xr.DataArray(values, dims=("member", "lat", "lon"))


@pytest.fixture
def catalog(cfg):
    with Catalog.from_config(cfg, migrate=True) as cat:
        yield cat


@pytest.fixture
def config_file(cfg, tmp_path) -> Path:
    path = tmp_path / "nrt.toml"
    path.write_text(f'[general]\nworkdir = "{cfg.workdir}"\n')
    return path


def publish(cfg, catalog, valid: dt.datetime, cycle: dt.datetime, precip: xr.DataArray, quicklook=False):
    """Publish as the pipeline does: the IMERG start S of `cycle` is the reference, lead = (valid - S) / 30 min."""
    start = floor_halfhour(cycle - dt.timedelta(hours=4))
    lead = int((valid - start) / HALF_HOUR)
    return publish_valid_time(
        precip, settings=publish_settings(cfg), catalog=catalog, grid=GRID, valid_time=valid, cycle_time=cycle, forecast_reference_time=start,
        lead=lead, attrs={"checkpoint_sha256": "c0ffee", "nowcast_method": "steps", "input_granules": ["g1", "g2"]},
        quicklook=quicklook,
    )


def cli(capsys, config_file, *args) -> tuple[int, str, str]:
    code = main(["--config", str(config_file), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_smaller_lead_supersedes_and_cli_reports_the_best(cfg, catalog, config_file, capsys):
    first = publish(cfg, catalog, V, V, field(1.0))  # cycle V: lead 8
    best = publish(cfg, catalog, V, V + dt.timedelta(hours=1), field(2.0))  # lead 6
    late = publish(cfg, catalog, V, V + dt.timedelta(minutes=30), field(3.0))  # lead 7, processed last
    assert [first.best, best.best, late.best] == [True, True, False]
    assert [r.lead for r in (first.products[0], best.products[0], late.products[0])] == [8, 6, 7]
    row = best_available(catalog, V)
    assert row.id == best.products[0].id and row.cycle_time == V + dt.timedelta(hours=1)
    assert best_available(catalog, V, "summary").path == str(best.products[1].path)

    code, out, _ = cli(capsys, config_file, "products", "best", "--valid", "2024-06-01T12:30Z")
    assert code == 0 and out.strip() == str(best.products[0].path)
    code, out, _ = cli(capsys, config_file, "products", "best", "--valid", "2024-06-01T12:44:00+00:00", "--json", "--kind", "summary")
    assert code == 0 and json.loads(out)["lead"] == 6 and json.loads(out)["cycle_time"] == "2024-06-01T13:30:00Z"
    code, out, err = cli(capsys, config_file, "products", "best", "--valid", "2024-06-01T13:00Z")
    assert code == 1 and out == "" and "no ensemble product for 2024-06-01T13:00:00Z" in err

    code, out, _ = cli(capsys, config_file, "products", "list", "--since", "2024-06-01T00:00Z", "--kind", "ensemble")
    assert code == 0 and out.count("\n") == 1 and "lead 6" in out
    code, out, _ = cli(capsys, config_file, "products", "list", "--since", "2024-06-01T00:00Z", "--all", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["lead"] for r in rows if r["kind"] == "ensemble") == [6, 7, 8]
    assert all((r["superseded_by"] is None) == (r["lead"] == 6) for r in rows)

    # The best file vanished (by hand): the lookup falls back to the next best instead of a dead path.
    best.products[0].path.unlink()
    assert best_available(catalog, V).id == late.products[0].id


def test_bad_time_is_a_one_line_error(config_file, capsys, catalog):
    code, out, err = cli(capsys, config_file, "products", "best", "--valid", "yesterday")
    assert code == 2 and err.strip() == "nrt: error: --valid: not an ISO time: 'yesterday'"


def test_latest_index_lists_the_best_per_valid_time(cfg, catalog, config_file, capsys):
    earlier = V - HALF_HOUR
    publish(cfg, catalog, earlier, V, field(1.0))
    publish(cfg, catalog, V, V, field(1.0), quicklook=True)
    publish(cfg, catalog, V, V + dt.timedelta(hours=1), field(2.0), quicklook=True)
    index = json.loads((cfg.product_dir / "latest.json").read_text())
    assert index["newest_valid_time"] == isoformat(V)
    assert set(index["valid_times"]) == {isoformat(earlier), isoformat(V)}
    now = index["valid_times"][isoformat(V)]
    assert set(now) == {"ensemble", "summary", "quicklook", "accumulation_1h", "accumulation_3h", "accumulation_6h"}
    assert now["ensemble"]["lead"] == 6 and now["ensemble"]["cycle_time"] == isoformat(V + dt.timedelta(hours=1))
    target = cfg.product_dir / now["ensemble"]["path"]
    assert target.is_file() and sha256_file(target) == now["ensemble"]["sha256"]
    assert "quicklook" not in index["valid_times"][isoformat(earlier)]  # quicklooks: newest valid time only
    assert not [p for p in cfg.product_dir.rglob(".*")]  # no temp files left behind
    (cfg.product_dir / "latest.json").unlink()
    code, out, _ = cli(capsys, config_file, "products", "latest")
    assert code == 0 and json.loads(Path(out.strip()).read_text())["valid_times"] == index["valid_times"]


def read_summary(path) -> xr.Dataset:
    with xr.open_dataset(path) as ds:
        return ds.load()


def test_accumulations_follow_the_best_available_sequence(cfg, catalog):
    cycle = V
    publish(cfg, catalog, V - HALF_HOUR, cycle, field(4.0))
    first = publish(cfg, catalog, V, cycle, field(2.0))
    accum = {p.kind: read_summary(p.path)["precipitation_amount"] for p in first.products if p.kind.startswith("accumulation")}
    np.testing.assert_allclose(accum["accumulation_1h"].values, 0.5 * (4 + 2))
    assert np.isnan(accum["accumulation_3h"].values).all()  # V - 2.5 h .. V - 1 h never published
    assert len(accum["accumulation_3h"].attrs["missing_half_hours"].split()) == 4
    assert first.stats.mean_rain_rate == pytest.approx(2.0)
    assert first.stats.max_exceedance == {1.0: 1.0, 5.0: 0.0, 10.0: 0.0, 25.0: 0.0}

    newer = V + HALF_HOUR  # a newer cycle brings a better V - 30 min; V's accumulation follows it
    publish(cfg, catalog, V - HALF_HOUR, newer, field(6.0))
    second = publish(cfg, catalog, V, newer, field(2.0))
    one_hour = next(p for p in second.products if p.kind == "accumulation_1h")
    np.testing.assert_allclose(read_summary(one_hour.path)["precipitation_amount"].values, 0.5 * (6 + 2))


def test_ef5_export_by_daemon_only_for_the_best_and_by_cli(cfg, catalog, config_file, capsys, tmp_path):
    cfg.products.ef5_export = True
    ef5_dir = cfg.product_dir / "ef5"
    best = publish(cfg, catalog, V, V + dt.timedelta(hours=1), field(3.0, seed=1))
    assert len(best.ef5) == 4 and {p.parent.name for p in best.ef5} == {f"member_{m:02d}" for m in range(4)}
    target = ef5_dir / "member_02" / "prcp.202406011300.tif"
    before = sha256_file(target)
    worse = publish(cfg, catalog, V, V, field(9.0, seed=2))  # an older cycle, larger lead, processed later
    assert not worse.best and worse.ef5 == [] and sha256_file(target) == before

    ensemble = xr.open_dataset(best.products[0].path)["precipitation"].values  # (time, realization, lat, lon)
    np.testing.assert_array_equal(tifffile.imread(target), ensemble[0, 2][::-1])

    out_dir = tmp_path / "cli_ef5"
    code, out, _ = cli(capsys, config_file, "export", "ef5", "--valid", "2024-06-01T12:30Z", "--out", str(out_dir))
    assert code == 0 and "wrote 4 GeoTIFFs" in out
    assert sha256_file(out_dir / "member_02" / "prcp.202406011300.tif") == before  # same bytes as the daemon's
    code, _, err = cli(capsys, config_file, "export", "ef5", "--valid", "2024-06-01T12:30Z", "--until", "2024-06-01T13:00Z", "--out", str(out_dir))
    assert code == 1 and "GAP 2024-06-01T13:00:00Z: no ensemble product" in err


def make_file(path: Path, content: bytes, modified: dt.datetime | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    if modified is not None:
        os.utime(path, (modified.timestamp(), modified.timestamp()))
    return path


def imerg_name(start: dt.datetime) -> str:
    end = start + dt.timedelta(minutes=29, seconds=59)
    minutes = start.hour * 60 + start.minute
    return f"3B-HHR-E.MS.MRG.3IMERG.{start:%Y%m%d}-S{start:%H%M%S}-E{end:%H%M%S}.{minutes:04d}.V07B.RT-H5"


def register_granule(catalog, path: Path, start: dt.datetime) -> int:
    make_file(path, b"granule " + start.isoformat().encode())
    return catalog.register_granule("imerg", path.name, "V07B", start, start + HALF_HOUR, str(path), path.stat().st_size, sha256_file(path))


def prune_products(cfg, catalog, now):
    return prune(catalog, cfg.product_dir, dt.timedelta(days=30), now, ef5_dir=cfg.product_dir / "ef5",
                 grace=dt.timedelta(hours=1), latest_hours=24)


def test_retention_keeps_catalog_and_disk_consistent(cfg, catalog, tmp_path):
    now = floor_halfhour(dt.datetime.now(UTC))
    cfg.products.ef5_export = True
    old_v, new_v = now - dt.timedelta(days=31), now - dt.timedelta(days=1)
    publish(cfg, catalog, old_v, old_v, field(1.0), quicklook=True)
    recent = publish(cfg, catalog, new_v, new_v, field(1.0), quicklook=True)
    old_tifs = list((cfg.product_dir / "ef5").rglob(f"prcp.{old_v + HALF_HOUR:%Y%m%d%H%M}.tif"))
    assert len(old_tifs) == 4

    imerg_dir = cfg.data_dir / "imerg" / "imerg" / "early"
    old_g = register_granule(catalog, imerg_dir / imerg_name(now - dt.timedelta(days=8)), now - dt.timedelta(days=8))
    new_g = register_granule(catalog, imerg_dir / imerg_name(now - dt.timedelta(days=1)), now - dt.timedelta(days=1))
    mirror_file = tmp_path / "mirror" / imerg_name(now - dt.timedelta(days=9))
    register_granule(catalog, mirror_file, now - dt.timedelta(days=9))  # read in place: row goes, file stays

    day = cfg.product_dir / f"{new_v:%Y/%m/%d}"
    stamp = f"{new_v:%Y%m%dT%H%M}Z_c{now:%Y%m%dT%H%M}Z"
    hours_ago = lambda h: now - dt.timedelta(hours=h)  # noqa: E731
    orphan = make_file(day / f"nrt_ensemble_{stamp}.nc", b"crashed before register", hours_ago(2))
    young_orphan = make_file(day / f"nrt_summary_{stamp}.nc", b"a writer is about to register this")
    stale_temp = make_file(day / ".nrt_ensemble_x.nc.part-4242-0badcafe", b"half", hours_ago(3))
    young_temp = make_file(day / ".nrt_ensemble_y.nc.part-4242-0badcafe", b"being written")
    operator_note = make_file(day / "README.txt", b"not ours", hours_ago(72))
    granule_orphan = make_file(imerg_dir / imerg_name(hours_ago(5)), b"unregistered download", hours_ago(4))
    dangling = catalog.register_product("ensemble", new_v - HALF_HOUR, new_v, 8, 4, str(day / "gone.nc"), 1, "0" * 64)

    report = prune_products(cfg, catalog, now)
    granules = prune_granules(catalog, cfg.data_dir, dt.timedelta(days=7), now, grace=dt.timedelta(hours=1))

    assert report.products == 6 and report.dangling == 1  # ensemble, summary, quicklook, 3 accumulations
    assert granules.granules == 2 and granules.dangling == 0 and granules.files == 2  # the old one and the orphan
    assert granules.line() == "pruned 2 granules, 0 dangling rows; deleted 2 files (0.0 MB)"
    assert report.line().startswith("pruned 6 products, 1 dangling rows; deleted ")
    assert {r.valid_time for r in catalog.products()} == {new_v}
    assert catalog.product(dangling) is None
    for row in catalog.products():
        assert Path(row.path).is_file()
    registered = {Path(r.path).resolve() for r in catalog.products()}
    leftovers = {p.resolve() for p in cfg.product_dir.rglob("nrt_*") if p.resolve() not in registered}
    assert leftovers == {young_orphan.resolve()}  # only the file still inside its grace period
    assert not orphan.exists() and not stale_temp.exists() and young_temp.exists() and operator_note.exists()
    old_day = cfg.product_dir / f"{old_v:%Y/%m/%d}"
    assert old_day.is_dir() and not any(old_day.iterdir())  # emptied just now: kept until it is older than the grace
    assert [p.name for p in recent.products[0].path.parent.iterdir() if p.name.startswith("nrt_ensemble")]
    assert not any(p.exists() for p in old_tifs) and len(list((cfg.product_dir / "ef5").rglob("*.tif"))) == 4

    assert [g.id for g in catalog.granules(source="imerg")] == [new_g] and old_g != new_g
    assert not (imerg_dir / imerg_name(now - dt.timedelta(days=8))).exists()
    assert (imerg_dir / imerg_name(now - dt.timedelta(days=1))).exists() and mirror_file.exists()
    assert not granule_orphan.exists()
    index = json.loads((cfg.product_dir / "latest.json").read_text())
    assert list(index["valid_times"]) == [isoformat(new_v)]

    again = prune_products(cfg, catalog, now)  # idempotent
    assert (again.products, again.dangling, again.files) == (0, 0, 0)
    again = prune_granules(catalog, cfg.data_dir, dt.timedelta(days=7), now)
    assert (again.granules, again.dangling, again.files) == (0, 0, 0)

    later = prune_products(cfg, catalog, now + dt.timedelta(hours=2))  # past the grace period
    assert later.files == 2 and not young_orphan.exists() and not young_temp.exists()
    assert not old_day.exists()
    assert all(Path(r.path).is_file() for r in catalog.products()) and len(catalog.products()) == 6


def test_daemon_ef5_export_fills_nodata_from_an_older_cycle(cfg, catalog):
    cfg.products.ef5_export = True
    publish(cfg, catalog, V, V, field(3.0))  # an older cycle (lead 8) with data everywhere
    holed = field(5.0)
    holed.values[:, :2, :3] = np.nan  # the newer, better product lacks a corner
    best = publish(cfg, catalog, V, V + dt.timedelta(hours=1), holed)
    assert best.best and len(best.ef5) == 4
    rows = tifffile.imread(cfg.product_dir / "ef5" / "member_01" / "prcp.202406011300.tif")[::-1]  # back to latitude ascending
    assert (rows[:2, :3] == 3.0).all() and (rows[2:] == 5.0).all() and (rows[:, 3:] == 5.0).all()  # never the -9999 EF5 reads as 0


@pytest.mark.parametrize(
    "spoil, reason",
    [
        (lambda v: v.__setitem__(slice(None), np.nan), "members are all NaN"),
        (lambda v: v.__setitem__((1,), np.nan), "1 of 4 members are all NaN"),
        (lambda v: v.__setitem__((slice(None), slice(0, 8)), np.nan), "of cells are valid"),
        (lambda v: v.__imul__(1000.0), "outside 0..500"),
    ],
)
def test_an_implausible_ensemble_never_supersedes_the_good_one(cfg, catalog, config_file, capsys, spoil, reason):
    """A newer cycle (smaller lead) with NaN members or absurd rates is refused before anything is written."""
    from nrt.products.publish import ImplausibleProduct

    good = publish(cfg, catalog, V, V, field(2.0, seed=1))
    bad = field(2.0, seed=2)
    spoil(bad.values)
    files_before = sorted(p.name for p in cfg.product_dir.rglob("*") if p.is_file())
    with pytest.raises(ImplausibleProduct, match=reason):
        publish(cfg, catalog, V, V + dt.timedelta(hours=1), bad)
    assert best_available(catalog, V).id == good.products[0].id
    assert sorted(p.name for p in cfg.product_dir.rglob("*") if p.is_file()) == files_before
    latest = json.loads((cfg.product_dir / "latest.json").read_text())
    assert latest["valid_times"][isoformat(V)]["ensemble"]["cycle_time"] == isoformat(V)


def test_a_worker_that_lost_its_lease_writes_no_file_and_no_row(cfg, catalog):
    """Fencing: after another worker re-claims the job, the old holder's publish stops before any write."""
    from nrt.errors import LeaseLost

    JobQueue(catalog).enqueue("cycle", {}, key="c")
    mine = JobQueue(catalog).claim("frozen", lease_s=0.5)
    fenced = catalog.fenced(mine.id, mine.lease_token)
    publish(cfg, fenced, V, V, field(1.0))  # while the lease holds, writes go through
    rows_before = catalog.products()
    files_before = sorted(p.name for p in cfg.product_dir.rglob("*") if p.is_file())
    import time

    time.sleep(0.6)  # frozen past the lease (SIGSTOP)
    rival = JobQueue(catalog).claim("rival", lease_s=60)
    assert rival.id == mine.id and rival.lease_token != mine.lease_token
    with pytest.raises(LeaseLost, match="lease lost"):
        publish(cfg, fenced, V, V + dt.timedelta(hours=1), field(2.0))
    with pytest.raises(LeaseLost):
        fenced.start_run(V)
    assert catalog.products() == rows_before
    assert sorted(p.name for p in cfg.product_dir.rglob("*") if p.is_file()) == files_before
    catalog.fenced(rival.id, rival.lease_token).start_run(V)  # the new owner writes


def test_a_lease_about_to_expire_refuses_a_file_write(cfg, catalog):
    from nrt.errors import LeaseLost

    JobQueue(catalog).enqueue("cycle", {}, key="c")
    job = JobQueue(catalog).claim("w", lease_s=2)
    catalog.fenced(job.id, job.lease_token, margin_s=1).check_lease()
    with pytest.raises(LeaseLost, match="expired"):
        catalog.fenced(job.id, job.lease_token, margin_s=5).check_lease()  # no time left to write a file safely


def test_a_full_product_disk_is_one_line_naming_the_file(cfg, catalog):
    from full_disk import full_disk

    from nrt.errors import StorageError

    with full_disk(cfg.product_dir):
        with pytest.raises(StorageError) as caught:
            publish(cfg, catalog, V, V, field(1.0, seed=3))
        message = str(caught.value)
    assert "No space left on device" in message and str(cfg.product_dir) in message and "\n" not in message
    assert catalog.products() == []  # nothing registered


def test_a_full_disk_under_the_stac_index_is_one_line_naming_it(cfg, catalog):
    from full_disk import full_disk

    from nrt.errors import StorageError

    stac = cfg.product_dir / "stac"
    with full_disk(stac):  # the product files fit; the index written after them does not
        with pytest.raises(StorageError) as caught:
            publish(cfg, catalog, V, V, field(1.0, seed=3))
        message = str(caught.value)
    assert message.startswith(str(stac)) and "No space left on device" in message and "\n" not in message


def test_export_ef5_into_an_unwritable_place_is_one_line(cfg, catalog, config_file, capsys, tmp_path):
    publish(cfg, catalog, V, V, field(1.0))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = cli(capsys, config_file, "export", "ef5", "--valid", isoformat(V), "--out", str(blocker / "ef5"))
    assert code == 2 and err.startswith("nrt: error: ") and str(blocker) in err and len(err.strip().splitlines()) == 1, err


def test_a_worker_frozen_mid_write_does_not_overwrite_the_new_owners_file(cfg, catalog):
    """The lease lapses while the file is being written: the finished file is never renamed into place."""
    import time

    from nrt.errors import LeaseLost

    JobQueue(catalog).enqueue("cycle", {}, key="c")
    mine = JobQueue(catalog).claim("frozen", lease_s=0.5)
    owners = publish(cfg, catalog, V, V, field(1.0, seed=5))  # the new owner's product, already in place
    path = owners.products[0].path
    kept = sha256_file(path)

    class FrozenDuringWrite:
        """The fenced catalog; the first lease check (before writing) is followed by a freeze past the lease."""

        def __init__(self):
            self.fenced = catalog.fenced(mine.id, mine.lease_token)
            self.checks = 0

        def check_lease(self):
            self.fenced.check_lease()
            self.checks += 1
            if self.checks == 1:
                time.sleep(0.6)  # SIGSTOP while writing
                assert JobQueue(catalog).claim("rival", lease_s=60).id == mine.id

        def __getattr__(self, name):
            return getattr(self.fenced, name)

    with pytest.raises(LeaseLost):
        publish(cfg, FrozenDuringWrite(), V, V, field(7.0, seed=6))
    assert sha256_file(path) == kept == catalog.products(kind="ensemble")[0].sha256
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no staged file left behind
