"""Training sets: the pure array core, and the catalog edge built from a real twin tree (real files, SQLite)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import h5py
import numpy as np
import pytest

from model_helpers import GRID, write_synthetic_set
from nrt import config
from nrt.errors import DataError
from nrt.model.conditioning import ChannelSet
from nrt.model.dataset import Sample, read_training_set, write_training_set


def test_training_set_round_trip_and_nan_outside_the_mask(tmp_path):
    path = write_synthetic_set(tmp_path / "set.safetensors", count=3)
    data = read_training_set(path)
    assert data.channels.shape == (3, 5, *GRID.shape) and data.lead.tolist() == [0, 1, 2]
    assert np.isnan(data.truth[~data.mask]).all() and np.isfinite(data.truth[data.mask]).all()
    assert data.channel_set == ChannelSet(position=True) and data.provenance == {"kind": "synthetic test set"}
    assert b"pickle" not in path.read_bytes()[:200]  # a safetensors header, nothing executable


def test_bad_samples_and_files_are_one_line_errors(tmp_path):
    channels = ChannelSet(position=False)
    good = Sample(np.zeros((1, 4, 6), np.float32), np.zeros((4, 6), np.float32), np.ones((4, 6), bool))
    bad = Sample(np.zeros((2, 4, 6), np.float32), np.zeros((4, 6), np.float32), np.ones((4, 6), bool))
    with pytest.raises(DataError, match="sample 1 has shapes"):
        write_training_set(tmp_path / "x.safetensors", [good, bad], channels)
    with pytest.raises(DataError, match="no training samples"):
        write_training_set(tmp_path / "x.safetensors", [], channels)
    (tmp_path / "junk.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(DataError) as exc:
        read_training_set(tmp_path / "junk.safetensors")
    assert "\n" not in str(exc.value)


def _bilinear_2x(coarse: np.ndarray) -> np.ndarray:
    """Independent cell-centred bilinear 2x upsampling with clamped edges (numpy, not torch)."""
    def axis(a, ax):
        n = a.shape[ax]
        lo = np.take(a, np.clip(np.arange(n) - 1, 0, n - 1), axis=ax)
        hi = np.take(a, np.clip(np.arange(n) + 1, 0, n - 1), axis=ax)
        even, odd = 0.75 * a + 0.25 * lo, 0.75 * a + 0.25 * hi
        return np.stack([even, odd], axis=ax + 1).reshape(*a.shape[:ax], 2 * n, *a.shape[ax + 1:])
    return axis(axis(coarse, 0), 1)


@pytest.mark.slow
def test_build_from_catalog_collocates_a_twin_overpass_with_imerg_and_nowcast_inputs(tmp_path, capsys):
    from nrt.store import Catalog
    from nrt.cli import main
    from nrt.grids import imerg_window
    from nrt.twin.generate import generate
    from nrt.twin.spec import TwinSpec

    cfg = config.from_dict({"general": {"workdir": str(tmp_path / "work")}})
    # 12:02-12:32 UTC the twin's DPR swath crosses Iowa; the leads need IMERG back to 10:00 plus motion granules
    generate(TwinSpec(cfg.domain.box(), datetime(2024, 6, 1, 9, tzinfo=timezone.utc), datetime(2024, 6, 1, 13, tzinfo=timezone.utc), 7), tmp_path / "twin")
    conf = tmp_path / "c.toml"
    conf.write_text(f'[general]\nworkdir = "{tmp_path / "work"}"\n[train]\nleads = [0, 3]\n')
    out = tmp_path / "set.safetensors"
    assert main(["--config", str(conf), "train", "--build-only", "--dataset", str(out), "--register-tree", str(tmp_path / "twin"),
                 "--start", "2024-06-01T11:00Z", "--end", "2024-06-01T13:00Z"]) == 0
    with Catalog.from_config(cfg) as catalog:  # the twin's truth file is no source's granule and was skipped
        assert {g.source for g in catalog.granules()} == {"imerg", "dpr", "geosfp", "dem"}
    data = read_training_set(out)
    assert data.lead.tolist() == [0, 3] and data.times == ["2024-06-01T12:00:00+00:00"] * 2
    names = data.channel_set.names()
    assert names[:3] == ["precip", "precip_random_error", "geosfp_TQV"] and len(names) == 15
    assert names[-3:] == ["has_random_error", "has_geosfp", "has_dem"] and "sin_lat" not in names
    assert np.isfinite(data.channels).all() and np.all(data.channels[:, -3:] == 1.0)
    assert data.mask[0].sum() >= 200 and np.array_equal(data.mask[0], data.mask[1])

    # lead 0's precipitation channel is the 12:00 IMERG granule, read here straight from the HDF5 file
    granule = next((tmp_path / "twin").rglob("3B-HHR-E.MS.MRG.3IMERG.20240601-S120000-*.RT-H5"))
    window = imerg_window(cfg.domain.box())
    with h5py.File(granule) as h5:
        raw = h5["Grid/precipitation"][0, window.lon_slice, window.lat_slice].T.astype(np.float64)
    raw[raw < 0] = np.nan
    np.testing.assert_allclose(data.channels[0, 0], _bilinear_2x(raw), rtol=1e-5, atol=1e-6)
    # lead 3 is a nowcast from 10:30, not the 12:00 granule
    assert not np.allclose(data.channels[1, 0], data.channels[0, 0])

    # One assembly: the same valid time assembled by the pipeline's path (bridge, GEOS-FP, DEM helpers) gives
    # the very arrays of the training-set builder's path.
    _assert_pipeline_assembles_as_the_builder(cfg, tmp_path / "twin", data.channels[0])


def _assert_pipeline_assembles_as_the_builder(cfg, tree, built):
    from nrt.bridge import bridge, geosfp_at
    from nrt.grids import target_grid
    from nrt.model.assemble import dem_cache_dir, geosfp_forecast_init, imerg_variables
    from nrt.model.conditioning import Conditioning, raw_channels
    from nrt.model.dataset import channel_set_for
    from nrt.sources import geosfp, imerg
    from nrt.sources.dem import load_dem

    valid = datetime(2024, 6, 1, 12, tzinfo=timezone.utc)
    cfg = config.from_dict({**cfg.model_dump(mode="json", exclude={"general"}), "general": {"workdir": str(cfg.workdir)},
                            "nowcast": {"members": 1}})
    latency = timedelta(minutes=cfg.timeline.imerg_latency_minutes)
    cycle = valid + latency
    files = sorted((p for p in tree.rglob("3B-HHR-E.*") if p.suffix == ".RT-H5"), key=lambda p: imerg.parse_name(p.name).start)
    files = [p for p in files if imerg.parse_name(p.name).start <= valid]
    made = bridge(files, cycle, domain=cfg.domain.box(), latency=latency, settings=cfg.nowcast, members=cfg.nowcast.members,
                  seed=cfg.nowcast.seed, variables=imerg_variables(cfg))
    first = made.valid_times[0]
    assert (first.valid, first.lead) == (valid, 0)
    init = geosfp_forecast_init(cfg, valid)
    by_hour = {}
    for path in tree.rglob("GEOS.fp.fcst.*.nc4"):
        match = geosfp.FILE_PATTERN.fullmatch(path.name)
        if datetime.strptime(match["init"], "%Y%m%d_%H").replace(tzinfo=timezone.utc) == init:
            rf = geosfp.parse_name(path.name)
            by_hour.setdefault(rf.start + (rf.end - rf.start) / 2, []).append(path)
    grid = target_grid(cfg.domain.box())
    dem = load_dem(next(tree.rglob("*dem*.nc")), grid, dem_cache_dir(cfg))
    variables = [*cfg.sources.geosfp.slv_variables, *cfg.sources.geosfp.flx_variables]
    geos, why = geosfp_at(by_hour, valid, grid, variables, cfg.sources.geosfp.enabled)
    cond = Conditioning(first.coarse, grid, first.lead, first.random_error, geos, dem)
    served = raw_channels(cond, channel_set_for(cfg))[0]
    assert why is None  # only the nowcast may be degraded: its wider window is partly off the twin
    np.testing.assert_array_equal(served, built)
