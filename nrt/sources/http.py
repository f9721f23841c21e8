"""Download client: retries with backoff and jitter, timeouts, PPS / Earthdata / .netrc auth, atomic downloads.

- PPS NRT servers take HTTP Basic auth with the registered e-mail as both user and password.
- Earthdata Login (GES DISC): the data host redirects to the login host; the login host gets the Basic
  credentials (from the environment or `.netrc`), sets a session cookie and redirects back. The session keeps
  the cookies, so later files go straight through. A bearer token (`NRT_EARTHDATA_TOKEN`) is sent to the
  Earthdata data hosts instead when configured.
- Credentials are only ever sent to the host they belong to (re-decided on every redirect) and never logged;
  URLs are logged without user info or query strings.
- A download goes to a hidden temp file beside its destination; its size is checked against Content-Length,
  an HTML page in place of data is refused, the caller's validator runs on the temp file, and only then is it
  fsynced and renamed. Nothing partial is ever left under the final name.
- A download may carry a deadline (monotonic seconds): retries stop before it and a server trickling bytes
  is cut off at it, so one slow mirror cannot hold a cycle past its cutoff.
- A refused copy's identity (`remote_tag`: size, date, ETag) travels with its DataError, so the catalog can
  notice when the server later replaces the file.
"""

from __future__ import annotations

import html.parser
import logging
import netrc
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from nrt.errors import DataError, FetchError, StorageError
from nrt.io import atomic_path

log = logging.getLogger("nrt.sources.http")

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
NETCDF3_SIGNATURES = (b"CDF\x01", b"CDF\x02", b"CDF\x05")
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_HDF5_OFFSETS = (0, 512, 1024, 2048, 4096)  # the superblock may follow a user block of 512·2^k bytes
_HTML_START = re.compile(rb"^\s*(<!doctype|<html|<head|<body|<\?xml|<!--)", re.IGNORECASE)
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
MAX_LISTING_BYTES = 32 << 20
_CHUNK = 1 << 20


