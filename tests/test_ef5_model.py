"""EF5 end to end: gap-filled export from the catalog, the control file `nrt export ef5 --control` writes,
and the real EF5 model (built from ../shared/tools) running it on a tiny synthetic basin."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr

from conftest import SHARED_DATA
from nrt.store import Catalog
from nrt.cli import main
from nrt.grids import LatLonGrid
from nrt.io import sha256_file
from nrt.products import write_ensemble
from nrt.errors import NrtError
from nrt.products.ef5 import control_file, export_range
from nrt.timeline import HALF_HOUR

UTC = dt.timezone.utc
GRID = LatLonGrid(0.05, 41.025, -94.475, 8, 10)
FIRST = dt.datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
STEPS = 9
MEMBER_RATES = (2.0, 8.0, 20.0)  # mm/h while it rains: members differ, so discharge must too
EF5_TARBALL = "EF5-d71621b.tar.gz"


@pytest.fixture
def catalog(cfg):
    with Catalog.from_config(cfg, migrate=True) as cat:
        yield cat


def rain_values(step: int) -> np.ndarray:
    """Rain for the first 4 half hours, then dry; member m rains MEMBER_RATES[m] mm/h."""
    rate = np.array(MEMBER_RATES if step < 4 else (0.0,) * len(MEMBER_RATES), np.float32)
    return np.broadcast_to(rate[:, None, None, None], (len(rate), 1, *GRID.shape)).copy()


def register(cfg, catalog, valid: dt.datetime, cycle: dt.datetime, values: np.ndarray) -> Path:
    reference = cycle - dt.timedelta(hours=4)
    lead = int((valid - reference) / HALF_HOUR)
    path = cfg.product_dir / f"ens_{valid:%H%M}_c{cycle:%H%M}.nc"
    write_ensemble(path, xr.DataArray(values, dims=("member", "time", "lat", "lon")), grid=GRID, valid_time=valid,
                   forecast_reference_time=reference, lead=lead, quantize=False)
    catalog.register_product("ensemble", valid, cycle, lead, values.shape[0], str(path), path.stat().st_size, sha256_file(path))
    return path


def publish_period(cfg, catalog, *, hole_at: int | None = None, skip: int | None = None) -> None:
    """Best products from the newest cycle; at `hole_at` the best one lacks a block that an older cycle has."""
    newest, older = FIRST + 4 * dt.timedelta(hours=1), FIRST + 3 * dt.timedelta(hours=1)
    for k in range(STEPS):
        if k == skip:
            continue
        valid = FIRST + k * HALF_HOUR
        values = rain_values(k)
        if k == hole_at:
            register(cfg, catalog, valid, older, values)
            values = values.copy()
            values[:, :, :3, :4] = np.nan
        register(cfg, catalog, valid, newest, values)


def test_export_fills_nodata_from_an_older_cycle_and_reports_missing_half_hours(cfg, catalog, tmp_path):
    publish_period(cfg, catalog, hole_at=2, skip=6)
    result = export_range(catalog, FIRST, FIRST + (STEPS - 1) * HALF_HOUR, tmp_path / "ef5")
    assert result.filled == {FIRST + 2 * HALF_HOUR: 3 * 3 * 4}  # 3 members x 3 x 4 cells came from the older cycle
    assert result.missing == [FIRST + 6 * HALF_HOUR] and result.nodata == {}
    assert len(result.written) == 3 * (STEPS - 1) and result.members == [0, 1, 2]
    filled = tifffile.imread(tmp_path / "ef5/member_02/prcp.202406011330.tif")
    assert (filled == MEMBER_RATES[2]).all()  # no nodata left, the older cycle's values
    gaps = (tmp_path / "ef5" / "GAPS.txt").read_text()
    assert "2024-06-01T15:00:00Z: no ensemble product" in gaps
    with pytest.raises(NrtError, match="1 half hour.*2024-06-01T15:00:00Z.*zero rain"):
        control_file(tmp_path / "ef5", result.members, FIRST, FIRST + 8 * HALF_HOUR, output_dir=tmp_path / "out",
                     pet_file=tmp_path / "pet.tif", missing=result.missing)


def test_cli_exits_1_and_names_every_gap(cfg, catalog, tmp_path, capsys):
    publish_period(cfg, catalog, skip=3)
    config_file = tmp_path / "nrt.toml"
    config_file.write_text(f'[general]\nworkdir = "{cfg.workdir}"\n')
    code = main(["--config", str(config_file), "export", "ef5", "--valid", "2024-06-01T12:00Z", "--until", "2024-06-01T16:00Z",
                 "--out", str(tmp_path / "ef5"), "--control", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert code == 2 and "2024-06-01T13:30:00Z" in err and "zero rain" in err  # the control file is refused
    code = main(["--config", str(config_file), "export", "ef5", "--valid", "2024-06-01T12:00Z", "--until", "2024-06-01T16:00Z",
                 "--out", str(tmp_path / "ef5"), "--control", str(tmp_path / "run"), "--allow-gaps"])
    out, err = capsys.readouterr()
    assert code == 1 and "GAP 2024-06-01T13:30:00Z: no ensemble product" in err
    assert (tmp_path / "run" / "control.txt").is_file() and "wrote 24 GeoTIFFs" in out


# ------------------------------------------------------------------------------------------- real EF5


def ef5_binary(tmp_path_factory) -> Path:
    """The EF5 binary, built once from ../shared/tools and cached ($NRT_EF5_CACHE, default ~/.cache/nrt)."""
    cache = Path(os.environ.get("NRT_EF5_CACHE", Path.home() / ".cache" / "nrt")) / EF5_TARBALL.removesuffix(".tar.gz")
    binary = cache / "ef5"
    if binary.is_file():
        return binary
    tarball = SHARED_DATA.parent / "tools" / EF5_TARBALL
    if not tarball.is_file():
        pytest.skip(f"EF5 source {tarball} is absent (it ships beside the checkout, in ../shared/tools)")
    missing = [tool for tool in ("autoreconf", "make", "g++") if shutil.which(tool) is None]
    if missing or not Path("/usr/include/geotiff").is_dir():
        pytest.skip(f"cannot build EF5: {' '.join(missing) or 'libgeotiff-dev'} missing "
                    "(apt-get install build-essential autoconf automake libtiff-dev libgeotiff-dev)")
    build = tmp_path_factory.mktemp("ef5build")
    with tarfile.open(tarball) as tar:
        tar.extractall(build, filter="data")
    src = next(build.iterdir())
    # ../shared/tools/README.md: -Wno-error because GCC 12 turns a format-overflow warning into an error.
    for command in (["autoreconf", "--force", "--install"], ["./configure"], ["make", f"-j{os.cpu_count() or 1}", "CXXFLAGS=-g -O2 -Wno-error"]):
        done = subprocess.run(command, cwd=src, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, f"{' '.join(command)} failed: {done.stderr[-2000:]}"
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "bin" / "ef5", binary)
    return binary


def write_asc(path: Path, values: np.ndarray, nodata: float = -9999) -> Path:
    """An ESRI ASCII grid on GRID (rows north first), as EF5's AscGrid reads it."""
    west, south, _, _ = GRID.extent
    header = f"ncols {GRID.nlon}\nnrows {GRID.nlat}\nxllcorner {west}\nyllcorner {south}\ncellsize {GRID.res}\nNODATA_value {nodata}\n"
    body = "\n".join(" ".join(f"{v:g}" for v in row) for row in values)
    path.write_text(header + body + "\n")
    return path


