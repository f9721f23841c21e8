"""The download client against real local HTTP servers that behave like PPS, GES DISC/Earthdata and NCCS."""

from __future__ import annotations

import base64
import logging
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from nrt.config import HttpConfig
from nrt.errors import DataError, FetchError
from nrt.sources import http, imerg
from nrt.sources.http import Client, Credentials

EMAIL = "operator@example.org"
NAME = "3B-HHR-E.MS.MRG.3IMERG.20240601-S120000-E122959.0720.V07B.RT-H5"
# A small but real HDF5 payload (the signature is what the client checks); built here, not read from disk.
PAYLOAD = http.HDF5_SIGNATURE + bytes(range(256)) * 300


def fast_http(**overrides) -> HttpConfig:
    settings = dict(connect_timeout_s=2, read_timeout_s=0.3, retries=3, backoff_s=0.01, backoff_max_s=0.05, max_concurrency=2)
    settings.update(overrides)
    return HttpConfig(**settings)


def hdf5_only(path: Path) -> None:
    http.require_signature(path, ("hdf5",), "HDF5")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        server = self.server
        with server.lock:
            server.requests.append((self.path, dict(self.headers)))
            server.active += 1
            server.max_active = max(server.max_active, server.active)
        try:
            route = server.route(self)
            route(self)
        finally:
            with server.lock:
                server.active -= 1

    def do_HEAD(self):
        """The route's status and headers without its body (not counted in `requests`)."""
        self.head_only = True
        self.server.route(self)(self)

    # helpers used by routes
    def send(self, status: int, body: bytes = b"", content_type="application/octet-stream", headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if getattr(self, "head_only", False):
            return
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def redirect(self, location: str, headers=None):
        self.send(302, b"", headers={"Location": location, **(headers or {})})

    def reset(self):
        """Abort the TCP connection with RST, as PPS does for a file that is not published yet."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def basic_user(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user, password


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, route):
        super().__init__(("127.0.0.1", 0), Handler)
        self.route = route
        self.requests: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.active = self.max_active = 0
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def hits(self, prefix: str) -> int:
        return sum(1 for path, _ in self.requests if path.startswith(prefix))

    def stop(self):
        self.shutdown()
        self.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(route) -> Server:
        server = Server(route)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def nrt_logs(caplog):
    """Capture the "nrt" and urllib3 loggers at DEBUG (conftest restores nrt's propagation after each test)."""
    for name in ("nrt", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ---------------------------------------------------------------- PPS: Basic auth with the e-mail, listings, resets

def pps_route(handler: Handler):
    if handler.basic_user() != (EMAIL, EMAIL):
        return lambda h: h.send(401, b"Unauthorized", "text/plain", {"WWW-Authenticate": 'Basic realm="PPS"'})
    path = urlsplit(handler.path).path
    if path == "/pps/text/imerg/early/202406/":
        lines = [
            f"/imerg/early/202406/{NAME}",
            "/imerg/early/202406/3B-HHR-E.MS.MRG.3IMERG.20240601-S123000-E125959.0750.V07B.RT-H5",
            "/imerg/early/202406/3B-HHR-E.MS.MRG.3IMERG.20240601-S120000-E122959.0720.V07B.30min.tif",  # other product
            "/imerg/early/202406/../../../etc/3B-HHR-E.MS.MRG.3IMERG.20240601-S130000-E132959.0780.V07B.RT-H5",
            "/imerg/late/202406/3B-HHR-E.MS.MRG.3IMERG.20240601-S133000-E135959.0810.V07B.RT-H5",  # wrong folder
            "/imerg/early/202406/.3B-HHR-E.MS.MRG.3IMERG.20240601-S140000-E142959.0840.V07B.RT-H5",
            "",
        ]
        return lambda h: h.send(200, "\n".join(lines).encode(), "text/plain")
    if path == f"/pps/imerg/early/202406/{NAME}":
        return lambda h: h.send(200, PAYLOAD)
    return lambda h: h.reset()  # listed or not, an unpublished file: the connection is reset


def pps_client(server, **http_overrides) -> Client:
    creds = Credentials(pps_email=EMAIL, pps_prefixes=(f"{server.url}/pps",))
    return Client(fast_http(**http_overrides), creds)


def test_pps_listing_and_download_with_basic_auth(serve, tmp_path, nrt_logs):
    server = serve(pps_route)
    with pps_client(server) as client:
        text = client.get_text(f"{server.url}/pps/{imerg.pps_listing_path(imerg.parse_name(NAME).start)}")
        names = http.parse_pps_listing(text, "imerg/early/202406", imerg.FILE_PATTERN)
        assert names == [NAME, "3B-HHR-E.MS.MRG.3IMERG.20240601-S123000-E125959.0750.V07B.RT-H5"]
        dest = tmp_path / "data" / NAME
        assert client.download(f"{server.url}/pps/imerg/early/202406/{NAME}", dest, validate=hdf5_only) == dest
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(dest.parent) == [NAME]
    assert "downloaded" in nrt_logs.text and EMAIL not in nrt_logs.text
    assert all(headers["Authorization"].startswith("Basic ") for _, headers in server.requests)


def test_pps_without_credentials_is_refused_once(serve, tmp_path):
    server = serve(pps_route)
    with Client(fast_http(), Credentials()) as client, pytest.raises(FetchError, match="HTTP 401: credentials refused"):
        client.download(f"{server.url}/pps/imerg/early/202406/{NAME}", tmp_path / NAME)
    assert len(server.requests) == 1  # an auth failure is not retried
    assert leftovers(tmp_path) == []


def test_pps_connection_reset_for_an_unpublished_file(serve, tmp_path):
    server = serve(pps_route)
    later = NAME.replace("S120000-E122959.0720", "S123000-E125959.0750")
    with pps_client(server, retries=2) as client, pytest.raises(FetchError) as err:
        client.download(f"{server.url}/pps/imerg/early/202406/{later}", tmp_path / later, validate=hdf5_only)
    message = str(err.value)
    assert ("reset" in message or "aborted" in message or "closed" in message) and "gave up after 3 attempts" in message
    assert server.hits(f"/pps/imerg/early/202406/{later}") == 3
    assert leftovers(tmp_path) == []


def test_pps_email_goes_only_to_pps(serve, tmp_path):
    server = serve(pps_route)
    other = serve(lambda h: (lambda h: h.send(200, PAYLOAD)))
    with pps_client(server) as client:
        client.download(f"{other.url}/pps-lookalike/{NAME}", tmp_path / NAME)
    assert "Authorization" not in other.requests[0][1]


# ---------------------------------------------------------------- GES DISC: Earthdata Login redirects, cookies, HTML pages

class Earthdata:
    """A data host that sends unauthenticated clients to a separate login host, as GES DISC and URS do."""

    def __init__(self, serve, user="alice", password="s3cret-pw", token=None):
        self.user, self.password, self.token = user, password, token
        self.login = serve(self.login_route)
        self.data = serve(self.data_route)
        # The login host is reached as "localhost" so that it is a different host from the data host.
        self.login_host = f"localhost:{self.login.server_address[1]}"

    def data_route(self, handler: Handler):
        url = urlsplit(handler.path)
        if url.path == "/data-redirect":
            state = parse_qs(url.query)["state"][0]
            if parse_qs(url.query).get("code") != ["granted"]:
                return lambda h: h.send(403, b"bad code", "text/plain")
            return lambda h: h.redirect(f"{self.data.url}{state}", {"Set-Cookie": "disc_session=ok; Path=/; HttpOnly"})
        authorised = "disc_session=ok" in handler.headers.get("Cookie", "") or (
            self.token and handler.headers.get("Authorization") == f"Bearer {self.token}"
        )
        if not authorised:
            return lambda h: h.redirect(f"http://{self.login_host}/oauth/authorize?client_id=x&state={url.path}")
        if url.path.endswith("/missing.HDF5"):
            page = b"<!DOCTYPE html>\n<html><head><title>GES DISC</title></head><body>Not found</body></html>"
            return lambda h: h.send(200, page, "text/html")
        if url.path.endswith("/"):
            index = (
                "<html><body><a href='../'>Parent</a><a href='?C=M;O=A'>Last modified</a>"
                f"<a href='{NAME[:-6]}.HDF5'>{NAME[:-6]}.HDF5</a>"
                f"<a href='{NAME[:-6]}.HDF5.xml'>xml</a>"
                f"<a href='/etc/{NAME[:-6]}.HDF5'>escape</a>"
                f"<a href='sub/{NAME[:-6]}.HDF5'>nested</a>"
                f"<a href='{url.path}{NAME[:-6].replace('S120000-E122959.0720', 'S123000-E125959.0750')}.HDF5'>abs</a>"
                "</body></html>"
            ).encode()
            return lambda h: h.send(200, index, "text/html")
        return lambda h: h.send(200, PAYLOAD)

    def login_route(self, handler: Handler):
        if handler.basic_user() != (self.user, self.password):
            return lambda h: h.send(401, b"login required", "text/plain", {"WWW-Authenticate": 'Basic realm="URS"'})
        state = parse_qs(urlsplit(handler.path).query)["state"][0]
        return lambda h: h.redirect(f"{self.data.url}/data-redirect?code=granted&state={state}")


def test_earthdata_redirect_login_then_cookies(serve, tmp_path, nrt_logs):
    world = Earthdata(serve)
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine localhost login {world.user} password {world.password}\n")
    netrc.chmod(0o600)
    creds = Credentials(netrc_path=netrc, login_host=world.login_host)
    folder = "/data/GPM_L3/GPM_3IMERGHHE.07/2024/153"
    with Client(fast_http(), creds) as client:
        first = client.download(f"{world.data.url}{folder}/{NAME[:-6]}.HDF5", tmp_path / "a.HDF5", validate=hdf5_only)
        assert first.read_bytes() == PAYLOAD
        assert world.login.hits("/oauth/authorize") == 1
        # the session cookie carries the second file straight through, without the login host
        client.download(f"{world.data.url}{folder}/second.HDF5", tmp_path / "b.HDF5", validate=hdf5_only)
        assert world.login.hits("/oauth/authorize") == 1
    login_headers = world.login.requests[0][1]
    assert login_headers["Authorization"].startswith("Basic ")
    assert all("Authorization" not in headers for _, headers in world.data.requests)  # credentials stay with URS
    assert "downloaded" in nrt_logs.text and "oauth/authorize" in nrt_logs.text  # the logs were captured...
    assert world.password not in nrt_logs.text and world.user not in nrt_logs.text  # ...without the secrets


def test_earthdata_credentials_from_the_environment_and_bearer_token(serve, tmp_path):
    world = Earthdata(serve, token="tok-123")
    folder = "/data/GPM_L3/GPM_3IMERGHHE.07/2024/153"
    creds = Credentials(earthdata_username=world.user, earthdata_password=world.password, login_host=world.login_host)
    with Client(fast_http(), creds) as client:
        client.download(f"{world.data.url}{folder}/x.HDF5", tmp_path / "x.HDF5", validate=hdf5_only)
    assert world.login.hits("/oauth/authorize") == 1
    token = Credentials(earthdata_token="tok-123", earthdata_prefixes=(f"{world.data.url}/data",))
    with Client(fast_http(), token) as client:
        client.download(f"{world.data.url}{folder}/y.HDF5", tmp_path / "y.HDF5", validate=hdf5_only)
    assert world.login.hits("/oauth/authorize") == 1  # the token needs no login round trip
    assert "tok-123" not in repr(token) and world.password not in repr(creds)


def test_earthdata_wrong_password_fails_fast(serve, tmp_path):
    world = Earthdata(serve)
    creds = Credentials(earthdata_username=world.user, earthdata_password="wrong", login_host=world.login_host)
    with Client(fast_http(), creds) as client, pytest.raises(FetchError, match="HTTP 401"):
        client.download(f"{world.data.url}/data/x.HDF5", tmp_path / "x.HDF5")
    assert world.login.hits("/oauth") == 1 and leftovers(tmp_path) == []


def test_gesdisc_html_page_for_a_missing_file(serve, tmp_path):
    world = Earthdata(serve, token="tok")
    creds = Credentials(earthdata_token="tok", earthdata_prefixes=(f"{world.data.url}/data",))
    with Client(fast_http(), creds) as client, pytest.raises(FetchError, match="HTML page instead of data"):
        client.download(f"{world.data.url}/data/GPM_L3/missing.HDF5", tmp_path / "missing.HDF5", validate=hdf5_only)
    assert world.data.hits("/data/GPM_L3/missing.HDF5") == 1  # not retried
    assert leftovers(tmp_path) == []


def test_gesdisc_html_index_listing(serve):
    world = Earthdata(serve, token="tok")
    creds = Credentials(earthdata_token="tok", earthdata_prefixes=(f"{world.data.url}/data",))
    url = f"{world.data.url}/data/GPM_L3/GPM_3IMERGHHE.07/2024/153/"
    with Client(fast_http(), creds) as client:
        names = http.parse_html_listing(client.get_text(url), url, imerg.FILE_PATTERN)
    assert names == [
        NAME[:-6] + ".HDF5",
        NAME[:-6].replace("S120000-E122959.0720", "S123000-E125959.0750") + ".HDF5",
    ]


# ---------------------------------------------------------------- NCCS: 5xx, stalls, truncated bodies

class Flaky:
    """Serves PAYLOAD after `failures` failures of the chosen kind."""

    def __init__(self, kind: str, failures: int):
        self.kind, self.failures, self.calls = kind, failures, 0

    def __call__(self, handler: Handler):
        self.calls += 1
        if self.calls > self.failures:
            return lambda h: h.send(200, PAYLOAD, "application/x-netcdf4")
        return getattr(self, self.kind)

    @staticmethod
    def status_503(h: Handler):
        h.send(503, b"Service Unavailable", "text/plain", {"Retry-After": "0"})

    @staticmethod
    def status_500(h: Handler):
        h.send(500, b"<html>Internal error</html>", "text/html")

    @staticmethod
    def stall(h: Handler):
        h.send_response(200)
        h.send_header("Content-Length", str(len(PAYLOAD)))
        h.end_headers()
        h.wfile.write(PAYLOAD[:1000])
        h.wfile.flush()
        time.sleep(1.2)  # longer than the client's read timeout
        h.close_connection = True

    @staticmethod
    def truncate(h: Handler):
        h.send_response(200)
        h.send_header("Content-Length", str(len(PAYLOAD)))
        h.end_headers()
        h.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
        h.wfile.flush()
        h.close_connection = True


NCCS_FILE = "/nccs/datashare/gmao/geos-fp/forecast/Y2024/M06/D01/H06/GEOS.fp.fcst.tavg1_2d_slv_Nx.20240601_06+20240601_1130.V01.nc4"


@pytest.mark.parametrize("kind", ["status_503", "status_500", "stall", "truncate"])
def test_nccs_recovers_after_transient_failures(serve, tmp_path, kind):
    flaky = Flaky(kind, failures=2)
    server = serve(flaky)
    dest = tmp_path / "geosfp" / Path(NCCS_FILE).name
    with Client(fast_http(retries=3), Credentials()) as client:
        client.download(f"{server.url}{NCCS_FILE}", dest, validate=hdf5_only)
    assert dest.read_bytes() == PAYLOAD
    assert flaky.calls == 3
    assert leftovers(dest.parent) == [dest.name]


@pytest.mark.parametrize("kind, reason", [("status_503", "HTTP 503"), ("stall", "timeout"), ("truncate", "truncated")])
def test_nccs_persistent_failure_gives_up_and_leaves_nothing(serve, tmp_path, kind, reason):
    flaky = Flaky(kind, failures=99)
    server = serve(flaky)
    with Client(fast_http(retries=2), Credentials()) as client, pytest.raises(FetchError) as err:
        client.download(f"{server.url}{NCCS_FILE}", tmp_path / "f.nc4")
    assert reason in str(err.value) and "gave up after 3 attempts" in str(err.value)
    assert "\n" not in str(err.value)
    assert flaky.calls == 3
    assert leftovers(tmp_path) == []


def test_a_refused_validation_leaves_nothing(serve, tmp_path):
    server = serve(lambda h: (lambda h: h.send(200, b"CDF\x01" + b"\x00" * 100)))

    def strict(path):
        raise DataError(path, "not the product we asked for")

    with Client(fast_http(), Credentials()) as client, pytest.raises(DataError) as err:
        client.download(f"{server.url}/x/file.nc4", tmp_path / "file.nc4", validate=strict)
    assert str(err.value).startswith(f"{server.url}/x/file.nc4: not the product")
    assert leftovers(tmp_path) == []
    assert len(server.requests) == 1


def test_downloads_are_bounded_in_concurrency(serve, tmp_path):
    def slow(handler):
        def respond(h):
            time.sleep(0.15)
            h.send(200, PAYLOAD)

        return respond

    server = serve(slow)
    with Client(fast_http(max_concurrency=2, read_timeout_s=2), Credentials()) as client:
        with ThreadPoolExecutor(max_workers=6) as pool:
            paths = list(pool.map(lambda k: client.download(f"{server.url}/f{k}", tmp_path / f"f{k}"), range(6)))
    assert all(p.read_bytes() == PAYLOAD for p in paths)
    assert server.max_active == 2


def test_backoff_is_exponential_capped_and_jittered():
    client = Client(fast_http(backoff_s=1.0, backoff_max_s=5.0), Credentials())
    for attempt, nominal in enumerate([1.0, 2.0, 4.0, 5.0, 5.0]):
        delays = [client.backoff(attempt) for _ in range(200)]
        assert nominal / 2 <= min(delays) and max(delays) <= nominal
        assert max(delays) - min(delays) > nominal / 10  # jittered, not constant
    assert client.backoff(0, retry_after=3.0) == 3.0 and client.backoff(0, retry_after=120.0) == 5.0


# ---------------------------------------------------------------- listing parsers

def test_pps_listing_refuses_unsafe_entries(nrt_logs):
    pattern = imerg.FILE_PATTERN
    good = "3B-HHR-E.MS.MRG.3IMERG.20240601-S120000-E122959.0720.V07B.RT-H5"
    text = "\n".join(
        [
            f"/imerg/early/202406/{good}",
            f"/imerg/early/202406/../{good}",
            f"/imerg/early/202406/./{good}",
            f"{good}/..",
            f"/imerg/early/202406/{good}\\..\\x",
            f"/imerg/early/202405/{good}",
        ]
    )
    assert http.parse_pps_listing(text, "imerg/early/202406", pattern) == [good]
    assert nrt_logs.text.count("refusing") == 5


def test_safe_file_names():
    for bad in ("", ".", "..", ".hidden", "a/b", "a\\b", "a..b", "a b", "a\x00b", "x\n"):
        assert not http.safe_file_name(bad), bad
    assert http.safe_file_name("GEOS.fp.fcst.tavg1_2d_slv_Nx.20240601_06+20240601_1130.V01.nc4")


def test_signature_checks(tmp_path):
    html = tmp_path / "a"
    html.write_bytes(b"  <!DOCTYPE html><html>")
    with pytest.raises(DataError, match="HTML page saved as data"):
        http.require_signature(html, ("hdf5",), "HDF5")
    user_block = tmp_path / "b"
    user_block.write_bytes(b"\x00" * 512 + http.HDF5_SIGNATURE + b"\x00" * 100)
    http.require_signature(user_block, ("hdf5",), "HDF5")
    classic = tmp_path / "c"
    classic.write_bytes(b"CDF\x02" + b"\x00" * 32)
    http.require_signature(classic, ("hdf5", "netcdf3"), "NetCDF")
    with pytest.raises(DataError, match="bad file signature"):
        http.require_signature(classic, ("hdf5",), "HDF5")
    empty = tmp_path / "d"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        http.require_signature(empty, ("hdf5",), "HDF5")


# ---------------------------------------------------------------- deadlines

def trickle(h: Handler):
    """A server that never stalls long enough for the read timeout, but sends ~3 kB/s: 25 s for PAYLOAD."""
    h.send_response(200)
    h.send_header("Content-Length", str(len(PAYLOAD)))
    h.end_headers()
    try:
        for start in range(0, len(PAYLOAD), 300):
            h.wfile.write(PAYLOAD[start:start + 300])
            h.wfile.flush()
            time.sleep(0.1)
    except OSError:
        pass
    h.close_connection = True


def test_a_trickling_download_is_cut_off_at_its_deadline(serve, tmp_path):
    server = serve(lambda h: trickle)
    started = time.monotonic()
    with Client(fast_http(), Credentials()) as client, pytest.raises(FetchError, match="download deadline passed") as err:
        client.download(f"{server.url}{NCCS_FILE}", tmp_path / "f.nc4", deadline=time.monotonic() + 1.5)
    assert time.monotonic() - started < 3.0  # not the 25 s the server would take
    assert "\n" not in str(err.value) and leftovers(tmp_path) == []


def test_retries_stop_at_the_deadline(serve, tmp_path):
    flaky = Flaky("stall", failures=99)
    server = serve(flaky)
    http_cfg = fast_http(retries=50, backoff_s=0.2, backoff_max_s=0.2)
    with Client(http_cfg, Credentials()) as client, pytest.raises(FetchError, match="download deadline reached"):
        client.download(f"{server.url}{NCCS_FILE}", tmp_path / "f.nc4", deadline=time.monotonic() + 2.0)
    assert flaky.calls < 6  # far fewer than the 51 attempts the retries alone allow
