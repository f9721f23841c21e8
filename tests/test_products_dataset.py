"""The dataset view: best-available product per valid time through the catalog, never mixing cycles."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import xarray as xr

from nrt.store import Catalog
from nrt.cli import main
from nrt.errors import CatalogError
from nrt.grids import LatLonGrid
from nrt.io import sha256_file
from nrt.products import write_ensemble
from nrt.products.dataset import open_best

UTC = dt.timezone.utc
GRID = LatLonGrid(0.05, 41.025, -94.475, 6, 8)
V = dt.datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
HALF = dt.timedelta(minutes=30)


def publish(cfg, catalog, valid, cycle, value) -> None:
    reference = cycle - dt.timedelta(hours=4)
    lead = int((valid - reference) / HALF)
    values = np.full((3, 1, *GRID.shape), value, np.float32)
    path = cfg.product_dir / f"e_{valid:%H%M}_c{cycle:%H%M}.nc"
    write_ensemble(path, xr.DataArray(values, dims=("member", "time", "lat", "lon")), grid=GRID, valid_time=valid,
                   forecast_reference_time=reference, lead=lead, quantize=False)
    catalog.register_product("ensemble", valid, cycle, lead, 3, str(path), path.stat().st_size, sha256_file(path))


def test_open_best_takes_each_valid_time_from_its_best_cycle_and_says_so(cfg, tmp_path, capsys):
    old, new = V + dt.timedelta(hours=3), V + dt.timedelta(hours=3, minutes=30)
    with Catalog.from_config(cfg, migrate=True) as catalog:
        for k in range(4):  # the old cycle covers 12:00 .. 13:30
            publish(cfg, catalog, V + k * HALF, old, 1.0)
        for k in (1, 2):  # the newer cycle, a smaller lead, replaces 12:30 and 13:00
            publish(cfg, catalog, V + k * HALF, new, 2.0)
        ds = open_best(catalog, V, V + 4 * HALF)
        with pytest.raises(CatalogError, match="no ensemble product"):
            open_best(catalog, V + dt.timedelta(days=1), V + dt.timedelta(days=1))
    assert ds["precipitation"].dims == ("time", "realization", "lat", "lon") and ds.sizes["time"] == 4
    assert list(ds["precipitation"].values[:, 0, 0, 0]) == [1.0, 2.0, 2.0, 1.0]
    cycles = [np.datetime64(c.replace(tzinfo=None), "ns") for c in (old, new, new, old)]
    assert list(ds["cycle_time"].values) == cycles and list(ds["lead"].values) == [2, 2, 3, 5]
    refs = ds["forecast_reference_time"].values
    assert refs[1] - refs[0] == np.timedelta64(30, "m")  # each time keeps its own cycle's reference
    assert ds.attrs["missing_valid_times"] == "2024-06-01T14:00:00Z"

    config_file = tmp_path / "nrt.toml"
    config_file.write_text(f'[general]\nworkdir = "{cfg.workdir}"\n')
    out = tmp_path / "best.nc"
    assert main(["--config", str(config_file), "products", "open", "--start", "2024-06-01T12:00Z", "--end", "2024-06-01T14:00Z",
                 "--out", str(out)]) == 0
    assert "4 valid times; missing: 2024-06-01T14:00:00Z" in capsys.readouterr().out
    with xr.open_dataset(out) as back:
        np.testing.assert_array_equal(back["precipitation"].values, ds["precipitation"].values)
        assert list(back["lead"].values) == [2, 2, 3, 5]
