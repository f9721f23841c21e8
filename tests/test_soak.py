"""The fault-injection soak in its short form, 1 simulated day (48 cycles): the real scheduler, two real worker
processes running the real pipeline on the twin mirror behind the fault-injecting proxy, the real catalog and
publisher, with mirror faults, late and missing granules, kill -9, NaN model outputs, disk-full episodes and a
database outage (on PostgreSQL also a restart). Nothing may be lost, duplicated, partial or superseded by a worse
product. The 30-day figures are in docs/reliability.md.

Each soak is paced by the clock (1.2 s a cycle) and keeps about one core busy, so the SQLite and the PostgreSQL
soak run at the same time, each with its own twin, work directory and ports."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from process_helpers import run_side_by_side, selected_tests

REPO = Path(__file__).resolve().parents[1]
CYCLES = 48


def soak_command(root: Path, database: str) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / "soak.py"), "--days", "1", "--cycle-seconds", "1.2", "--warmup-s", "10",
            "--seed", "3", "--broken-rate", "0.05", "--http-fault-rate", "0.05", "--late", "0.1", "--missing", "0.02",
            "--workdir", str(root / "soak"), "--twin-dir", str(root / "twin"), "--json", str(root / "soak.json"),
            "--timeout-s", "600", "--database", database]


@pytest.fixture(scope="module")
def soaks(request, tmp_path_factory) -> dict[str, dict | str]:
    """What every soak this session selected gave, run side by side: {database: soak.json, or why there is none
    (the end of its output), so one soak's failure spares the other's test}."""
    wanted = selected_tests(request)
    databases = ["sqlite"] if "test_soak_on_sqlite" in wanted else []
    if "test_soak_on_postgresql_with_a_restart_and_an_outage" in wanted and shutil.which("initdb") and shutil.which("pg_ctl"):
        databases.append("postgresql")
    roots = {database: tmp_path_factory.mktemp(f"soak-{database}") for database in databases}
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = run_side_by_side({database: (soak_command(root, database), root) for database, root in roots.items()}, 900, env=env)
    return {
        database: json.loads((roots[database] / "soak.json").read_text()) if run.returncode == 0
        else f"soak.py exited with {run.returncode}:\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
        for database, run in done.items()
    }


def check(result: dict | str) -> None:
    assert isinstance(result, dict), result
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


def test_soak_on_sqlite(soaks):
    check(soaks["sqlite"])


@pytest.mark.postgres
def test_soak_on_postgresql_with_a_restart_and_an_outage(soaks):
    if "postgresql" not in soaks:
        pytest.skip("initdb/pg_ctl not installed: no throwaway PostgreSQL cluster to restart and cut off")
    result = soaks["postgresql"]
    check(result)
    assert result["faults"]["db_restart"] == 1
