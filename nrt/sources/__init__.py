"""Data sources: one module per source behind the same small interface, and the generic ingest over them.

Each module (`imerg`, `dpr`, `geosfp`, `dem`) exposes `NAME`, `FILE_PATTERN`, `parse_name(name)`, `Settings`
(the values its functions use, made from the config by `settings(cfg)`), `expected_files(s, t)`,
`remote_url(s, rf)`, `validate(path, name, **validate_settings(s))`, its reader and `identify(path)`
(`nrt.sources.base.Source`). Modules whose server is listed first (the PPS and GES DISC directories) also
expose `list_url(s, t)`, `parse_listing(s, text, url)` and `select(s, t, expected, listed) -> (files, missing)`.

`ingest()` is the only place that talks to both the network and the catalog: it works out what should exist,
skips what the catalog already holds with a matching checksum, downloads the rest with bounded concurrency,
validates each file before it is renamed into place, and records the outcome (downloaded, or bad with a
reason). A bad granule is retried at most `sources.http.max_bad_attempts` times; after that it is refused
until `bad_retry_hours` have passed or the server's copy changes (size, date or ETag), and
`nrt ingest --retry-bad` clears the marks at once. Each download, and all of one source's downloads in one
call, run under deadlines (`download_deadline_s`, `ingest_deadline_s`).
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from nrt.errors import DataError, FetchError
from nrt.io import sha256_file
from nrt.timeline import isoformat, utc

log = logging.getLogger("nrt.sources")

SOURCE_NAMES = ("imerg", "dpr", "geosfp", "dem")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a source as the server names it; `subdir` is its folder relative to the server's base URL."""

    source: str
    name: str
    version: str
    start: datetime
    end: datetime
    subdir: str

    @property
    def relative_path(self) -> str:
        return f"{self.subdir}/{self.name}" if self.subdir else self.name


@dataclass
class IngestResult:
    """Files held; files not there (`missing`, polled again); files refused (`bad`); and, among the missing,
    those a server failed to deliver (5xx, timeouts, resets, deadlines: `errors`) rather than not published yet."""

    files: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"files": [str(p) for p in self.files], "missing": self.missing, "bad": self.bad, "errors": self.errors}


def not_published(exc: FetchError) -> bool:
    """A file the server does not have yet (404, GES DISC's HTML page, an absent local file), not a server fault."""
    return exc.reason.startswith("HTTP 404") or "HTML page instead of data" in exc.reason or exc.reason == "no such local file"


def module(name: str) -> ModuleType:
    """The source module registered under `name` (one of SOURCE_NAMES)."""
    if name not in SOURCE_NAMES:
        raise ValueError(f"unknown source {name!r}; known: {', '.join(SOURCE_NAMES)}")
    return importlib.import_module(f"nrt.sources.{name}")


def parse_any(name: str) -> RemoteFile | None:
    """Parse a file name against every source's pattern (the DEM's catch-all pattern last)."""
    for source in SOURCE_NAMES:
        rf = module(source).parse_name(name)
        if rf is not None:
            return rf
    return None


def identify(path: str | Path) -> dict:
    """`nrt inspect`: which source a file belongs to, its time span and statistics of its main field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file")
    rf = parse_any(path.name)
    if rf is None:
        raise DataError(path, "file name matches no supported source (imerg, dpr, geosfp, dem)")
    return module(rf.source).identify(path)


def field_stats(values: np.ndarray, valid: np.ndarray) -> dict:
    """valid_fraction, min, max, mean of `values` where `valid`; None for the statistics when nothing is valid."""
    n = int(valid.size)
    good = np.asarray(values, dtype=np.float64)[valid]
    stats = {"valid_fraction": (good.size / n) if n else 0.0, "min": None, "max": None, "mean": None}
    if good.size:
        stats.update(min=float(good.min()), max=float(good.max()), mean=float(good.mean()))
    return {k: (significant(v) if isinstance(v, float) else v) for k, v in stats.items()}


def identity(source: str, version: str, rf: RemoteFile, values: np.ndarray, stats: dict, field: str, path: Path,
             **extra) -> dict:
    """What `nrt inspect` prints for a granule: its source, version and times, the main field's shape and
    statistics (`field_stats`), the source's own keys (`extra`) and the path."""
    return {"source": source, "version": version, "start": time_text(rf.start), "end": time_text(rf.end),
            "shape": list(values.shape), **stats, "field": field, **extra, "path": str(path)}