def display_url(url: str) -> str:
    """The URL without user info, query or fragment: safe for logs and error lines."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else (parts.hostname or "")


def _under(url: str, prefix: str) -> bool:
    """Whether `url` lies under the base URL `prefix` (same scheme, host, port and path prefix)."""
    u, p = urlsplit(url), urlsplit(prefix)
    if (u.scheme, u.hostname, u.port) != (p.scheme, p.hostname, p.port):
        return False
    base = p.path.rstrip("/")
    return u.path == base or u.path.startswith(base + "/")


@dataclass
class Credentials:
    """Who to authenticate as, and where. `repr` never shows a secret."""

    pps_email: str | None = field(default=None, repr=False)
    pps_prefixes: tuple[str, ...] = ()
    earthdata_username: str | None = field(default=None, repr=False)
    earthdata_password: str | None = field(default=None, repr=False)
    earthdata_token: str | None = field(default=None, repr=False)
    earthdata_prefixes: tuple[str, ...] = ()
    login_host: str = "urs.earthdata.nasa.gov"
    netrc_path: Path | None = None

    @classmethod
    def from_config(cls, cfg) -> Credentials:
        src, secrets = cfg.sources, cfg.secrets
        return cls(
            pps_email=secrets.pps_email,
            pps_prefixes=(src.imerg.pps_url, src.dpr.pps_url),
            earthdata_username=secrets.earthdata_username,
            earthdata_password=secrets.earthdata_password,
            earthdata_token=secrets.earthdata_token,
            earthdata_prefixes=(src.imerg.gesdisc_url, src.dpr.gesdisc_url),
            login_host=src.http.earthdata_login_host,
            netrc_path=src.http.netrc,
        )

    def _netrc(self, url: str) -> tuple[str, str] | None:
        path = self.netrc_path or Path("~/.netrc").expanduser()
        if not path.is_file():
            return None
        try:
            entry = netrc.netrc(path).authenticators(urlsplit(url).hostname or "")
        except (netrc.NetrcParseError, OSError) as exc:
            log.warning("ignoring unreadable netrc %s: %s", path, type(exc).__name__)
            return None
        return (entry[0], entry[2]) if entry else None

    def basic_auth(self, url: str) -> tuple[str, str] | None:
        if self.pps_email and any(_under(url, p) for p in self.pps_prefixes):
            return self.pps_email, self.pps_email
        if _host(url) == self.login_host and self.earthdata_username and self.earthdata_password:
            return self.earthdata_username, self.earthdata_password
        return self._netrc(url)

    def bearer(self, url: str) -> str | None:
        if self.earthdata_token and any(_under(url, p) for p in self.earthdata_prefixes):
            return self.earthdata_token
        return None

    def apply(self, request: requests.PreparedRequest) -> None:
        request.headers.pop("Authorization", None)
        token = self.bearer(request.url)
        if token:
            request.headers["Authorization"] = f"Bearer {token}"
            return
        auth = self.basic_auth(request.url)
        if auth:
            request.prepare_auth(auth)


class _Session(requests.Session):
    """A Session that re-decides authentication for every hop of a redirect chain (Earthdata Login)."""

    def __init__(self, credentials: Credentials):
        super().__init__()
        self.credentials = credentials
        self.trust_env = False  # netrc and auth come from Credentials only, predictably

    def rebuild_auth(self, prepared_request, response):
        self.credentials.apply(prepared_request)


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _check_status(url: str, response: requests.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    if status in _RETRY_STATUS:
        raise _Retryable(f"HTTP {status}", _retry_after(response))
    if status in (401, 403):
        raise FetchError(display_url(url), f"HTTP {status}: credentials refused or missing (PPS e-mail, Earthdata .netrc or token)")
    if status == 404:
        raise FetchError(display_url(url), "HTTP 404: not on the server (yet)")
    raise FetchError(display_url(url), f"HTTP {status}")


def looks_like_html(head: bytes) -> bool:
    return bool(_HTML_START.match(head))


def has_signature(path: str | Path, kinds: tuple[str, ...]) -> bool:
    """Whether the file starts like one of `kinds` ("hdf5", "netcdf3", "tiff")."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if "hdf5" in kinds:
            for offset in _HDF5_OFFSETS:
                fh.seek(offset)
                if fh.read(8) == HDF5_SIGNATURE:
                    return True
    if "netcdf3" in kinds and head[:4] in NETCDF3_SIGNATURES:
        return True
    return "tiff" in kinds and head[:4] in TIFF_SIGNATURES


