"""`nrt demo` as a user runs it: a subprocess that generates a twin, serves it, runs the service and reports.

The config passed with --config keeps it small (2° x 1.5° domain, 4 members, 2 sampler steps); everything
else is the demo's own path: `nrt twin serve` child process, scheduler and worker on an accelerated clock,
SQLite in the work directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr

from pipeline_helpers import MEMBERS, config_data, model_settings, write_toml
from process_helpers import run_side_by_side, selected_tests
from nrt import config
from nrt.store import Catalog

REPO = Path(__file__).resolve().parents[1]


METHODS = ("diffusion", "csgd")


@pytest.fixture(scope="module")
def demo_runs(request, tmp_path_factory) -> dict[str, tuple]:
    """Every selected method's 2-cycle demo: {method: (base config, work directory, CompletedProcess)}.

    Each demo keeps about one core busy (one thread; mostly imports, the twin and products), so the two run at
    the same time."""
    wanted = {method for method in METHODS
              if f"test_demo_runs_two_cycles_and_reports_what_it_made[{method}]" in selected_tests(request)}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in config.SECRET_ENV.values():  # offline and without credentials
        env.pop(name, None)
    roots = {method: tmp_path_factory.mktemp(f"demo-{method}") for method in METHODS if method in wanted}
    bases = {method: config_data(root / "ignored", "http://127.0.0.1:1", model_settings(tmp_path_factory)) for method, root in roots.items()}
    commands = {
        method: ([sys.executable, "-m", "nrt.cli", "--config", str(write_toml(root / "small.toml", bases[method])), "demo",
                  "--cycles", "2", "--workdir", str(root / "demo"), *(["--method", method] if method != "diffusion" else [])], root)
        for method, root in roots.items()
    }
    done = run_side_by_side(commands, 300, cwd=REPO, env=env)
    return {method: (bases[method], roots[method] / "demo", done[method]) for method in roots}


@pytest.mark.parametrize("method", METHODS)
def test_demo_runs_two_cycles_and_reports_what_it_made(demo_runs, method):
    base, workdir, done = demo_runs[method]
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.startswith("nrt demo: 2 cycles (2024-04-19T00:30:00Z .. 2024-04-19T01:00:00Z)")
    assert f"with {method}, work directory {workdir}" in out
    assert re.search(r"products \(92 files, [\d.]+ MB\):", out)  # 2 x (9 x (ensemble, summary, 3 accumulations) + 1 quicklook)
    assert "cycle 2024-04-19T01:00:00Z: 9 accumulation_1h, 9 accumulation_3h, 9 accumulation_6h, 9 ensemble, 1 quicklook, 9 summary" in out
    assert re.search(r"jobs: .*done 2", out) and re.search(r"products: current 52, superseded 40", out)
    # The demo runs in the season of the shipped checkpoint's training twin: its input guard passes.
    assert 'nrt_cycles_total{outcome="ok"} 2.0' in out
    overpasses = re.search(r"^ +nrt_verification_overpasses_total ([0-9.]+)$", out, re.M)
    assert overpasses and float(overpasses[1]) >= 1  # the 01:00 cycle verifies against the 00:32 DPR granule
    assert re.search(r"demo: 100%.*18/18", done.stderr)  # the progress display counts valid times

    used = config.load(workdir / "config.toml")  # the config it ran with reads back
    assert used.workdir == workdir and used.model.members == MEMBERS and used.domain.west == base["domain"]["west"]
    assert used.sources.imerg.pps_url.startswith("http://127.0.0.1:")
    assert "demo@example.org" not in (workdir / "config.toml").read_text()  # secrets are never written
    assert (workdir / "quicklook.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    catalog = Catalog.open(used.database_url)
    try:
        ensembles = catalog.products(kind="ensemble")
        assert len(ensembles) == 18 and {p.members for p in ensembles} == {MEMBERS}
        assert all(Path(p.path).is_file() for p in catalog.products())
        for product in ensembles:
            with xr.open_dataset(product.path) as ds:
                assert ds.attrs["method"] == method
                assert ds.attrs["input_check"] == ("ok" if method == "diffusion" else "not_run")
        assert [(r.state, r.degraded) for r in catalog.runs()] == [("ok", []), ("ok", [])]
        assert catalog.scores(truth_source="dpr")
    finally:
        catalog.close()


@pytest.mark.parametrize("cycles", ["0", "x"])
def test_demo_refuses_a_bad_cycle_count(tmp_path, cycles):
    done = subprocess.run(
        [sys.executable, "-m", "nrt.cli", "demo", "--cycles", cycles, "--workdir", str(tmp_path / "demo")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "--cycles" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "demo" / "twin").exists()


def test_ctrl_c_stops_the_demo_and_its_mirror_promptly(tmp_path_factory, tmp_path):
    import signal
    import time
    import urllib.error
    import urllib.request

    base = config_data(tmp_path / "ignored", "http://127.0.0.1:1", model_settings(tmp_path_factory))
    conf = write_toml(tmp_path / "small.toml", base)
    workdir = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "demo.log"
    # A suite started in the background (`cmd &` in a script) inherits SIGINT ignored, and so would the demo,
    # where Python then installs no KeyboardInterrupt handler. A handler here is reset to the default in the
    # child at exec, as an interactive terminal gives it.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "nrt.cli", "--config", str(conf), "demo", "--cycles", "3", "--workdir", str(workdir)],
                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err,
            )
    finally:
        signal.signal(signal.SIGINT, inherited)
    try:
        deadline = time.monotonic() + 120
        while "diffusion" not in log.read_text(errors="replace") and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()[-2000:]
        mirror = config.load(workdir / "config.toml").sources.dem.url
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text(errors="replace")
    assert "nrt: interrupted" in text and "Traceback" not in text
    with pytest.raises(urllib.error.URLError):  # the `nrt twin serve` child went with it
        urllib.request.urlopen(mirror, timeout=5)
