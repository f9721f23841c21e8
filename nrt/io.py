"""Small file-system helpers shared by every writer: atomic replacement, checksums and the retention sweep."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nrt.errors import DataError

log = logging.getLogger("nrt.io")

_TEMP_NAME = re.compile(r"^\..+\.part-\d+-[0-9a-f]+(\.[A-Za-z0-9]+)?$")  # temp_name, products.publish.staged_name


def temp_name(final: Path) -> Path:
    """A hidden sibling of `final`; listings and readers skip names starting with '.'."""
    return final.with_name(f".{final.name}.part-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `final`; on success fsync and rename it onto `final`, on error remove it.

    A crash or kill -9 leaves at most a hidden `.name.part-*` file, never a half-written `final`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


def is_temp_name(name: str) -> bool:
    """A writer's temp file (`temp_name`, or one keeping its suffix); a stale one is a crashed writer's."""
    return _TEMP_NAME.match(name) is not None


@dataclass
class Deletions:
    """Files deleted (and their bytes) by one retention run."""

    files: int = 0
    bytes: int = 0

    def delete(self, path: Path) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        self.files += 1
        self.bytes += size

    def line(self, pruned: str) -> str:
        return f"pruned {pruned}; deleted {self.files} files ({self.bytes / 1e6:.1f} MB)"


def older_than(path: Path, cutoff_epoch: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff_epoch
    except FileNotFoundError:
        return False


def inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def sweep(root: Path, known: set[Path], ours: Callable[[str], object], cutoff_epoch: float, deletions: Deletions,
          skip: set[Path] = frozenset()) -> None:
    """Under `root`, delete files older than the cutoff that are stale temp files, or that `ours(name)` claims
    (a product or granule name) and `known` (resolved paths a catalog row names) lacks; then remove the empty
    folders as old. A writer renames its file before registering it, so the cutoff leaves it time."""
    if not root.is_dir():
        return
    for dirpath, _, filenames in os.walk(root, topdown=False):
        folder = Path(dirpath)
        if any(folder == s or folder.is_relative_to(s) for s in skip):
            continue
        for name in filenames:
            path = folder / name
            temp = is_temp_name(name)
            if path in skip or not (temp or ours(name)) or path.resolve() in known:
                continue
            if older_than(path, cutoff_epoch):
                log.info("retention: deleting %s file %s", "temp" if temp else "orphan", path)
                deletions.delete(path)
        if folder != root and not any(folder.iterdir()) and older_than(folder, cutoff_epoch):
            folder.rmdir()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_json_file(path: str | os.PathLike, what: str, where: str | None = None) -> dict:
    """The JSON document in `path`, or one DataError line naming `where` (default: the path) and the reason.

    `what` names the kind of file in the message ("CSGD parameter file", "error model file").
    """
    where = where or str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise DataError(where, f"{what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(where, f"cannot read {what} ({exc.__class__.__name__}: {exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(where, f"{what} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