def require_signature(path: str | Path, kinds: tuple[str, ...], what: str) -> None:
    """Raise DataError unless the file starts with one of the signatures of `kinds`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror or exc}") from None
    if size == 0:
        raise DataError(path, "empty file")
    if looks_like_html(head):
        raise DataError(path, f"an HTML page saved as data, not {what}")
    if not has_signature(path, kinds):
        raise DataError(path, f"not {what}: bad file signature {head[:8]!r}")


class Client:
    """HTTP client shared by the source modules; thread-safe for concurrent downloads."""

    def __init__(self, http_cfg, credentials: Credentials | None = None, *, user_agent: str = "nrt/0.1"):
        self.cfg = http_cfg
        self.credentials = credentials or Credentials(netrc_path=http_cfg.netrc, login_host=http_cfg.earthdata_login_host)
        self.session = _Session(self.credentials)
        self.session.headers["User-Agent"] = user_agent
        adapter = HTTPAdapter(pool_connections=8, pool_maxsize=max(http_cfg.max_concurrency, 1), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._slots = threading.BoundedSemaphore(http_cfg.max_concurrency)
        self._random = random.Random()

    @classmethod
    def from_config(cls, cfg) -> Client:
        return cls(cfg.sources.http, Credentials.from_config(cfg))

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def timeout(self) -> tuple[float, float]:
        return self.cfg.connect_timeout_s, self.cfg.read_timeout_s

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry `attempt` (0-based): exponential, capped, with jitter in [d/2, d]."""
        cap = self.cfg.backoff_max_s
        if retry_after is not None:
            return min(retry_after, cap)
        delay = min(cap, self.cfg.backoff_s * 2**attempt)
        return delay / 2 + self._random.uniform(0, delay / 2)

    def _request(self, url: str, deadline: float | None = None, method: str = "GET") -> requests.Response:
        request = requests.Request(method, url)
        prepared = self.session.prepare_request(request)
        self.credentials.apply(prepared)
        connect, read = self.timeout
        if deadline is not None:  # no single wait may run past the deadline
            left = max(0.1, deadline - time.monotonic())
            connect, read = min(connect, left), min(read, left)
        try:
            response = self.session.send(prepared, stream=True, timeout=(connect, read), allow_redirects=True)
        except requests.TooManyRedirects:
            raise FetchError(display_url(url), "too many redirects (login loop?)") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Retryable(_describe(exc)) from None
        try:
            _check_status(url, response)
        except BaseException:
            response.close()
            raise
        return response

    def _with_retries(self, url: str, attempt_once: Callable[[], object], deadline: float | None = None):
        attempts = self.cfg.retries + 1
        for attempt in range(attempts):
            try:
                return attempt_once()
            except _Retryable as exc:
                if attempt + 1 == attempts:
                    raise FetchError(display_url(url), f"{exc.reason} (gave up after {attempts} attempts)") from None
                delay = self.backoff(attempt, exc.retry_after)
                if deadline is not None and time.monotonic() + delay >= deadline:
                    raise FetchError(display_url(url), f"{exc.reason} (download deadline reached after {attempt + 1} attempts)") from None
                log.info("retrying %s in %.2fs after %s", display_url(url), delay, exc.reason)
                time.sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    def get_text(self, url: str) -> str:
        """GET a listing or small page as text, with retries."""

        def once() -> str:
            with self._request(url) as response:
                body = bytearray()
                try:
                    for chunk in response.iter_content(_CHUNK):
                        body += chunk
                        if len(body) > MAX_LISTING_BYTES:
                            raise FetchError(display_url(url), f"listing larger than {MAX_LISTING_BYTES} bytes")
                except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                    raise _Retryable(_describe(exc)) from None
                _check_length(response, len(body))
                return body.decode(response.encoding or "utf-8", errors="replace")

        return self._with_retries(url, once)

    def download(
        self, url: str, dest: str | Path, validate: Callable[[Path], None] | None = None, deadline: float | None = None,
    ) -> Path:
        """Fetch `url` to `dest` atomically; `validate(temp_path)` may raise DataError to refuse the content.

        `deadline` (a `time.monotonic()` value) bounds the whole download, retries included. A refused copy's
        DataError carries `remote_tag`; a file that cannot be written raises `StorageError` naming it.
        """
        dest = Path(dest)

        def once() -> Path:
            try:
                with self._slots, atomic_path(dest) as tmp:
                    with self._request(url, deadline) as response:
                        size = _stream_to(response, tmp, url, deadline)
                        _check_length(response, size)
                        tag = remote_tag(response)
                    if validate is not None:
                        try:
                            validate(tmp)
                        except DataError as exc:
                            refused = DataError(display_url(url), exc.reason)
                            refused.remote_tag = tag
                            raise refused from None
            except OSError as exc:  # disk full, read-only or missing data directory
                if isinstance(exc, requests.RequestException):  # requests' errors are OSErrors too
                    raise
                raise StorageError.from_os_error(dest, exc) from None
            log.info("downloaded %s (%d bytes) -> %s", display_url(url), size, dest)
            return dest

        return self._with_retries(url, once, deadline)

    def remote_tag(self, url: str) -> str | None:
        """The file's identity on the server now (HEAD: size, date, ETag); None when the server does not say."""
        try:
            with self._request(url, method="HEAD") as response:
                return remote_tag(response)
        except (_Retryable, FetchError) as exc:
            log.info("HEAD %s: %s", display_url(url), getattr(exc, "reason", exc))
            return None


def remote_tag(response: requests.Response) -> str | None:
    """size, Last-Modified and ETag of a response as one string; None when the server sends none of them."""
    parts = [f"{key}={response.headers[header]}" for key, header in
             (("size", "Content-Length"), ("modified", "Last-Modified"), ("etag", "ETag")) if response.headers.get(header)]
    return ";".join(parts)[:255] if parts else None