def significant(value: float, digits: int = 7) -> float:
    """`value` to `digits` significant digits (float32 precision), for compact JSON at any magnitude."""
    return float(f"{value:.{digits}g}") if math.isfinite(value) else value


def time_text(t: datetime | None) -> str | None:
    return None if t is None else isoformat(t)


def local_path(data_dir: Path, rf: RemoteFile) -> Path:
    """Where a downloaded file lives: <data_dir>/<source>/<server folder>/<name>."""
    return Path(data_dir) / rf.source / rf.relative_path


@dataclass(frozen=True)
class IngestSettings:
    """What `ingest` uses, taken from the config once by `ingest_settings(cfg)`."""

    data_dir: Path
    sources: Mapping[str, Any]  # each enabled source -> its module's `Settings`
    max_concurrency: int
    download_deadline_s: float
    ingest_deadline_s: float
    max_bad_attempts: int
    bad_retry: timedelta


def ingest_settings(cfg) -> IngestSettings:
    http = cfg.sources.http
    enabled = [name for name in SOURCE_NAMES if getattr(getattr(cfg.sources, name), "enabled", True)]
    return IngestSettings(cfg.data_dir, MappingProxyType({name: module(name).settings(cfg) for name in enabled}),
                          http.max_concurrency, http.download_deadline_s, http.ingest_deadline_s, http.max_bad_attempts,
                          timedelta(hours=http.bad_retry_hours))


def _is_remote(url: str) -> bool:
    return urlsplit(url).scheme in ("http", "https")


def _local_source(url: str) -> Path:
    parts = urlsplit(url)
    return Path(parts.path) if parts.scheme == "file" else Path(url).expanduser()


def resolve(mod: ModuleType, s, t: datetime, client, expected: list[RemoteFile] | None = None) -> tuple[list[RemoteFile], list[str]]:
    """The files to fetch for time `t` (`expected`, or the module's) and a line for each one not there yet;
    `s` is the module's `Settings`."""
    expected = mod.expected_files(s, t) if expected is None else expected
    if not hasattr(mod, "list_url"):
        return expected, []
    urls = sorted({mod.list_url(s, rf.start) for rf in expected} or {mod.list_url(s, t)})
    listed: list[RemoteFile] = []
    for url in urls:
        try:
            listed.extend(mod.parse_listing(s, client.get_text(url), url))
        except FetchError as exc:
            log.warning("listing failed: %s", exc)
            raise ListingFailed(exc, [f"{rf.name}: listing unavailable ({exc.reason})" for rf in expected]
                                or [f"listing unavailable: {exc}"]) from None
    return mod.select(s, t, expected, listed)


class ListingFailed(Exception):
    """A listing the server failed to give: every expected file counts as missing, and as a server error."""

    def __init__(self, error: FetchError, missing: list[str]):
        super().__init__(str(error))
        self.error, self.missing = error, missing


def _already_held(row, catalog) -> bool:
    """Whether the catalog row is a downloaded file still on disk with its recorded size and checksum.

    A file whose size and modification time are as recorded is taken as unchanged, so a held file (a global
    GEOS-FP file is hundreds of MB) is hashed only after something touched it; if it still hashes as recorded,
    its new time is recorded.
    """
    if row is None or row.state != "downloaded" or not row.sha256 or not row.path:
        return False
    path = Path(row.path)
    try:
        stat = path.stat()
    except OSError:
        return False
    if not path.is_file() or stat.st_size != row.size:
        return False
    if row.mtime_ns == stat.st_mtime_ns:
        return True
    if sha256_file(path) != row.sha256:
        return False
    catalog.register_granule(row.source, row.name, row.version, row.start_time, row.end_time, row.path, row.size,
                             row.sha256, mtime_ns=stat.st_mtime_ns)
    return True


