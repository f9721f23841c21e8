"""`nrt doctor` against a working demo-like deployment and a broken one, plus its checks one by one.

Everything is real: a SQLite catalog made by `nrt catalog init`, the twin's mirror server on 127.0.0.1 (PPS
Basic auth included) for the base URLs, a checkpoint written by nrt.model.checkpoint, credentials in a $CREDENTIALS_DIRECTORY as systemd makes it.
"""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from nrt import config, doctor
from nrt.cli import main

PPS_EMAIL = "doctor-7f3a91@example.org"
DB_PASSWORD = "Tr0ub4dor-s3cret"


class StatusHandler(BaseHTTPRequestHandler):
    """/NNN answers with status NNN: a server in trouble, or one that refuses HEAD (405)."""

    def do_HEAD(self):
        self.send_response(int(self.path.strip("/")))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        self.send_response(200 if self.path == "/405" else int(self.path.strip("/")))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path):
    """The twin's mirror server (`nrt twin serve`) on a tree with the real servers' top folders."""
    from nrt.twin.server import serve_in_thread

    root = tmp_path / "mirror"
    for sub in ("pps/imerg/early", "nccs/datashare/gmao/geos-fp/forecast", "dem"):
        (root / sub).mkdir(parents=True)
    (root / "dem" / "nrt_twin_dem.nc").write_bytes(b"CDF\x01")
    server, base_url = serve_in_thread(root)
    yield base_url
    server.stop()


@pytest.fixture
def status_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StatusHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def clean_env(monkeypatch):
    for env in config.SECRET_ENV.values():
        monkeypatch.delenv(env, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    return monkeypatch


@pytest.fixture
def checkpoint_path(tmp_path) -> Path:
    from nrt.model import checkpoint

    path = tmp_path / "ckpt" / "model"
    checkpoint.save(path, {"w": torch.arange(6, dtype=torch.float32)}, {"model": {"note": "doctor test"}})
    return path


def write_config(tmp_path: Path, base: str, checkpoint: Path, imerg_base: str | None = None) -> Path:
    imerg_base = imerg_base or base
    path = tmp_path / "nrt.toml"
    path.write_text(
        f"""
[general]
workdir = "{tmp_path / 'work'}"
[sources.imerg]
pps_url = "{imerg_base}/pps"
[sources.dpr]
pps_url = "{base}/pps"
[sources.geosfp]
url = "{base}/nccs/datashare/gmao/geos-fp"
[sources.dem]
url = "{base}/dem/nrt_twin_dem.nc"
[model]
device = "cpu"
checkpoint = "{checkpoint}"
"""
    )
    return path


def credentials(tmp_path: Path, monkeypatch, **values: str) -> None:
    directory = tmp_path / "credentials"
    directory.mkdir()
    for name, value in values.items():
        (directory / name).write_text(value + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))


def table_rows(out: str) -> dict[str, tuple[str, str]]:
    """check -> (status, detail), cut at the header's column positions (check names contain spaces)."""
    header, *rows, _summary = out.splitlines()
    status_at, detail_at = header.index("STATUS"), header.index("DETAIL")
    return {row[:status_at].strip(): (row[status_at:detail_at].strip(), row[detail_at:]) for row in rows}


# -- the command, end to end -----------------------------------------------------------------------------------


