"""Small file-system helpers shared by every writer: atomic replacement and checksums."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from nrt.errors import DataError


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