def synthetic_basin(folder: Path) -> tuple[Path, Path, Path, tuple[float, float]]:
    """Every cell drains east along its row to the last column, which drains south to the outlet (south-east cell)."""
    rows, cols = GRID.shape
    ddm = np.ones((rows, cols))  # ESRI coding: 1 east, 4 south
    ddm[:, -1] = 4
    fam = np.tile(np.arange(1, cols + 1, dtype=float), (rows, 1))  # counts the cell itself
    fam[:, -1] = cols * np.arange(1, rows + 1)  # north to south, collecting every row
    dem = 300 + 2.0 * (cols - 1 - np.arange(cols))[None, :] + 1.0 * (rows - 1 - np.arange(rows))[:, None]  # falls east and south
    outlet = (float(GRID.lons[-1]), float(GRID.lats[0]))  # south-east cell centre
    folder.mkdir(parents=True, exist_ok=True)
    return write_asc(folder / "dem.asc", dem), write_asc(folder / "ddm.asc", ddm), write_asc(folder / "fam.asc", fam), outlet


def read_timeseries(path: Path) -> dict[str, np.ndarray]:
    lines = [line.split(",") for line in path.read_text().splitlines() if line.strip()]
    header = [h.strip() for h in lines[0]]
    return {name: np.array([row[i] for row in lines[1:]]) for i, name in enumerate(header)}


