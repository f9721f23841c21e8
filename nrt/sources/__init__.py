"""Data sources: one module per source behind the same small interface, and the generic ingest over them.

Each module (`imerg`, `dpr`, `geosfp`, `dem`) exposes `NAME`, `FILE_PATTERN`, `parse_name(name)`,
`expected_files(cfg, t)`, `remote_url(cfg, rf)`, `validate(path, cfg, name)`, its reader and `identify(path)`.
Modules whose server is listed first (the PPS and GES DISC directories) also expose `list_url(cfg, t)`,
`parse_listing(cfg, text, url)` and `select(cfg, t, expected, listed) -> (files, missing)`.

`ingest()` is the only place that talks to both the network and the catalog: it works out what should exist,
skips what the catalog already holds with a matching checksum, downloads the rest with bounded concurrency,
validates each file before it is renamed into place, and records the outcome (downloaded, or bad with a
reason; a bad granule is retried at most `sources.http.max_bad_attempts` times).
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType
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
    files: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"files": [str(p) for p in self.files], "missing": self.missing, "bad": self.bad}


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


def significant(value: float, digits: int = 7) -> float:
    """`value` to `digits` significant digits (float32 precision), for compact JSON at any magnitude."""
    return float(f"{value:.{digits}g}") if math.isfinite(value) else value


def time_text(t: datetime | None) -> str | None:
    return None if t is None else isoformat(t)


def local_path(cfg, rf: RemoteFile) -> Path:
    """Where a downloaded file lives: <workdir>/data/<source>/<server folder>/<name>."""
    return cfg.data_dir / rf.source / rf.relative_path


def _is_remote(url: str) -> bool:
    return urlsplit(url).scheme in ("http", "https")


def _local_source(url: str) -> Path:
    parts = urlsplit(url)
    return Path(parts.path) if parts.scheme == "file" else Path(url).expanduser()


def resolve(mod: ModuleType, cfg, t: datetime, client) -> tuple[list[RemoteFile], list[str]]:
    """The files to fetch for time `t` and a line for each expected file that is not there yet."""
    expected = mod.expected_files(cfg, t)
    if not hasattr(mod, "list_url"):
        return expected, []
    urls = sorted({mod.list_url(cfg, rf.start) for rf in expected} or {mod.list_url(cfg, t)})
    listed: list[RemoteFile] = []
    for url in urls:
        try:
            listed.extend(mod.parse_listing(cfg, client.get_text(url), url))
        except FetchError as exc:
            log.warning("listing failed: %s", exc)
            return [], [f"{rf.name}: listing unavailable ({exc.reason})" for rf in expected] or [f"listing unavailable: {exc}"]
    return mod.select(cfg, t, expected, listed)


def _already_held(row) -> bool:
    """Whether the catalog row is a downloaded file still on disk with its recorded size and checksum."""
    if row is None or row.state != "downloaded" or not row.sha256 or not row.path:
        return False
    path = Path(row.path)
    if not path.is_file() or path.stat().st_size != row.size:
        return False
    return sha256_file(path) == row.sha256


def _fetch(mod: ModuleType, cfg, rf: RemoteFile, client, reading: threading.Lock) -> Path:
    url = mod.remote_url(cfg, rf)

    def check(path: Path) -> None:
        with reading:  # netCDF-C is not thread-safe; validation is short next to the transfer
            mod.validate(path, cfg, rf.name)

    if not _is_remote(url):
        path = _local_source(url)
        if not path.is_file():
            raise FetchError(url, "no such local file")
        check(path)
        return path
    return client.download(url, local_path(cfg, rf), validate=check)


def ingest(source: str, cfg, catalog, t: datetime, client) -> IngestResult:
    """Fetch and register every file of `source` that should exist by `t` for that time."""
    mod = module(source)
    t = utc(t)
    if not getattr(getattr(cfg.sources, source), "enabled", True):
        return IngestResult()
    wanted, missing = resolve(mod, cfg, t, client)
    result = IngestResult(missing=list(missing))
    max_bad = cfg.sources.http.max_bad_attempts
    todo: list[RemoteFile] = []
    for rf in wanted:
        held = catalog.get_granule(rf.source, rf.name)
        if held is not None and held.state == "bad" and held.attempts >= max_bad:
            result.bad.append(f"{rf.name}: {held.reason} (gave up after {held.attempts} attempts)")
        elif _already_held(held):
            result.files.append(Path(held.path))
        else:
            catalog.expect_granule(rf.source, rf.name, rf.version, rf.start, rf.end)
            todo.append(rf)

    workers = max(1, min(cfg.sources.http.max_concurrency, len(todo)))
    reading = threading.Lock()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"ingest-{source}") as pool:
        futures = [(rf, pool.submit(_fetch, mod, cfg, rf, client, reading)) for rf in todo]
        # Catalog writes stay on this thread; the pool only moves bytes.
        for rf, future in futures:
            try:
                path = future.result()
            except DataError as exc:
                log.warning("bad %s granule %s: %s", source, rf.name, exc.reason)
                catalog.mark_bad(rf.source, rf.name, exc.reason)
                result.bad.append(f"{rf.name}: {exc.reason}")
                continue
            except FetchError as exc:
                log.info("%s not available yet: %s", rf.name, exc.reason)
                result.missing.append(f"{rf.name}: {exc.reason}")
                continue
            catalog.register_granule(
                rf.source, rf.name, rf.version, rf.start, rf.end, str(path), path.stat().st_size, sha256_file(path)
            )
            result.files.append(path)
    log.info(
        "ingest %s for %s: %d files, %d missing, %d bad",
        source, isoformat(t), len(result.files), len(result.missing), len(result.bad),
    )
    return result
