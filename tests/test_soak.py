"""The fault-injection soak in its short form: real scheduler, two real worker processes, real catalog and publisher,
with kill -9, NaN model outputs, disk-full episodes and (PostgreSQL) a restart and an outage. Nothing may be lost,
duplicated, partial or superseded by a worse product. The 30-day figures are in docs/reliability.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def soak(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "soak.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "soak.py"), "--days", "0.5", "--cycle-seconds", "0.5", "--seed", "3",
         "--broken-rate", "0.15", "--workdir", str(tmp_path / "soak"), "--json", str(out), "--timeout-s", "240", *args],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def check(result: dict) -> None:
    assert result["cycles"] == result["cycles_enqueued"] == 24
    assert (result["lost"], result["duplicated"], result["partial"], result["worse_superseding"]) == (0, 0, 0, 0)
    assert sum(result["outcomes"].values()) == 24 and result["outcomes"].get("failed", 0) == 0
    assert result["outcomes"].get("ok after retry", 0) >= 1  # refused NaN outputs really happened, and were redone
    assert result["products"] == 24 * 3 * 3  # 3 valid times a cycle: ensemble, summary, 1 h accumulation
    assert result["faults"]["kill"] >= 1


def test_soak_on_sqlite(tmp_path):
    check(soak(tmp_path, "--database", "sqlite"))


@pytest.mark.postgres
def test_soak_on_postgresql_with_a_restart_and_an_outage(tmp_path):
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        pytest.skip("initdb/pg_ctl not installed: no throwaway PostgreSQL cluster to restart")
    result = soak(tmp_path, "--database", "postgresql", "--outage-s", "4")
    check(result)
    assert result["faults"]["db_restart"] == 1 and result["faults"]["db_outage"] == 1
