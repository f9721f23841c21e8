"""The STAC catalog beside the products: an Item per current product, projection and datacube fields, atomic updates."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import xarray as xr

from nrt.store import Catalog
from nrt.grids import LatLonGrid
from nrt.io import sha256_file
from nrt.products import publish_settings, publish_valid_time

UTC = dt.timezone.utc
GRID = LatLonGrid(0.05, 41.025, -94.475, 10, 12)
V = dt.datetime(2024, 6, 1, 12, 30, tzinfo=UTC)


def publish(cfg, catalog, valid, cycle, value):
    start = cycle - dt.timedelta(hours=4)
    precip = xr.DataArray(np.full((3, *GRID.shape), value, np.float32), dims=("member", "lat", "lon"))
    return publish_valid_time(precip, settings=publish_settings(cfg), catalog=catalog, grid=GRID, valid_time=valid, cycle_time=cycle, forecast_reference_time=start,
                              lead=int((valid - start) / dt.timedelta(minutes=30)), quicklook=False)


def test_stac_lists_the_current_products_with_their_files(cfg):
    with Catalog.from_config(cfg, migrate=True) as catalog:
        publish(cfg, catalog, V, V + dt.timedelta(hours=1), 1.0)
        old = publish(cfg, catalog, V + dt.timedelta(minutes=30), V + dt.timedelta(hours=1), 1.0)
        new = publish(cfg, catalog, V + dt.timedelta(minutes=30), V + dt.timedelta(hours=1, minutes=30), 2.0)  # supersedes
        current = catalog.products(current_only=True)
    root = pystac.Catalog.from_file(str(cfg.product_dir / "stac" / "catalog.json"))
    items = {item.id: item for item in root.get_items(recursive=True)}
    assert set(items) == {Path(row.path).stem for row in current}  # one Item per current product, no more
    assert Path(old.products[0].path).stem not in items and Path(new.products[0].path).stem in items
    assert {c.id for c in root.get_children()} == {"nrt-ensemble", "nrt-summary", "nrt-accumulation_1h", "nrt-accumulation_3h",
                                                   "nrt-accumulation_6h"}

    ens = items[Path(new.products[0].path).stem]
    asset = ens.assets["data"]
    path = Path(asset.get_absolute_href())
    assert path == Path(new.products[0].path).resolve() and asset.extra_fields["file:checksum"] == "1220" + sha256_file(path)
    assert ens.datetime == V + dt.timedelta(minutes=30) and ens.properties["nrt:lead"] == new.products[0].lead
    assert ens.properties["proj:code"] == "EPSG:4326" and ens.properties["proj:shape"] == [10, 12]
    assert ens.bbox == pytest.approx([-94.5, 41.0, -93.9, 41.5])
    assert any("datacube" in uri for uri in ens.stac_extensions) and any("projection" in uri for uri in ens.stac_extensions)
    assert list(ens.properties["cube:dimensions"]) == ["time", "realization", "lat", "lon"]
    assert ens.properties["cube:variables"]["precipitation"]["dimensions"] == ["time", "realization", "lat", "lon"]

    three = next(i for i in items.values() if i.properties["nrt:kind"] == "accumulation_3h" and i.datetime == V)
    assert three.properties["start_datetime"] == "2024-06-01T10:00:00Z" and three.properties["end_datetime"] == "2024-06-01T13:00:00Z"
    assert json.loads((cfg.product_dir / "latest.json").read_text())["newest_valid_time"]  # latest.json stays
    assert not list((cfg.product_dir / "stac").rglob(".*"))  # no temp file left


def test_stac_rewrites_only_the_items_whose_product_changed(cfg):
    from nrt.products.stac import update_stac

    stac = cfg.product_dir / "stac"
    with Catalog.from_config(cfg, migrate=True) as catalog:
        publish(cfg, catalog, V, V + dt.timedelta(hours=1), 1.0)
        first = {p: p.stat().st_ino for p in stac.glob("*/item_*.json")}
        publish(cfg, catalog, V + dt.timedelta(minutes=30), V + dt.timedelta(hours=1), 1.0)
        assert {p: p.stat().st_ino for p in first} == first  # the first valid time's Items were kept, not rewritten
        stale = next(iter(first))
        data = json.loads(stale.read_text())
        data["assets"]["data"]["file:checksum"] = "1220" + "0" * 64  # as if its product file had been replaced
        stale.write_text(json.dumps(data))
        kept = {p: p.read_text() for p in stac.rglob("*.json")}
        update_stac(catalog, cfg.product_dir, publish_settings(cfg).latest_hours)
        assert stale.stat().st_ino != first[stale]
        updated = {p: p.read_text() for p in stac.rglob("*.json")}
        for path in stac.rglob("*.json"):
            path.unlink()
        update_stac(catalog, cfg.product_dir, publish_settings(cfg).latest_hours)
        fresh = {p: p.read_text() for p in stac.rglob("*.json")}
    assert updated == fresh  # kept Items and the catalog are exactly what a fresh build writes
    assert kept[stale] != fresh[stale] and sum(kept[p] != fresh[p] for p in fresh) == 1
