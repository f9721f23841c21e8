"""The fault-injection soak in its short form, 1 simulated day (48 cycles): the real scheduler, two real worker
processes running the real pipeline on the twin mirror behind the fault-injecting proxy, the real catalog and
publisher, with mirror faults, late and missing granules, kill -9, NaN model outputs, disk-full episodes and a
database outage (on PostgreSQL also a restart). Nothing may be lost, duplicated, partial or superseded by a worse
product. The 30-day figures are in docs/reliability.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CYCLES = 48


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory) -> Path:
    """Both databases' runs share one generated twin (the script reuses a tree made with the same spec)."""
    return tmp_path_factory.getbasetemp() / "soak-twin"


def soak(tmp_path: Path, twin_dir: Path, *args: str) -> dict:
    out = tmp_path / "soak.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "soak.py"), "--days", "1", "--cycle-seconds", "1.2", "--warmup-s", "10", "--seed", "3",
         "--broken-rate", "0.05", "--http-fault-rate", "0.05", "--late", "0.1", "--missing", "0.02",
         "--workdir", str(tmp_path / "soak"), "--twin-dir", str(twin_dir), "--json", str(out),
         "--timeout-s", "600", *args],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def check(result: dict) -> None:
    assert result["complete"] and result["cycles"] == result["cycles_enqueued"] == result["cycles_finished"] == CYCLES
    assert (result["lost"], result["duplicated"], result["partial"], result["worse_superseding"]) == (0, 0, 0, 0)
    outcomes = result["outcomes"]
    assert outcomes.get("ok", 0) + outcomes.get("degraded", 0) + outcomes.get("failed", 0) == CYCLES
    # A cycle may fail for good only when the mirror has no IMERG for it (ingest), never because of the injected
    # infrastructure faults (kill -9, outage, disk full: stage "cycle") or refused NaN outputs, which are retried.
    assert set(result["failure_reasons"]) <= {"ingest"}
    done = CYCLES - outcomes.get("failed", 0)
    assert result["products"] == done * 3 * 3  # 3 valid times a cycle: ensemble, summary, 1 h accumulation
    assert outcomes.get("ok after a retry", 0) + outcomes.get("degraded after a retry", 0) >= 1  # refused NaN outputs, redone
    assert result["faults"]["kill"] >= 1 and result["faults"]["db_outage"] == 1
    assert sum(result["http_faults"].values()) >= 1


def test_soak_on_sqlite(tmp_path, twin_dir):
    check(soak(tmp_path, twin_dir, "--database", "sqlite"))


@pytest.mark.postgres
def test_soak_on_postgresql_with_a_restart_and_an_outage(tmp_path, twin_dir):
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        pytest.skip("initdb/pg_ctl not installed: no throwaway PostgreSQL cluster to restart and cut off")
    result = soak(tmp_path, twin_dir, "--database", "postgresql")
    check(result)
    assert result["faults"]["db_restart"] == 1