def test_real_ef5_reads_every_member_and_half_hour_and_discharge_follows_the_rain(cfg, catalog, tmp_path, tmp_path_factory, capsys):
    binary = ef5_binary(tmp_path_factory)
    publish_period(cfg, catalog, hole_at=1)
    config_file = tmp_path / "nrt.toml"
    config_file.write_text(f'[general]\nworkdir = "{cfg.workdir}"\n')
    dem, ddm, fam, outlet = synthetic_basin(tmp_path / "basin")
    run_dir = tmp_path / "run"
    code = main(["--config", str(config_file), "export", "ef5", "--valid", "2024-06-01T12:00Z", "--until", "2024-06-01T16:00Z",
                 "--out", str(tmp_path / "ef5"), "--control", str(run_dir), "--dem", str(dem), "--ddm", str(ddm), "--fam", str(fam),
                 f"--outlet={outlet[0]},{outlet[1]}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    control = (run_dir / "control.txt").read_text()
    assert "<" not in control  # no placeholder left once the basin is given

    done = subprocess.run([str(binary), str(run_dir / "control.txt")], cwd=run_dir, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "Missing precip" not in log and "Missing PET" not in log
    peaks, runoff = [], []
    for m, rate in enumerate(MEMBER_RATES):
        series = list((run_dir / "output" / f"member_{m:02d}").glob("ts.outlet.*.csv"))
        assert len(series) == 1, log[-2000:]
        ts = read_timeseries(series[0])
        precip = ts["Precip(mm h^-1)"].astype(float)
        discharge = ts["Discharge(m^3 s^-1)"].astype(float)
        fast_flow = ts["Fast Flow(mm*1000)"].astype(float)
        assert len(precip) == STEPS  # every half hour was a model step
        np.testing.assert_allclose(precip, [rate if k < 4 else 0.0 for k in range(STEPS)], rtol=1e-4)  # read, not zeros
        assert (fast_flow[:4] > 0).all() and (fast_flow[4:] == 0).all()  # runoff while it rains, none after
        peaks.append(discharge.max())
        runoff.append(fast_flow[:4].sum())
    # Routing across this 40 km basin takes hours: the heaviest member's flood reaches the outlet within
    # the 4.5 h, rising step after step; lighter members' discharge stays below the CSV's 0.01 m3/s.
    heavy = read_timeseries(next((run_dir / "output" / "member_02").glob("ts.outlet.*.csv")))["Discharge(m^3 s^-1)"].astype(float)
    assert heavy[0] == 0 and heavy[-1] > 0.5 and (np.diff(heavy[3:]) > 0).all()
    assert runoff[0] < runoff[1] < runoff[2] and peaks[0] <= peaks[1] < peaks[2]  # more rain, more runoff and discharge
