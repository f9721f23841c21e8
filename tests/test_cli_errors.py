"""Unwritable outputs and closed pipes end in one line and a clear exit code, never a traceback (issue 16, failure 10)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nrt.cli import main

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *args) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err
    return code, err


def test_demo_workdir_that_is_a_file(tmp_path, capsys):
    existing = tmp_path / "a-file"
    existing.write_text("x")
    code, err = run(capsys, "demo", "--workdir", str(existing), "--no-progress")
    assert code == 2 and err.strip() == f"nrt: error: {existing}: File exists"


def test_demo_workdir_on_a_read_only_file_system(tmp_path, capsys):
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=16k", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs (needs root): {done.stderr.strip()}")
    try:
        code, err = run(capsys, "demo", "--workdir", str(mount / "demo"), "--no-progress")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    assert code == 2 and err.strip() == f"nrt: error: {mount / 'demo'}: Read-only file system"


def test_verify_out_inside_a_file(cfg, tmp_path, capsys):
    from nrt.store import Catalog

    Catalog.from_config(cfg, migrate=True).close()
    config = tmp_path / "nrt.toml"
    config.write_text(f'[general]\nworkdir = "{cfg.workdir}"\n')
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = run(capsys, "--config", str(config), "verify", "--start", "2024-06-01T00:00Z", "--end", "2024-06-01T01:00Z",
                    "--out", str(blocker / "report"))
    assert code == 2 and err.startswith("nrt: error: ") and str(blocker) in err and len(err.strip().splitlines()) == 1, err


def test_catalog_status_into_a_closed_pipe_is_quiet(cfg, tmp_path):
    """`nrt catalog status | head -0`: the reader is gone before we write."""
    from nrt.store import Catalog

    Catalog.from_config(cfg, migrate=True).close()
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    config = tmp_path / "nrt.toml"
    config.write_text(f'[general]\nworkdir = "{cfg.workdir}"\n')
    done = subprocess.run([sys.executable, "-m", "nrt.cli", "--config", str(config), "catalog", "status"],
                          stdout=write_end, stderr=subprocess.PIPE, text=True, env=env, timeout=60)
    os.close(write_end)
    assert done.returncode == 141 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