def _describe(exc: Exception) -> str:
    text = str(exc)
    for hint, reason in (
        ("Read timed out", "read timeout (server stalled)"),
        ("ConnectTimeout", "connect timeout"),
        ("Connection reset", "connection reset by server"),
        ("Connection aborted", "connection aborted by server"),
        ("IncompleteRead", "truncated body (connection closed early)"),
        ("Connection refused", "connection refused"),
        ("RemoteDisconnected", "server closed the connection without a response"),
    ):
        if hint in text:
            return reason
    if isinstance(exc, requests.Timeout):
        return "timeout"
    return type(exc).__name__


def _check_length(response: requests.Response, received: int) -> None:
    declared = response.headers.get("Content-Length")
    if declared is None or response.headers.get("Content-Encoding"):
        return
    if received != int(declared):
        raise _Retryable(f"truncated body: {received} of {declared} bytes")


def _stream_to(response: requests.Response, path: Path, url: str, deadline: float | None = None) -> int:
    """Write the body to `path` as it arrives (read1: whatever the socket has, so a trickle meets the deadline)."""
    size, head = 0, b""
    started = time.monotonic()
    with open(path, "wb") as fh:
        while True:
            try:
                chunk = response.raw.read1(_CHUNK, decode_content=True)
            except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                raise _Retryable(_describe(exc)) from None
            if not chunk:
                return size
            if len(head) < 64:
                head += chunk[: 64 - len(head)]
                if looks_like_html(head):
                    raise FetchError(display_url(url), "server answered with an HTML page instead of data (missing file or login page)")
            fh.write(chunk)
            size += len(chunk)
            if deadline is not None and time.monotonic() > deadline:
                raise FetchError(display_url(url), f"download deadline passed: {size} bytes in "
                                                   f"{time.monotonic() - started:.0f} s (server too slow)")


def safe_file_name(name: str) -> bool:
    """A plain file name: no separators, no '..', not hidden, no control characters."""
    return (
        bool(name)
        and name not in (".", "..")
        and not name.startswith(".")
        and "/" not in name
        and "\\" not in name
        and ".." not in name
        and all(ch.isprintable() and not ch.isspace() for ch in name)
    )


def _accept(name: str, pattern: re.Pattern, where: str) -> str | None:
    if not safe_file_name(name):
        log.warning("refusing listing entry %r from %s: not a plain file name", name[:200], where)
        return None
    if not pattern.fullmatch(name):
        return None  # another product in the same folder
    return name


def parse_pps_listing(text: str, directory: str, pattern: re.Pattern) -> list[str]:
    """File names from a PPS `/text/...` listing: one server path per line, e.g. `/imerg/early/202406/<name>`.

    A line counts only if its folder is `directory` and its last part is a plain name matching `pattern`.
    """
    want = [p for p in directory.strip("/").split("/") if p]
    names = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry:
            continue
        parts = entry.split("/")
        folder, name = [p for p in parts[:-1] if p], parts[-1]
        if ".." in folder or "." in folder:
            log.warning("refusing listing entry %r: path escapes its folder", entry[:200])
            continue
        if folder and folder[-len(want):] != want:
            log.warning("refusing listing entry %r: not in %s", entry[:200], directory)
            continue
        if _accept(name, pattern, directory) is not None:
            names.append(name)
    return sorted(set(names))


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            for key, value in attrs:
                if key == "href" and value:
                    self.hrefs.append(value)


def parse_html_listing(text: str, url: str, pattern: re.Pattern) -> list[str]:
    """File names linked from an HTML directory index at `url` (GES DISC, NCCS).

    Relative links must be plain names; absolute links must point into the listed folder itself.
    """
    parser = _Links()
    parser.feed(text)
    folder = urlsplit(url).path.rstrip("/")
    names = []
    for href in parser.hrefs:
        parts = urlsplit(href)
        if parts.query or (parts.fragment and not parts.path):
            continue  # column sorting links, anchors
        path = unquote(parts.path)
        if path.endswith("/"):
            continue  # sub-folders and the parent link
        if parts.scheme or parts.netloc or path.startswith("/"):
            head, _, name = path.rpartition("/")
            if head.rstrip("/") != folder:
                log.warning("refusing link %r from %s: outside the listed folder", href[:200], display_url(url))
                continue
        else:
            name = path
        if _accept(name, pattern, display_url(url)) is not None:
            names.append(name)
    return sorted(set(names))
