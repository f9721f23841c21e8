"""The live map page: a real headless browser loads it, moves the time slider and sees the overlay change."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from nrt.store import Catalog
from nrt.config import AlertArea, Basin
from nrt.grids import LatLonGrid
from nrt.io import sha256_file
from nrt.products import write_ensemble
from nrt.products.mapserver import MapData, make_server

UTC = dt.timezone.utc
GRID = LatLonGrid(0.05, 40.525, -96.475, 66, 132)
V = dt.datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
FIGURE = Path(__file__).resolve().parents[1] / "docs" / "figures" / "map_page.png"
AREA = AlertArea(name="des_moines", west=-94.0, south=41.3, east=-93.3, north=41.9, threshold_mmh=10.0, probability=0.5)
BASIN = Basin(name="raccoon", polygon=[(-95.2, 42.0), (-94.7, 42.55), (-94.2, 42.45), (-93.65, 41.6), (-94.1, 41.45)])


@pytest.fixture
def server(cfg):
    with Catalog.from_config(cfg, migrate=True) as catalog:
        y, x = np.mgrid[0:GRID.nlat, 0:GRID.nlon]
        for k in range(4):  # a storm moving east, one valid time per half hour
            cell = 25.0 * np.exp(-((x - 30 - 20 * k) ** 2 + (y - 30) ** 2) / 150.0)
            members = (cell[None, None] * np.linspace(0.6, 1.4, 5)[:, None, None, None]).astype(np.float32)
            valid = V + k * dt.timedelta(minutes=30)
            path = cfg.product_dir / f"e{k}.nc"
            write_ensemble(path, xr.DataArray(members, dims=("member", "time", "lat", "lon")), grid=GRID, valid_time=valid,
                           forecast_reference_time=V - dt.timedelta(hours=1), lead=2 + k)
            catalog.register_product("ensemble", valid, V + dt.timedelta(hours=3), 2 + k, 5, str(path), path.stat().st_size, sha256_file(path))
        run = catalog.start_run(V + dt.timedelta(hours=3))
        catalog.finish_run(run, "degraded", {}, degraded=["geosfp_missing"])
        httpd = make_server(MapData(catalog, [AREA], 10.0, basins=[BASIN]), port=0)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
        httpd.shutdown()
        httpd.server_close()


def status_of(url: str, method: str = "GET") -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_bad_requests_get_4xx_and_the_page_is_read_only(server):
    assert status_of(f"{server}/api/overlay/mean/2024-06-01T12:30Z.png") == 200
    assert status_of(f"{server}/api/overlay/mean/2030-01-01T00:00Z.png") == 404  # no product then
    assert status_of(f"{server}/api/overlay/mean/2024-13-45T99:00Z.png") == 400  # not a time
    assert status_of(f"{server}/api/overlay/members/2024-06-01T12:30Z.png") == 404
    assert status_of(f"{server}/static/../../nrt/config.py") == 404
    assert status_of(f"{server}/static/%2e%2e/mapserver.py") == 404
    assert status_of(f"{server}/api/state.json", method="POST") == 405
    assert status_of(f"{server}/api/state.json", method="DELETE") == 405


def chrome():
    pytest.importorskip("selenium", reason="selenium not installed (.ci/run installs it)")
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them where apt works)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,800"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def test_borders_carry_rivers_and_the_configured_basins(server):
    import json

    with urllib.request.urlopen(f"{server}/api/borders.geojson", timeout=30) as response:
        features = {f["properties"]["layer"]: f for f in json.load(response)["features"]}
    rivers = [point for line in features["rivers"]["geometry"]["coordinates"] for point in line]
    assert any(abs(lon + 90.66) < 0.1 and abs(lat - 42.5) < 0.1 for lon, lat in rivers)  # the Mississippi at Dubuque
    assert features["basin"]["properties"]["name"] == "raccoon"
    (ring,) = features["basin"]["geometry"]["coordinates"]
    assert ring[0] == ring[-1] == [-95.2, 42.0] and len(ring) == 6  # closed outline


def test_browser_moves_the_slider_and_the_overlay_follows(server):
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chrome()
    try:
        driver.get(server + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.execute_script(
            "const i = document.querySelector('img.leaflet-image-layer'); return i && i.complete && i.naturalWidth > 0"))
        first = driver.execute_script("return document.querySelector('img.leaflet-image-layer').src")
        assert first.endswith("/api/overlay/mean/2024-06-01T13:30:00Z.png")  # the newest valid time first
        assert "degraded (geosfp_missing)" in driver.find_element("id", "status").text
        assert "des_moines" in driver.find_element("id", "alerts").text
        assert driver.execute_script("return [...document.querySelectorAll('.leaflet-tooltip.basin')].map(t => t.textContent)") == ["raccoon"]
        assert driver.execute_script("return document.querySelectorAll('path.leaflet-interactive, svg path').length") > 3  # borders, box
        driver.execute_script("const s = document.getElementById('slider'); s.value = 0; s.dispatchEvent(new Event('input'))")
        wait.until(lambda d: d.execute_script("return document.querySelector('img.leaflet-image-layer').src") != first)
        moved = driver.execute_script("return document.querySelector('img.leaflet-image-layer').src")
        assert moved.endswith("/api/overlay/mean/2024-06-01T12:00:00Z.png")
        assert "2024-06-01T12:00:00Z" in driver.find_element("id", "valid").text
        wait.until(lambda d: d.execute_script("const i = document.querySelector('img.leaflet-image-layer'); return i.complete && i.naturalWidth > 0"))
        driver.execute_script("const s = document.getElementById('slider'); s.value = 2; s.dispatchEvent(new Event('input'))")
        wait.until(lambda d: d.execute_script("const i = document.querySelector('img.leaflet-image-layer'); return i.src.includes('13:00') && i.complete"))
        FIGURE.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(FIGURE))
    finally:
        driver.quit()
    assert FIGURE.stat().st_size > 10_000


def test_nrt_serve_answers_and_stops_cleanly_on_sigterm(tmp_path):
    # systemd stops the map service with SIGTERM: the command must close its socket and exit 0, not be killed.
    import signal
    import socket
    import subprocess
    import sys
    import time

    config = tmp_path / "nrt.toml"
    config.write_text(f'[general]\nworkdir = "{tmp_path / "work"}"\n')
    with Catalog.open(f"sqlite:///{tmp_path / 'work' / 'catalog.sqlite'}", migrate=True):
        pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "nrt.cli", "--config", str(config), "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status = status_of(f"http://127.0.0.1:{port}/")
                break
            except urllib.error.URLError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "slow start"
                time.sleep(0.2)
        assert status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/" in out