def test_doctor_passes_on_a_working_demo_deployment(tmp_path, mirror, checkpoint_path, clean_env, capsys):
    cfg_file = write_config(tmp_path, mirror, checkpoint_path)
    credentials(tmp_path, clean_env, pps_email=PPS_EMAIL)
    assert main(["--config", str(cfg_file), "catalog", "init"]) == 0
    capsys.readouterr()

    code = main(["--config", str(cfg_file), "doctor", "--min-free-gib", "0.001"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    rows = table_rows(out)
    for check in ("config", "workdir", "checkpoint", "catalog", "credential pps", "server imerg", "server dpr",
                  "server geosfp", "server dem"):
        assert rows[check][0] == "OK", (check, rows[check])
    assert rows["gpu"][0] == ("WARN" if torch.cuda.is_available() else "OK")  # model.device = cpu
    assert rows["clock"][0] in ("OK", "WARN")
    assert "$CREDENTIALS_DIRECTORY" in rows["credential pps"][1]
    assert "HTTP 200" in rows["server dem"][1]
    assert "HTTP 301" in rows["server imerg"][1]  # PPS took the e-mail and redirects /pps to /pps/
    assert out.splitlines()[-1].endswith("0 failure(s)")
    assert PPS_EMAIL not in out + err

    assert main(["--config", str(cfg_file), "doctor", "--min-free-gib", "0.001", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert {f["check"]: f["status"] for f in report["findings"]}["catalog"] == "ok"


def test_doctor_fails_on_a_broken_deployment_without_printing_secrets(tmp_path, mirror, checkpoint_path, clean_env, capsys):
    unreachable = f"http://127.0.0.1:{closed_port()}"
    cfg_file = write_config(tmp_path, mirror, checkpoint_path, imerg_base=unreachable)
    # A PostgreSQL catalog nobody listens for, its password in the credential; no PPS e-mail at all.
    credentials(tmp_path, clean_env, database_url=f"postgresql://nrt:{DB_PASSWORD}@127.0.0.1:{closed_port()}/nrt")

    code = main(["--config", str(cfg_file), "doctor", "--min-free-gib", "0.001"])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    rows = table_rows(out)
    assert rows["catalog"][0] == "FAIL" and "127.0.0.1" in rows["catalog"][1]
    assert rows["credential pps"][0] == "FAIL" and "pps_email missing" in rows["credential pps"][1]
    assert rows["credential database_url"][0] == "OK"
    assert rows["server imerg"] == ("FAIL", f"{unreachable}/pps: unreachable (Connection refused)")
    assert rows["server dpr"][0] == rows["server geosfp"][0] == "OK"
    assert out.splitlines()[-1].endswith("3 failure(s)")
    assert DB_PASSWORD not in out + err


def test_doctor_with_an_invalid_config_exits_2_naming_the_key(tmp_path, clean_env, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\ndevice = 'tpu'\n")
    assert main(["--config", str(bad), "doctor"]) == 2
    assert "model.device" in capsys.readouterr().err


def test_nrt_doctor_runs_as_a_command(tmp_path, mirror, checkpoint_path, clean_env):
    """The installed entry point, as the nrt-doctor.service unit runs it; the exit status carries the verdict."""
    cfg_file = write_config(tmp_path, mirror, checkpoint_path)
    nrt = shutil.which("nrt")
    assert nrt, "the nrt entry point is not installed (pip install -e .)"
    result = subprocess.run([nrt, "--config", str(cfg_file), "doctor"], capture_output=True, text=True, timeout=120,
                            check=False, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1
    assert "no catalog here" in result.stdout and "pps_email missing" in result.stdout


# -- single checks ------------------------------------------------------------------------------------------


def test_catalog_check_names_an_unmigrated_catalog(tmp_path, clean_env):
    workdir = tmp_path / "work"
    workdir.mkdir()
    sqlite3.connect(workdir / "catalog.sqlite").close()  # a file, but no nrt schema in it
    cfg = config.from_dict({"general": {"workdir": str(workdir)}}, "<test>")
    finding = doctor.check_catalog(cfg)
    assert finding.status == doctor.FAIL and "nrt catalog init" in finding.detail


def test_checkpoint_check_fails_on_altered_weights(tmp_path, checkpoint_path, clean_env):
    cfg = config.from_dict({"model": {"checkpoint": str(checkpoint_path)}}, "<test>")
    assert doctor.check_checkpoint(cfg).status == doctor.OK
    weights = checkpoint_path.with_name("model.safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    finding = doctor.check_checkpoint(cfg)
    assert finding.status == doctor.FAIL and "sha256" in finding.detail


def test_csgd_check_reads_the_parameters_the_method_or_fallback_needs(tmp_path, clean_env):
    assert doctor.check_csgd(config.from_dict({}, "<test>")).status == doctor.OK  # builtin:csgd, the fallback
    bad = tmp_path / "csgd.json"
    bad.write_text('{"format": "nrt-csgd", "version": 99}')
    finding = doctor.check_csgd(config.from_dict({"model": {"method": "csgd", "csgd_params": str(bad)}}, "<test>"))
    assert finding.status == doctor.FAIL and str(bad) in finding.detail and "version" in finding.detail
    unused = config.from_dict({"model": {"fallback": False, "csgd_params": str(bad)}}, "<test>")
    assert doctor.check_csgd(unused).status == doctor.OK


def test_probe_url_classifies_answers(tmp_path, mirror, status_server):
    assert doctor.probe_url(f"{mirror}/dem/nrt_twin_dem.nc") == (doctor.OK, f"{mirror}/dem/nrt_twin_dem.nc: HTTP 200")
    assert doctor.probe_url(f"{mirror}/dem/elsewhere.nc")[0] == doctor.WARN  # 404
    assert doctor.probe_url(f"{status_server}/503")[0] == doctor.WARN
    assert doctor.probe_url(f"{status_server}/405") == (doctor.OK, f"{status_server}/405: HTTP 200")  # HEAD refused, GET
    assert doctor.probe_url(f"http://127.0.0.1:{closed_port()}/pps")[0] == doctor.FAIL
    local = tmp_path / "dem.nc"
    assert doctor.probe_url(str(local))[0] == doctor.FAIL
    local.write_bytes(b"x")
    assert doctor.probe_url(str(local))[0] == doctor.OK


def test_probe_url_signs_like_the_downloads_and_reports_a_refused_login(mirror):
    from nrt.sources.http import Credentials

    pps = f"{mirror}/pps/imerg/early/"
    assert doctor.probe_url(pps) == (doctor.OK, f"{pps}: HTTP 401 (answers; needs a login)")
    good = Credentials(pps_email=PPS_EMAIL, pps_prefixes=(f"{mirror}/pps",))
    assert doctor.probe_url(pps, good) == (doctor.OK, f"{pps}: HTTP 200")
    refused = Credentials(pps_email="not-an-email", pps_prefixes=(f"{mirror}/pps",))
    status, detail = doctor.probe_url(pps, refused)
    assert status == doctor.FAIL and "credentials were refused" in detail and "not-an-email" not in detail


def test_servers_are_probed_once_per_base_url(cfg):
    probed = []

    def probe(url, credentials):
        probed.append(url)
        return doctor.OK, url

    findings = doctor.check_servers(cfg, probe)
    assert [f.check for f in findings] == ["server imerg", "server dpr", "server geosfp", "server dem"]
    assert len(probed) == len(set(probed)) == 3  # IMERG and DPR share the PPS base URL


@pytest.mark.parametrize("device", ["cpu", "auto", "cuda"])
def test_gpu_check_follows_model_device(cfg, device):
    cfg.model.device = device
    finding = doctor.check_gpu(cfg)
    if torch.cuda.is_available():
        assert finding.status == (doctor.WARN if device == "cpu" else doctor.OK) or "bfloat16" in finding.detail
        assert torch.cuda.get_device_name() in finding.detail
    else:
        assert finding.status == {"cpu": doctor.OK, "auto": doctor.WARN, "cuda": doctor.FAIL}[device]


def test_disk_check_compares_free_space_with_the_threshold(cfg):
    cfg.workdir.mkdir(parents=True)
    free = shutil.disk_usage(cfg.workdir).free
    (finding,) = doctor.check_disk(cfg, min_free_bytes=free // 2)  # workdir and products share a file system
    assert finding.status == doctor.OK and f"{free / doctor.GIB:.1f} GiB free" in finding.detail
    (finding,) = doctor.check_disk(cfg, min_free_bytes=free * 2)
    assert finding.status == doctor.FAIL


def test_workdir_that_is_a_file_fails(tmp_path, clean_env):
    blocker = tmp_path / "work"
    blocker.write_text("not a directory")
    cfg = config.from_dict({"general": {"workdir": str(blocker)}}, "<test>")
    rows = {f.check: f for f in doctor.check_config(cfg)}
    assert rows["workdir"].status == doctor.FAIL and rows["products dir"].status == doctor.FAIL


def test_alert_area_outside_the_domain_warns(clean_env):
    area = {"name": "far_away", "west": 10.0, "south": 10.0, "east": 11.0, "north": 11.0}
    cfg = config.from_dict({"alerts": {"areas": [area]}}, "<test>")
    rows = {f.check: f for f in doctor.check_config(cfg)}
    assert rows["alert areas"].status == doctor.WARN and "far_away" in rows["alert areas"].detail


def completed(argv, returncode, stdout):
    return subprocess.CompletedProcess(argv, returncode, stdout, "")


def test_clock_check_reads_timedatectl_then_chrony_and_only_warns():
    chrony_ok = "Reference ID    : C0A80001 (ntp)\nSystem time     : 0.000012 seconds fast of NTP time\nLeap status     : Normal\n"
    answers = {
        "timedatectl yes": ({"timedatectl": (0, "yes\n")}, doctor.OK),
        "timedatectl no": ({"timedatectl": (0, "no\n")}, doctor.WARN),
        "chrony normal": ({"timedatectl": (1, ""), "chronyc": (0, chrony_ok)}, doctor.OK),
        "chrony unsynced": ({"chronyc": (0, chrony_ok.replace("Normal", "Not synchronised"))}, doctor.WARN),
        "neither": ({}, doctor.WARN),
    }
    for case, (tools, expected) in answers.items():
        def run(argv, tools=tools):
            if argv[0] not in tools:
                return None
            code, out = tools[argv[0]]
            return completed(argv, code, out)

        finding = doctor.check_clock(run)
        assert finding.status == expected, (case, finding)
    assert "0.000012 seconds fast" in doctor.check_clock(lambda argv: completed(argv, 0, chrony_ok) if argv[0] == "chronyc" else None).detail


def test_credential_check_accepts_netrc_for_pps(tmp_path, clean_env):
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {PPS_EMAIL} password {PPS_EMAIL}\n")
    netrc.chmod(0o600)
    cfg = config.from_dict({"sources": {"http": {"netrc": str(netrc)}}}, "<test>")
    rows = {f.check: f for f in doctor.check_credentials(cfg)}
    assert rows["credential pps"].status == doctor.OK and PPS_EMAIL not in rows["credential pps"].detail


def test_earthdata_is_required_only_for_ges_disc(clean_env):
    pps = {f.check for f in doctor.check_credentials(config.from_dict({}, "<test>"))}
    assert "credential earthdata" not in pps
    gesdisc = config.from_dict({"sources": {"imerg": {"server": "gesdisc"}, "dpr": {"enabled": False}}}, "<test>")
    rows = {f.check: f for f in doctor.check_credentials(gesdisc)}
    assert rows["credential earthdata"].status == doctor.FAIL and "credential pps" not in rows
    clean_env.setenv("NRT_EARTHDATA_TOKEN", "tok-123456789")
    rows = {f.check: f for f in doctor.check_credentials(config.from_dict({"sources": {"imerg": {"server": "gesdisc"}}}, "<test>"))}
    assert rows["credential earthdata"].status == doctor.OK and "$NRT_EARTHDATA_TOKEN" in rows["credential earthdata"].detail


def test_redact_masks_every_secret_and_the_database_password(clean_env):
    clean_env.setenv("NRT_PPS_EMAIL", PPS_EMAIL)
    clean_env.setenv("NRT_DB_URL", f"postgresql://nrt:{DB_PASSWORD}@db/nrt")
    cfg = config.from_dict({}, "<test>")
    text = f"user {PPS_EMAIL} password {DB_PASSWORD}"
    redacted = doctor.redact(text, doctor.secret_values(cfg))
    assert PPS_EMAIL not in redacted and DB_PASSWORD not in redacted and redacted.count(config.MASK) == 2


def test_table_and_exit_code():
    findings = [doctor.Finding("a", doctor.OK, "fine"), doctor.Finding("longer name", doctor.WARN, "hmm")]
    table = doctor.render_table(findings)
    assert table.splitlines()[0].split() == ["CHECK", "STATUS", "DETAIL"]
    assert table.splitlines()[2].startswith("longer name  WARN    hmm")
    assert doctor.exit_code(findings) == 0
    assert doctor.exit_code(findings + [doctor.Finding("b", doctor.FAIL, "broken")]) == 1
