"""The twin's HTTP mirror: PPS Basic auth and text listings, Earthdata Login at GES DISC, HTML indexes,
correct lengths, and nothing served from outside the tree."""

from __future__ import annotations

import base64
import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from nrt.config import HttpConfig
from nrt.errors import ConfigError, DataError
from nrt.sources import geosfp, http as source_http, imerg
from nrt.sources.http import Client, Credentials
from nrt.twin.server import serve_in_thread

EMAIL = "someone@example.org"
IMERG_NAME = "3B-HHR-E.MS.MRG.3IMERG.20240601-S120000-E122959.0720.V07B.RT-H5"
DPR_NAME = "2A.GPM.DPR.V920211125.20240601-S120257-E123257.V07A.RT-H5"
GEOS_DIR = "nccs/datashare/gmao/geos-fp/forecast/Y2024/M06/D01/H12"
GEOS_NAME = "GEOS.fp.fcst.tavg1_2d_slv_Nx.20240601_12+20240601_1230.V01.nc4"
GESDISC_FILE = "gesdisc/data/GPM_L3/GPM_3IMERGHHE.07/2024/153/" + IMERG_NAME.replace(".RT-H5", ".HDF5")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mirror")
    files = {
        f"pps/imerg/early/202406/{IMERG_NAME}": b"\x89HDF\r\n\x1a\n" + os.urandom(3000),
        f"pps/radar/DprL2/{DPR_NAME}": b"\x89HDF\r\n\x1a\n" + b"d" * 500,
        f"{GEOS_DIR}/{GEOS_NAME}": b"\x89HDF\r\n\x1a\n" + b"g" * 700,
        GESDISC_FILE: b"\x89HDF\r\n\x1a\n" + b"e" * 300,
        "dem/nrt_twin_dem.nc": b"\x89HDF\r\n\x1a\n" + b"z" * 100,
        f"pps/imerg/early/202406/.{IMERG_NAME}.part-1-abcd": b"half written",
        "dem/.secret": b"hidden",
        "truth/nrt_twin_truth_20240601.nc": b"not on any real server",
        "twin.json": b"{}",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    outside = tmp_path_factory.mktemp("outside") / "private.txt"
    outside.write_bytes(b"private")
    (root / "dem" / "escape.nc").symlink_to(outside)
    return root


@pytest.fixture(scope="module")
def server(tree):
    srv, url = serve_in_thread(tree)
    yield url
    srv.stop()


def raw_get(url: str, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """A request with the path exactly as given (requests would normalise '..' away)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_pps_needs_basic_auth_with_the_same_email_as_user_and_password(server, tree):
    url = f"{server}/pps/imerg/early/202406/{IMERG_NAME}"
    refused = requests.get(url, timeout=5)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
    for auth in [(EMAIL, "other@example.org"), ("someone", "someone"), ("", ""), ("a@b", "a@b")]:
        assert requests.get(url, auth=auth, timeout=5).status_code == 401, auth
    ok = requests.get(url, auth=(EMAIL, EMAIL), timeout=5)
    body = (tree / "pps/imerg/early/202406" / IMERG_NAME).read_bytes()
    assert ok.status_code == 200 and ok.content == body and int(ok.headers["Content-Length"]) == len(body)
    head = requests.head(url, auth=(EMAIL, EMAIL), timeout=5)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(body) and head.content == b""


def test_pps_text_listing_gives_one_server_path_per_line(server):
    auth = (EMAIL, EMAIL)
    listing = requests.get(f"{server}/pps/text/imerg/early/202406/", auth=auth, timeout=5)
    assert listing.status_code == 200 and listing.headers["Content-Type"].startswith("text/plain")
    assert listing.text == f"/imerg/early/202406/{IMERG_NAME}\n"  # the temp file is not listed
    assert source_http.parse_pps_listing(listing.text, "imerg/early/202406", imerg.FILE_PATTERN) == [IMERG_NAME]
    dpr_listing = requests.get(f"{server}/pps/text/radar/DprL2/", auth=auth, timeout=5)
    assert dpr_listing.text.splitlines() == [f"/radar/DprL2/{DPR_NAME}"]
    assert requests.get(f"{server}/pps/text/imerg/early/202407/", auth=auth, timeout=5).status_code == 404
    assert requests.get(f"{server}/pps/text/imerg/early/202406/", timeout=5).status_code == 401


def test_open_mounts_have_html_indexes_the_ingest_parser_reads(server, tree):
    folder = f"{server}/{GEOS_DIR}/"
    index = requests.get(folder, timeout=5)
    assert index.status_code == 200 and index.headers["Content-Type"].startswith("text/html")
    assert source_http.parse_html_listing(index.text, folder, geosfp.FILE_PATTERN) == [GEOS_NAME]
    moved = requests.get(folder.rstrip("/"), allow_redirects=False, timeout=5)
    assert moved.status_code == 301 and moved.headers["Location"].endswith("/H12/")
    dem = requests.get(f"{server}/dem/", timeout=5)
    assert "nrt_twin_dem.nc" in dem.text and ".secret" not in dem.text
    data = requests.get(f"{server}/{GEOS_DIR}/{GEOS_NAME}", timeout=5)
    assert data.content == (tree / GEOS_DIR / GEOS_NAME).read_bytes()
    assert requests.get(f"{server}/{GEOS_DIR}/missing.nc4", timeout=5).status_code == 404


@pytest.mark.parametrize("path", [
    "/dem/../twin.json", "/dem/%2e%2e/twin.json", "/dem/..%2ftwin.json", "/dem/.secret", "/dem/escape.nc",
    "/truth/nrt_twin_truth_20240601.nc", "/twin.json", "/", "/dem/nrt_twin_dem.nc%00.txt",
    f"/pps/imerg/early/202406/.{IMERG_NAME}.part-1-abcd", "/pps/../twin.json",
])
def test_nothing_outside_the_mounts_is_served(server, path):
    token = base64.b64encode(f"{EMAIL}:{EMAIL}".encode()).decode()
    status, headers, body = raw_get(server, path, {"Authorization": f"Basic {token}"})
    assert status == 404 and int(headers["Content-Length"]) == len(body)
    assert b"private" not in body and b"{}" != body


def test_gesdisc_goes_through_earthdata_login_with_the_real_client(server, tree, tmp_path):
    url = f"{server}/{GESDISC_FILE}"
    assert requests.get(url, timeout=5).status_code == 401  # redirected to the login, which wants credentials
    hop = requests.get(url, allow_redirects=False, timeout=5)
    assert hop.status_code == 302 and "/urs/oauth/authorize" in hop.headers["Location"]
    host = urlsplit(server).netloc
    credentials = Credentials(
        earthdata_username="user", earthdata_password="pass", login_host=host,
        earthdata_prefixes=(f"{server}/gesdisc/data/GPM_L3",),
    )
    with Client(HttpConfig(retries=0), credentials) as client:
        dest = client.download(url, tmp_path / "granule.HDF5")
        assert Path(dest).read_bytes() == (tree / GESDISC_FILE).read_bytes()
        again = client.session.get(url, timeout=5)  # the session cookie now goes straight through
        assert again.status_code == 200 and not again.history
    assert requests.get(url, headers={"Authorization": "Bearer token"}, timeout=5).status_code == 200


def test_bad_roots_and_busy_ports_are_one_line_errors(tree, tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        serve_in_thread(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a twin mirror tree"):
        serve_in_thread(tmp_path / "empty")
    srv, url = serve_in_thread(tree)
    try:
        with pytest.raises(ConfigError, match="cannot listen"):
            serve_in_thread(tree, port=urlsplit(url).port)
    finally:
        srv.stop()


def test_twin_serve_command_serves_until_terminated(tree):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nrt.cli", "twin", "serve", "--root", str(tree), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/dem/nrt_twin_dem.nc", timeout=1)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "slow start"
                time.sleep(0.2)
        assert response.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}" in out
