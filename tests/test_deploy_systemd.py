"""systemd units: `systemd-analyze verify` and `security` on the shipped files, plus the settings the daemon relies on.

The validators come from Debian's `systemd` package (.ci/run installs it); the tests skip, saying so, where
`systemd-analyze` is absent. `verify` insists that ExecStart's binary exists, so it runs on copies whose
/opt/nrt/venv/bin/nrt is replaced by this checkout's `nrt` entry point; nothing else in the copies changes.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nrt import config

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "systemd"
INSTALL_DOC = REPO / "docs" / "install.md"
PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
INSTALLED_NRT = "/opt/nrt/venv/bin/nrt"
SERVICES = ["nrt-worker.service", "nrt-scheduler.service", "nrt-retention.service", "nrt-doctor.service"]
DAEMONS = ["nrt-worker.service", "nrt-scheduler.service"]


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value in order (systemd keys repeat, which configparser cannot hold)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict, section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}= should be set once, found {values}"
    return values[0]


def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package `systemd`; .ci/run installs it)")
    return tool


def nrt_entry_point() -> str:
    found = shutil.which("nrt") or str(Path(sys.executable).with_name("nrt"))
    assert Path(found).is_file(), "the `nrt` entry point is not installed (pip install -e .)"
    return found


def verifiable_copies(tmp_path: Path) -> Path:
    target = tmp_path / "units"
    target.mkdir()
    for unit in UNITS.iterdir():
        (target / unit.name).write_text(unit.read_text().replace(INSTALLED_NRT, nrt_entry_point()))
    return target


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd="/")


# -- systemd-analyze -------------------------------------------------------------------------------------------


def test_every_unit_passes_systemd_analyze_verify(tmp_path):
    tool = analyze()
    copies = verifiable_copies(tmp_path)
    units = sorted(str(p) for p in copies.iterdir())
    assert len(units) == len(list(UNITS.iterdir())) >= 6
    result = run([tool, "verify", "--man=no", *units])
    # verify exits 0 on mere warnings (an unknown key is "ignoring"), so any output at all is a failure.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_verify_output_catches_a_misspelt_setting(tmp_path):
    """The check above can fail: a typo in a copy of the worker unit is reported."""
    tool = analyze()
    copies = verifiable_copies(tmp_path)
    worker = copies / "nrt-worker.service"
    worker.write_text(worker.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    result = run([tool, "verify", "--man=no", str(worker)])
    assert "Unknown key 'NoNewPrivilege'" in result.stdout + result.stderr


def security_rating(tool: str, unit: Path) -> tuple[float, str, int]:
    # --threshold is on systemd's internal 0-100 scale: 49 = exposure 4.9, the top of the "OK" band.
    result = run([tool, "security", "--offline=true", "--threshold=49", str(unit)])
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", result.stdout + result.stderr)
    assert match, result.stdout[-2000:] + result.stderr
    return float(match.group(1)), match.group(2), result.returncode


def recorded_exposures() -> dict[str, float]:
    """The figures docs/install.md records, from its table rows `| nrt-x.service | 1.6 | OK |`."""
    rows = re.findall(r"^\|\s*`?(nrt-[\w-]+\.service)`?\s*\|\s*(\d+\.\d)\s*\|", INSTALL_DOC.read_text(), re.M)
    return {name: float(value) for name, value in rows}


@pytest.mark.parametrize("name", SERVICES)
def test_services_rate_ok_or_better_in_systemd_analyze_security(name):
    tool = analyze()
    exposure, rating, returncode = security_rating(tool, UNITS / name)
    # systemd's bands: PERFECT 0.0, SAFE 0.1-0.9, OK 1.0-4.9, MEDIUM 5.0-7.4, EXPOSED, UNSAFE, DANGEROUS.
    assert rating in ("PERFECT", "SAFE", "OK") and exposure <= 4.9 and returncode == 0, (name, exposure, rating)
    assert recorded_exposures().get(name) == exposure, f"docs/install.md should record {name}: {exposure} {rating}"


def test_security_rating_drops_when_the_sandbox_is_removed(tmp_path):
    """The rating is sensitive to the sandbox: the worker without it is no longer 'OK'."""
    tool = analyze()
    bare = tmp_path / "nrt-worker.service"
    sandbox = ("Protect", "Private", "Restrict", "SystemCall", "Capability", "NoNewPrivileges", "LockPersonality",
               "RemoveIPC", "DevicePolicy", "DeviceAllow", "UMask")
    bare.write_text("\n".join(l for l in (UNITS / "nrt-worker.service").read_text().splitlines() if not l.startswith(sandbox)))
    exposure, rating, returncode = security_rating(tool, bare)
    assert exposure > 4.9 and rating not in ("PERFECT", "SAFE", "OK") and returncode != 0


# -- what the daemon and the install guide rely on -------------------------------------------------------------


@pytest.mark.parametrize("name", DAEMONS)
def test_daemons_notify_restart_and_run_sandboxed_as_nrt(name):
    unit = parse_unit(UNITS / name)
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert int(one(unit, "Service", "WatchdogSec")) >= 30
    assert one(unit, "Service", "Restart") == "on-failure"
    assert int(one(unit, "Service", "RestartSec")) > 0
    assert one(unit, "Service", "User") == one(unit, "Service", "Group") == "nrt"
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert "/var/lib/nrt" in one(unit, "Service", "ReadWritePaths").split()
    for key in ("PrivateTmp", "NoNewPrivileges", "ProtectHome", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectControlGroups", "LockPersonality", "RestrictNamespaces", "RestrictSUIDSGID"):
        assert one(unit, "Service", key) == "yes", key
    assert one(unit, "Service", "CapabilityBoundingSet") == ""
    assert set(one(unit, "Service", "RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert unit["Service"]["SystemCallFilter"][0] == "@system-service"
    assert one(unit, "Unit", "PartOf") == "nrt.target"
    assert one(unit, "Install", "WantedBy") == "nrt.target"


@pytest.mark.parametrize("name", ["nrt-worker.service", "nrt-doctor.service"])
def test_gpu_units_see_only_nvidia_devices_and_allow_jit(name):
    unit = parse_unit(UNITS / name)["Service"]
    assert unit["DevicePolicy"] == ["closed"]
    allowed = {entry.split()[0] for entry in unit["DeviceAllow"]}
    assert {"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "char-nvidia*"} <= allowed
    assert all(entry.split()[1] == "rw" for entry in unit["DeviceAllow"])
    assert "PrivateDevices" not in unit  # a private /dev has no /dev/nvidia*
    assert "MemoryDenyWriteExecute" not in unit  # oneDNN / Triton JIT need W+X
    assert "ProcSubset" not in unit  # the CUDA driver reads /proc/driver/nvidia


def test_scheduler_has_no_devices_and_no_writable_executable_memory():
    unit = parse_unit(UNITS / "nrt-scheduler.service")["Service"]
    assert unit["PrivateDevices"] == ["yes"] and unit["MemoryDenyWriteExecute"] == ["yes"]
    assert "DeviceAllow" not in unit


def test_credentials_are_loaded_under_the_names_nrt_reads():
    for name in SERVICES:
        unit = parse_unit(UNITS / name)["Service"]
        creds = [entry.split(":", 1) for entry in unit.get("LoadCredential", [])]
        assert creds, name
        for cred, source in creds:
            assert cred in config.SECRET_ENV, f"{name}: nrt reads no credential called {cred!r}"
            assert source == f"/etc/nrt/credentials/{cred}"
        assert not any(re.search(r"(?i)password|token|email|NRT_DB_URL", e) for e in unit.get("Environment", [])), name


def test_credentials_from_the_credentials_directory_reach_the_config(tmp_path, monkeypatch):
    """What LoadCredential= provides ($CREDENTIALS_DIRECTORY/<name>) is what nrt.config reads."""
    for env in config.SECRET_ENV.values():
        monkeypatch.delenv(env, raising=False)
    (tmp_path / "pps_email").write_text("ops@example.org\n")
    (tmp_path / "database_url").write_text("postgresql://nrt:pw@db.example.org/nrt\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = config.from_dict({}, "<test>")
    assert cfg.secrets.pps_email == "ops@example.org"
    assert cfg.database_url == "postgresql://nrt:pw@db.example.org/nrt"


def exec_argv(unit_name: str) -> list[str]:
    argv = shlex.split(one(parse_unit(UNITS / unit_name), "Service", "ExecStart"))
    assert argv[0] == INSTALLED_NRT and argv[1:3] == ["--config", "/etc/nrt/nrt.toml"]
    return argv[1:]


@pytest.mark.parametrize("name", SERVICES)
def test_exec_start_is_a_command_this_nrt_accepts(name):
    from nrt.cli import build_parser

    args = build_parser().parse_args(exec_argv(name))
    assert callable(args.handler)


def test_retention_timer_runs_products_prune_daily_and_catches_up():
    timer = parse_unit(UNITS / "nrt-retention.timer")
    assert one(timer, "Timer", "Unit") == "nrt-retention.service"
    assert (UNITS / "nrt-retention.service").is_file()
    assert one(timer, "Timer", "Persistent") == "true"
    assert one(timer, "Timer", "OnCalendar").startswith("*-*-* ")
    assert exec_argv("nrt-retention.service")[-2:] == ["products", "prune"]
    assert one(parse_unit(UNITS / "nrt-retention.service"), "Service", "Type") == "oneshot"


def test_metrics_ports_match_the_scrape_config():
    """Worker on service.metrics_port, scheduler on $NRT_METRICS_PORT from its unit; Prometheus scrapes both."""
    import yaml

    environment = " ".join(parse_unit(UNITS / "nrt-scheduler.service")["Service"].get("Environment", []))
    scheduler_port = int(re.search(r"\bNRT_METRICS_PORT=(\d+)", environment).group(1))
    worker_port = config.from_dict({}, "<test>").service.metrics_port
    assert "NRT_METRICS_PORT" not in " ".join(parse_unit(UNITS / "nrt-worker.service")["Service"].get("Environment", []))
    scrape = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]}
    assert scrape["nrt-worker"]["static_configs"][0]["targets"] == [f"127.0.0.1:{worker_port}"]
    assert scrape["nrt-scheduler"]["static_configs"][0]["targets"] == [f"127.0.0.1:{scheduler_port}"]
    assert scheduler_port != worker_port