def _fetch(mod: ModuleType, s, settings: IngestSettings, rf: RemoteFile, client, reading: threading.Lock,
           stage_deadline: float) -> Path:
    url = mod.remote_url(s, rf)
    # The download's own clock starts when a slot frees up; the source's deadline caps it either way.
    deadline = min(stage_deadline, time.monotonic() + settings.download_deadline_s)
    if time.monotonic() >= deadline:
        raise FetchError(url, f"not started: ingest deadline of {settings.ingest_deadline_s:g} s reached")

    def check(path: Path) -> None:
        with reading:  # netCDF-C is not thread-safe; validation is short next to the transfer
            mod.validate(path, rf.name, **mod.validate_settings(s))

    if not _is_remote(url):
        path = _local_source(url)
        if not path.is_file():
            raise FetchError(url, "no such local file")
        check(path)
        return path
    return client.download(url, local_path(settings.data_dir, rf), validate=check, deadline=deadline)


def _still_refused(mod: ModuleType, s, rf: RemoteFile, held, client) -> bool:
    """Whether a granule marked bad `max_bad_attempts` times stays refused: its back-off has not passed and
    the server's copy looks the same as the one refused."""
    if held.retry_after is not None and datetime.now(timezone.utc) >= held.retry_after:
        log.info("%s: bad mark expired; trying it again", rf.name)
        return False
    url = mod.remote_url(s, rf)
    if held.remote_tag and _is_remote(url):
        now = client.remote_tag(url)
        if now is not None and now != held.remote_tag:
            log.info("%s: changed on the server (%s, was %s); trying it again", rf.name, now, held.remote_tag)
            return False
    return True


def ingest(source: str, settings: IngestSettings, catalog, t: datetime, client,
           expected: list[RemoteFile] | None = None) -> IngestResult:
    """Fetch and register every file of `source` that should exist by `t` for that time (or the `expected` ones)."""
    mod = module(source)
    t = utc(t)
    if source not in settings.sources:
        return IngestResult()
    s = settings.sources[source]
    try:
        wanted, missing = resolve(mod, s, t, client, expected)
    except ListingFailed as failed:
        errors = [] if not_published(failed.error) else [str(failed.error)]
        return IngestResult(missing=failed.missing, errors=errors)
    result = IngestResult(missing=list(missing))
    todo: list[RemoteFile] = []
    for rf in wanted:
        held = catalog.get_granule(rf.source, rf.name)
        if held is not None and held.state == "bad" and held.attempts >= settings.max_bad_attempts and _still_refused(mod, s, rf, held, client):
            until = f", refused until {isoformat(held.retry_after)}" if held.retry_after else ""
            result.bad.append(f"{rf.name}: {held.reason} (gave up after {held.attempts} attempts{until})")
        elif _already_held(held, catalog):
            result.files.append(Path(held.path))
        else:
            catalog.expect_granule(rf.source, rf.name, rf.version, rf.start, rf.end)
            todo.append(rf)

    workers = max(1, min(settings.max_concurrency, len(todo)))
    reading = threading.Lock()
    stage_deadline = time.monotonic() + settings.ingest_deadline_s
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"ingest-{source}") as pool:
        futures = [(rf, pool.submit(_fetch, mod, s, settings, rf, client, reading, stage_deadline)) for rf in todo]
        # Catalog writes stay on this thread; the pool only moves bytes.
        for rf, future in futures:
            try:
                path = future.result()
            except DataError as exc:
                log.warning("bad %s granule %s: %s", source, rf.name, exc.reason)
                catalog.mark_bad(rf.source, rf.name, exc.reason, remote_tag=getattr(exc, "remote_tag", None),
                                 retry_after=datetime.now(timezone.utc) + settings.bad_retry)
                result.bad.append(f"{rf.name}: {exc.reason}")
                continue
            except FetchError as exc:
                if not_published(exc):
                    log.info("%s not available yet: %s", rf.name, exc.reason)
                else:  # the server failed us; polling goes on, but an operator should see it
                    log.warning("%s: download failed: %s", rf.name, exc.reason)
                    result.errors.append(f"{rf.name}: {exc.reason}")
                result.missing.append(f"{rf.name}: {exc.reason}")
                continue
            stat = path.stat()
            catalog.register_granule(rf.source, rf.name, rf.version, rf.start, rf.end, str(path), stat.st_size,
                                     sha256_file(path), mtime_ns=stat.st_mtime_ns)
            result.files.append(path)
    log.log(
        logging.WARNING if result.errors else logging.INFO, "ingest %s for %s: %d files, %d missing (%d server errors), %d bad",
        source, isoformat(t), len(result.files), len(result.missing), len(result.errors), len(result.bad),
    )
    return result
