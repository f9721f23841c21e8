"""A local mirror of the real servers, serving a twin tree with their paths, listings and authentication.

- `/pps/...` behaves like the PPS near-real-time server: HTTP Basic auth whose user and password are the
  same e-mail address (401 otherwise); `/pps/text/<folder>/` lists every file below `<folder>` as plain text,
  one server path per line (`/imerg/early/202406/<name>`); other paths serve the files.
- `/gesdisc/...` behaves like GES DISC behind Earthdata Login: without a session it redirects to
  `/urs/oauth/authorize`, which takes Basic credentials, sets a session cookie and redirects back; a bearer
  token is accepted directly. Folders answer with an HTML index.
- `/nccs/...` (the NCCS portal) and `/dem/...` are open, with HTML indexes.

Nothing outside the mounts is served: no `..`, no hidden or temporary names (`.name.part-*`), no symlink that
leads out of the tree. Every response carries a correct Content-Length.
"""

from __future__ import annotations

import base64
import html
import logging
import os
import secrets
import shutil
import threading
import time
from email.utils import formatdate
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from nrt.errors import ConfigError, DataError

log = logging.getLogger("nrt.twin.server")

MOUNTS = {"pps": "pps", "gesdisc": "earthdata", "nccs": None, "dem": None}
LOGIN_PATH = "/urs/oauth/authorize"
SESSION_COOKIE = "nrt_twin_edl_session"
CHUNK = 1 << 20


def is_email(text: str) -> bool:
    local, at, domain = text.partition("@")
    return bool(at and local and "." in domain and not domain.startswith(".") and not domain.endswith(".")) and " " not in text


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    try:
        user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


class TwinServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: str | os.PathLike, address: tuple[str, int]):
        root = Path(root)
        if not root.is_dir():
            raise DataError(root, "no such folder (make one with `nrt twin generate`)")
        if not any((root / mount).is_dir() for mount in MOUNTS):
            raise DataError(root, f"not a twin mirror tree: none of {', '.join(m + '/' for m in MOUNTS)} inside")
        self.root = root.resolve()
        self._sessions: set[str] = set()
        self._lock = threading.Lock()
        try:
            super().__init__(address, TwinHandler)
        except OSError as exc:
            raise ConfigError(f"twin serve {address[0]}:{address[1]}", f"cannot listen: {exc.strerror or exc}") from None

    def stop(self) -> None:
        """End `serve_forever` (in another thread) and close the listening socket."""
        self.shutdown()
        self.server_close()

    def new_session(self) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._sessions.add(token)
        return token

    def has_session(self, token: str) -> bool:
        with self._lock:
            return token in self._sessions

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class TwinHandler(BaseHTTPRequestHandler):
    server: TwinServer
    server_version = "nrt-twin"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.debug("%s %s", self.address_string(), format % args)

    # -------------------------------------------------------------- dispatch

    def do_HEAD(self):
        self.handle_request(head=True)

    def do_GET(self):
        self.handle_request(head=False)

    def handle_request(self, head: bool) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        if path == LOGIN_PATH:
            return self.login(url.query, head)
        parts = [p for p in path.split("/") if p]
        if not parts or parts[0] not in MOUNTS or "\x00" in path:
            return self.send_text(HTTPStatus.NOT_FOUND, "Not Found\n", head)
        if any(p == ".." or p.startswith(".") for p in parts):
            return self.send_text(HTTPStatus.NOT_FOUND, "Not Found\n", head)
        auth = MOUNTS[parts[0]]
        if auth == "pps" and not self.pps_authorised():
            return self.challenge(head)
        if auth == "earthdata" and not self.earthdata_authorised():
            return self.redirect(f"{LOGIN_PATH}?{urlencode({'redirect_uri': self.path})}", head)
        if parts[0] == "pps" and len(parts) >= 2 and parts[1] == "text":
            return self.text_listing(parts[2:], head)
        target = self.resolve(parts)
        if target is None:
            return self.send_text(HTTPStatus.NOT_FOUND, "Not Found\n", head)
        if target.is_dir():
            if not path.endswith("/"):
                return self.redirect(quote(path) + "/", head, HTTPStatus.MOVED_PERMANENTLY)
            return self.html_index(target, path, head)
        return self.send_file(target, head)

    def resolve(self, parts: list[str]) -> Path | None:
        """The file or folder for the URL parts, or None when it is missing or would leave the mount."""
        mount = (self.server.root / parts[0]).resolve()
        target = (mount.joinpath(*parts[1:])).resolve()
        if target != mount and mount not in target.parents:
            return None
        return target if target.exists() else None

    # -------------------------------------------------------------- authentication

    def pps_authorised(self) -> bool:
        creds = basic_credentials(self.headers.get("Authorization"))
        return creds is not None and creds[0] == creds[1] and is_email(creds[0])

    def earthdata_authorised(self) -> bool:
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer ") and header[7:].strip():
            return True
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        return SESSION_COOKIE in cookie and self.server.has_session(cookie[SESSION_COOKIE].value)

    def challenge(self, head: bool) -> None:
        self.send_text(HTTPStatus.UNAUTHORIZED, "Unauthorized\n", head, {"WWW-Authenticate": 'Basic realm="PPS"'})

    def login(self, query: str, head: bool) -> None:
        """Earthdata Login: Basic credentials in, a session cookie and a redirect back to the data out."""
        back = parse_qs(query).get("redirect_uri", ["/"])[0]
        if not back.startswith("/") or back.startswith("//"):
            return self.send_text(HTTPStatus.BAD_REQUEST, "bad redirect_uri\n", head)
        creds = basic_credentials(self.headers.get("Authorization"))
        if creds is None or not creds[0] or not creds[1]:
            return self.send_text(
                HTTPStatus.UNAUTHORIZED, "Unauthorized\n", head, {"WWW-Authenticate": 'Basic realm="Earthdata Login"'}
            )
        cookie = f"{SESSION_COOKIE}={self.server.new_session()}; Path=/; HttpOnly"
        self.redirect(back, head, HTTPStatus.FOUND, {"Set-Cookie": cookie})

    # -------------------------------------------------------------- responses

    def send_text(self, status: HTTPStatus, text: str, head: bool, headers: dict | None = None, kind: str = "text/plain") -> None:
        body = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def redirect(self, location: str, head: bool, status: HTTPStatus = HTTPStatus.FOUND, headers: dict | None = None) -> None:
        self.send_text(status, f"Moved to {location}\n", head, {"Location": location, **(headers or {})})

    def send_file(self, path: Path, head: bool) -> None:
        try:
            handle = open(path, "rb")
        except OSError:
            return self.send_text(HTTPStatus.NOT_FOUND, "Not Found\n", head)
        with handle:
            stat = os.fstat(handle.fileno())
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(stat.st_size))
            self.send_header("Last-Modified", formatdate(stat.st_mtime, usegmt=True))
            self.end_headers()
            if not head:
                shutil.copyfileobj(handle, self.wfile, CHUNK)

    def text_listing(self, parts: list[str], head: bool) -> None:
        """PPS `/text/...`: every file below the folder, as server paths relative to the PPS root."""
        folder = self.resolve(["pps", *parts])
        if folder is None or not folder.is_dir():
            return self.send_text(HTTPStatus.NOT_FOUND, "Not Found\n", head)
        pps = (self.server.root / "pps").resolve()
        lines = [f"/{p.relative_to(pps).as_posix()}" for p in visible_files(folder)]
        self.send_text(HTTPStatus.OK, "".join(line + "\n" for line in lines), head)

    def html_index(self, folder: Path, url_path: str, head: bool) -> None:
        rows = ['<tr><td><a href="../">Parent Directory</a></td><td></td><td align="right">-</td></tr>']
        for entry in sorted(folder.iterdir(), key=lambda p: p.name):
            if entry.name.startswith("."):
                continue
            stat = entry.stat()
            name = entry.name + ("/" if entry.is_dir() else "")
            size = "-" if entry.is_dir() else str(stat.st_size)
            modified = time.strftime("%Y-%m-%d %H:%M", time.gmtime(stat.st_mtime))
            rows.append(
                f'<tr><td><a href="{quote(name)}">{html.escape(name)}</a></td>'
                f'<td align="right">{modified}</td><td align="right">{size}</td></tr>'
            )
        title = html.escape(f"Index of {url_path}")
        page = (
            "<!DOCTYPE html>\n<html>\n<head><title>" + title + "</title></head>\n<body>\n<h1>" + title + "</h1>\n"
            "<table>\n<tr><th>Name</th><th>Last modified</th><th>Size</th></tr>\n" + "\n".join(rows) + "\n</table>\n</body>\n</html>\n"
        )
        self.send_text(HTTPStatus.OK, page, head, kind="text/html")


def visible_files(folder: Path) -> list[Path]:
    """Files below `folder`, skipping hidden and temporary names and anything under a hidden folder."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return found


def make_server(root: str | os.PathLike, port: int = 8765, host: str = "127.0.0.1") -> TwinServer:
    return TwinServer(root, (host, port))


def serve_in_thread(root: str | os.PathLike, port: int = 0, host: str = "127.0.0.1") -> tuple[TwinServer, str]:
    """Start the mirror in a daemon thread; returns (server, base_url). Stop it with `server.stop()`."""
    server = make_server(root, port, host)
    threading.Thread(target=server.serve_forever, name="nrt-twin-server", daemon=True).start()
    return server, server.base_url
