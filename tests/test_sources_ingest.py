"""The generic ingest end to end: a local mirror server in the real layouts, a real SQLite catalog, `nrt ingest`."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from test_http import EMAIL, Handler, Server
from test_sources_geosfp import linear_prectot, linear_tqv, write_file
from test_sources_imerg import write_global

from nrt.store import Catalog
from nrt.cli import main
from nrt.grids import imerg_window, target_grid
from nrt.io import sha256_file
from nrt import sources
from nrt.sources import dem, dpr, geosfp, imerg, ingest, ingest_settings, local_path
from nrt.sources.http import Client

DPR_V07 = "2A.GPM.DPR.V9-20211125.20140308-S220950-E234217.000144.V07A.HDF5"
T = datetime(2024, 6, 1, 12, 10, tzinfo=timezone.utc)  # newest IMERG start S = 08:00, motion 07:00 07:30 08:00


class Mirror:
    """Serves a folder tree like the twin does: PPS (Basic auth, /text/ listings), NCCS and DEM files."""

    def __init__(self, root: Path):
        self.root = root
        self.server = Server(self.route)

    @property
    def url(self) -> str:
        return self.server.url

    def downloads(self, part: str) -> int:
        return sum(1 for path, _ in self.server.requests if part in path and "/text/" not in path)

    def route(self, handler: Handler):
        path = unquote(urlsplit(handler.path).path)
        if path.startswith("/pps/") and handler.basic_user() != (EMAIL, EMAIL):
            return lambda h: h.send(401, b"Unauthorized", "text/plain")
        if path.startswith("/pps/text/"):
            folder = self.root / "pps" / path[len("/pps/text/"):].strip("/")
            if not folder.is_dir():
                return lambda h: h.send(404, b"", "text/plain")
            rel = folder.relative_to(self.root / "pps").as_posix()
            lines = "".join(f"/{rel}/{p.name}\n" for p in sorted(folder.iterdir()) if not p.name.startswith("."))
            return lambda h: h.send(200, lines.encode(), "text/plain")
        file = self.root / path.lstrip("/")
        if ".." in path or not file.is_file():
            return lambda h: h.send(404, b"<html>Not Found</html>", "text/html")
        return lambda h: h.send(200, file.read_bytes())

    def stop(self):
        self.server.stop()


@pytest.fixture
def mirror(tmp_path):
    m = Mirror(tmp_path / "mirror")
    yield m
    m.stop()


@pytest.fixture
def setup(cfg, mirror, monkeypatch):
    cfg.sources.imerg.pps_url = f"{mirror.url}/pps"
    cfg.sources.dpr.pps_url = f"{mirror.url}/pps"
    cfg.sources.geosfp.url = f"{mirror.url}/nccs/datashare/gmao/geos-fp"
    cfg.sources.dem.url = f"{mirror.url}/dem/nrt_twin_dem.nc"
    cfg.sources.geosfp.slv_variables = ["TQV"]
    cfg.sources.http.read_timeout_s = 2
    cfg.sources.http.retries = 1
    cfg.sources.http.backoff_s = 0.01
    cfg.sources.http.backoff_max_s = 0.02
    cfg.secrets.pps_email = EMAIL
    catalog = Catalog.open(cfg.database_url, migrate=True)
    client = Client.from_config(cfg)
    yield cfg, catalog, client
    client.close()
    catalog.close()


def publish_imerg(mirror: Mirror, cfg, start: datetime, version="V07B", corrupt=False) -> Path:
    rf = imerg.parse_name(imerg.filename(start, version))
    path = mirror.root / "pps" / imerg.pps_relative_path(rf)
    path.parent.mkdir(parents=True, exist_ok=True)
    window = imerg_window(cfg.domain.box())
    write_global(path, np.full(window.grid.shape, 1.5, np.float32), cfg.domain.box(), version)
    if corrupt:  # keep the signature and the length, break everything after the superblock
        data = bytearray(path.read_bytes())
        data[100:] = b"\xff" * (len(data) - 100)
        path.write_bytes(bytes(data))
    return path


def test_imerg_ingest_downloads_registers_and_skips(setup, mirror, monkeypatch):
    cfg, catalog, client = setup
    starts = [T.replace(hour=7, minute=0), T.replace(hour=7, minute=30), T.replace(hour=8, minute=0)]
    publish_imerg(mirror, cfg, starts[0])
    publish_imerg(mirror, cfg, starts[1], version="V07C")
    publish_imerg(mirror, cfg, starts[1], version="V07B")  # both versions listed: the newer one wins
    result = ingest("imerg", ingest_settings(cfg), catalog, T, client)
    assert len(result.files) == 2 and result.bad == []
    assert len(result.missing) == 1 and imerg.filename(starts[2], "V07C") in result.missing[0]
    rows = catalog.granules("imerg", state="downloaded")
    assert [r.version for r in rows] == ["V07B", "V07C"]
    for row in rows:
        assert Path(row.path).is_file() and sha256_file(row.path) == row.sha256 and Path(row.path).stat().st_size == row.size
        assert Path(row.path) == local_path(cfg.data_dir, imerg.parse_name(row.name))
    ds = imerg.read_imerg(result.files, cfg.domain.box())
    assert ds.precipitation.shape[0] == 2 and float(ds.precipitation.mean()) == pytest.approx(1.5)

    # Nothing is downloaded again while the catalog holds the files with matching checksums, and files
    # untouched since they were registered are not even hashed...
    hashed = []
    monkeypatch.setattr(sources, "sha256_file", lambda path: hashed.append(Path(path).name) or sha256_file(path))
    before = mirror.downloads("/imerg/early/")
    again = ingest("imerg", ingest_settings(cfg), catalog, T, client)
    assert sorted(again.files) == sorted(result.files) and mirror.downloads("/imerg/early/") == before
    assert hashed == []
    # ...a file touched since is hashed once, kept as it still matches, and its new time recorded...
    stat = Path(rows[1].path).stat()
    os.utime(rows[1].path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert sorted(ingest("imerg", ingest_settings(cfg), catalog, T, client).files) == sorted(result.files)
    assert hashed == [rows[1].name] and mirror.downloads("/imerg/early/") == before
    assert catalog.get_granule("imerg", rows[1].name).mtime_ns == stat.st_mtime_ns + 10**9
    ingest("imerg", ingest_settings(cfg), catalog, T, client)
    assert hashed == [rows[1].name]
    # ...but a local file that no longer matches its checksum is fetched again.
    Path(rows[0].path).write_bytes(b"\x89HDF\r\n\x1a\n damaged")
    ingest("imerg", ingest_settings(cfg), catalog, T, client)
    assert mirror.downloads("/imerg/early/") == before + 1
    assert sha256_file(rows[0].path) == rows[0].sha256


def test_bad_granule_is_marked_and_not_retried_forever(setup, mirror):
    cfg, catalog, client = setup
    start = T.replace(hour=8, minute=0)
    publish_imerg(mirror, cfg, start, corrupt=True)
    name = imerg.filename(start, "V07B")
    dest = local_path(cfg.data_dir, imerg.parse_name(name))
    for attempt in range(1, cfg.sources.http.max_bad_attempts + 1):
        result = ingest("imerg", ingest_settings(cfg), catalog, T, client)
        assert len(result.bad) == 1 and result.bad[0].startswith(f"{name}: unreadable HDF5")
        row = catalog.get_granule("imerg", name)
        assert (row.state, row.attempts) == ("bad", attempt) and "truncated or corrupt" in row.reason
        assert not dest.exists() and not any(dest.parent.glob(".*"))  # nothing partial where readers look
    downloads = mirror.downloads(name)
    result = ingest("imerg", ingest_settings(cfg), catalog, T, client)
    assert mirror.downloads(name) == downloads  # given up
    assert "gave up after 3 attempts" in result.bad[0]


def test_dpr_ingest_takes_listed_swaths_in_the_lookback(setup, mirror, gpm_dir):
    cfg, catalog, client = setup
    folder = mirror.root / "pps" / dpr.PPS_FOLDER
    folder.mkdir(parents=True)
    recent = dpr.nrt_filename(T - timedelta(hours=2), T - timedelta(hours=1, minutes=30))
    old = dpr.nrt_filename(T - timedelta(hours=9), T - timedelta(hours=8, minutes=30))
    for name in (recent, old):
        shutil.copy(gpm_dir / DPR_V07, folder / name)  # real V07 FS content under NRT names
    (folder / "2A.GPM.DPR.V920211125.not-a-granule.RT-H5").write_bytes(b"x")
    result = ingest("dpr", ingest_settings(cfg), catalog, T, client)
    assert [p.name for p in result.files] == [recent] and result.missing == [] and result.bad == []
    swath = dpr.read_dpr(result.files[0])
    assert swath.rate.shape == (10, 10)


def test_geosfp_ingest_fetches_forecast_files_and_reports_missing(setup, mirror):
    cfg, catalog, client = setup
    cfg.timeline.imerg_latency_minutes = 30  # a short bridge: valid 11:30 and 12:00 -> hours 11:30, 12:30
    expected = geosfp.expected_files(geosfp.settings(cfg), T)
    assert len(expected) == 4
    base = mirror.root / "nccs/datashare/gmao/geos-fp"
    for rf in expected:
        if rf.start.hour == 12 and geosfp.collection_of(rf.name) == geosfp.FLX:
            continue  # not published yet
        path = base / rf.relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        func = {geosfp.SLV: {"TQV": linear_tqv}, geosfp.FLX: {"PRECTOT": linear_prectot}}[geosfp.collection_of(rf.name)]
        write_file(path, rf.start + timedelta(minutes=30), func)
    result = ingest("geosfp", ingest_settings(cfg), catalog, T, client)
    assert len(result.files) == 3 and result.bad == []
    assert len(result.missing) == 1 and "HTTP 404" in result.missing[0]
    assert {r.state for r in catalog.granules("geosfp")} == {"downloaded", "expected"}


def test_dem_from_the_server_and_from_a_local_path(setup, mirror, tmp_path):
    from test_sources_dem import relief, write_etopo

    cfg, catalog, client = setup
    source = mirror.root / "dem" / "nrt_twin_dem.nc"
    source.parent.mkdir(parents=True)
    write_etopo(source, -97.0, 40.0, 480, 960, 1 / 120, relief(480, 960))
    result = ingest("dem", ingest_settings(cfg), catalog, T, client)
    assert [p.name for p in result.files] == ["nrt_twin_dem.nc"] and result.files[0] != source
    local = tmp_path / "etopo_local.nc"
    shutil.copy(source, local)
    cfg.sources.dem.url = str(local)
    result = ingest("dem", ingest_settings(cfg), catalog, T, client)
    assert result.files == [local]  # registered in place, not copied
    assert catalog.get_granule("dem", "etopo_local.nc").path == str(local)
    ds = dem.load_dem(local, target_grid(cfg.domain.box()))
    assert np.isfinite(ds.elevation.values).all()


def test_unreachable_listing_counts_as_missing(setup):
    cfg, catalog, client = setup
    cfg.sources.imerg.pps_url = "http://127.0.0.1:9/pps"  # discard port: connection refused
    result = ingest("imerg", ingest_settings(cfg), catalog, T, client)
    assert result.files == [] and len(result.missing) == 3
    assert all("listing unavailable" in m for m in result.missing)


def test_cli_ingest_and_inspect(setup, mirror, tmp_path, capsys, monkeypatch):
    cfg, catalog, client = setup
    publish_imerg(mirror, cfg, T.replace(hour=8, minute=0))
    config = tmp_path / "nrt.toml"
    config.write_text(
        f'[general]\nworkdir = "{cfg.workdir}"\n'
        f'[sources.imerg]\npps_url = "{mirror.url}/pps"\n'
        "[sources.http]\nretries = 0\nbackoff_s = 0.01\n"
    )
    monkeypatch.setenv("NRT_PPS_EMAIL", EMAIL)
    assert main(["--config", str(config), "ingest", "--source", "imerg", "--time", "2024-06-01T12:10:00Z"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["source"] == "imerg" and len(line["files"]) == 1 and len(line["missing"]) == 2
    assert main(["--config", str(config), "inspect", line["files"][0]]) == 0
    facts = json.loads(capsys.readouterr().out.strip())
    assert facts["source"] == "imerg" and facts["version"] == "V07B" and facts["shape"] == [1, 3600, 1800]
    assert facts["start"] == "2024-06-01T08:00:00Z" and facts["min"] == facts["max"] == 1.5


def give_up_on(cfg, catalog, client, mirror, start) -> str:
    publish_imerg(mirror, cfg, start, corrupt=True)
    name = imerg.filename(start, "V07B")
    for _ in range(cfg.sources.http.max_bad_attempts):
        ingest("imerg", ingest_settings(cfg), catalog, T, client)
    assert "gave up" in ingest("imerg", ingest_settings(cfg), catalog, T, client).bad[0]
    return name


def good_copy(mirror, cfg, start, value: float = 1.5) -> None:
    path = publish_imerg(mirror, cfg, start)
    window = imerg_window(cfg.domain.box())
    values = np.random.default_rng(0).gamma(0.5, value, window.grid.shape).astype(np.float32)
    write_global(path, values, cfg.domain.box())  # a different size from the corrupt copy


def test_a_refused_granule_is_fetched_again_when_the_server_replaces_it(setup, mirror):
    cfg, catalog, client = setup
    start = T.replace(hour=8, minute=0)
    name = give_up_on(cfg, catalog, client, mirror, start)
    downloads = mirror.downloads(name)
    good_copy(mirror, cfg, start)
    result = ingest("imerg", ingest_settings(cfg), catalog, T, client)
    assert mirror.downloads(name) == downloads + 1 and result.bad == []
    assert catalog.get_granule("imerg", name).state == "downloaded"


def test_a_bad_mark_expires_after_bad_retry_hours(setup, mirror):
    import time

    cfg, catalog, client = setup
    cfg.sources.http.bad_retry_hours = 0.5 / 3600
    start = T.replace(hour=8, minute=0)
    name = give_up_on(cfg, catalog, client, mirror, start)  # the same bytes stay on the server
    row = catalog.get_granule("imerg", name)
    assert row.retry_after is not None and row.remote_tag.startswith("size=")
    time.sleep(0.6)
    downloads = mirror.downloads(name)
    assert "gave up" not in " ".join(ingest("imerg", ingest_settings(cfg), catalog, T, client).bad)  # tried, and refused again
    assert mirror.downloads(name) == downloads + 1
    assert catalog.get_granule("imerg", name).retry_after > row.retry_after  # and the next back-off started


def test_ingest_retry_bad_clears_the_marks(setup, mirror, tmp_path, capsys, monkeypatch):
    cfg, catalog, client = setup
    monkeypatch.setenv("NRT_PPS_EMAIL", EMAIL)
    start = T.replace(hour=8, minute=0)
    name = give_up_on(cfg, catalog, client, mirror, start)
    config = tmp_path / "nrt.toml"
    config.write_text(
        f'[general]\nworkdir = "{cfg.workdir}"\n[sources.imerg]\npps_url = "{cfg.sources.imerg.pps_url}"\n'
        "[sources.http]\nretries = 1\nbackoff_s = 0.01\n"
    )
    downloads = mirror.downloads(name)
    assert main(["--config", str(config), "ingest", "--source", "imerg", "--time", T.isoformat(), "--retry-bad"]) == 1
    out, err = capsys.readouterr()
    assert "imerg: cleared 1 bad mark(s)" in err
    assert mirror.downloads(name) == downloads + 1  # downloaded again (and, still corrupt, marked once more)
    assert catalog.get_granule("imerg", name).attempts == 1


def test_downloads_left_when_the_ingest_deadline_passes_are_reported_missing(setup, mirror):
    cfg, catalog, client = setup
    for k in range(3):
        publish_imerg(mirror, cfg, T.replace(hour=7, minute=0) + k * timedelta(minutes=30))
    cfg.sources.http.ingest_deadline_s = 1e-6
    result = ingest("imerg", ingest_settings(cfg), catalog, T, client)
    assert result.files == [] and len(result.missing) == 3
    assert all("ingest deadline of 1e-06 s reached" in line for line in result.missing)


def test_nrt_ingest_into_a_full_data_directory_is_one_line_and_exit_2(setup, mirror, tmp_path, capsys, monkeypatch):
    from full_disk import full_disk

    cfg, catalog, client = setup
    monkeypatch.setenv("NRT_PPS_EMAIL", EMAIL)
    publish_imerg(mirror, cfg, T.replace(hour=8, minute=0))
    config = tmp_path / "nrt.toml"
    config.write_text(f'[general]\nworkdir = "{cfg.workdir}"\n[sources.imerg]\npps_url = "{cfg.sources.imerg.pps_url}"\n')
    with full_disk(cfg.data_dir / "imerg"):
        code = main(["--config", str(config), "ingest", "--source", "imerg", "--time", T.isoformat()])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err.startswith(f"nrt: error: {cfg.data_dir / 'imerg'}") and err.endswith("No space left on device"), err


def test_server_errors_are_warnings_and_nrt_ingest_exits_3(setup, mirror, tmp_path, capsys, monkeypatch):
    """An HTTP 500 used to be logged at INFO as "not available yet", and `nrt ingest` exited 0."""
    cfg, catalog, client = setup
    monkeypatch.setenv("NRT_PPS_EMAIL", EMAIL)
    for k in range(3):
        publish_imerg(mirror, cfg, T.replace(hour=7, minute=0) + k * timedelta(minutes=30))
    broken = imerg.filename(T.replace(hour=8, minute=0), "V07B")
    serve_normally = mirror.server.route
    mirror.server.route = lambda h: (lambda h: h.send(500, b"oops", "text/plain")) if broken in h.path else serve_normally(h)
    config = tmp_path / "nrt.toml"
    config.write_text(
        f'[general]\nworkdir = "{cfg.workdir}"\n[sources.imerg]\npps_url = "{cfg.sources.imerg.pps_url}"\n'
        "[sources.http]\nretries = 1\nbackoff_s = 0.01\n"
    )
    assert main(["--config", str(config), "ingest", "--source", "imerg", "--time", T.isoformat()]) == 3
    out, err = capsys.readouterr()
    line = json.loads(out.strip())
    assert len(line["files"]) == 2 and line["errors"] == [f"{broken}: HTTP 500 (gave up after 2 attempts)"]
    assert f"WARNING nrt.sources: {broken}: download failed: HTTP 500" in " ".join(err.split())
    assert "not available yet" not in err
