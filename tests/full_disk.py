"""A full file system at a path: a tiny tmpfs mounted there and filled up (needs root and mount rights)."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def full_disk(path: Path, size_kib: int = 64):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up (needs root and CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        with open(path / ".filler", "wb", buffering=0) as fh:  # hidden: product and data listings skip it
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
