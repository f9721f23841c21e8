"""Deployment checks behind `nrt doctor`: each check looks at one thing and returns `Finding`s.

Checks change nothing: the directory probe creates and removes a temporary file, the catalog probe rewrites
its version row with itself, the server probes send HEAD requests. A finding's
detail never contains a secret: credentials are reported as present or missing, and every detail passes
through `redact`, which masks the configured secret values should a library message echo one.
Status: "ok"; "warn" (works, but look at it); "fail" (the service will not work) -> `nrt doctor` exits 1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from nrt.config import MASK, SECRET_ENV, Config, mask_url
from nrt.errors import NrtError

OK, WARN, FAIL = "ok", "warn", "fail"
GIB = 1024**3
HTTP_TIMEOUT_S = (3.0, 5.0)  # (connect, read): a doctor answers in seconds, not after the client's retries
CLOCK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Finding:
    check: str
    status: str
    detail: str


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def secret_values(cfg: Config) -> list[str]:
    """Every configured secret, and the password inside a database URL, for `redact`."""
    from sqlalchemy.engine import make_url

    values = [v for v in cfg.secrets.model_dump().values() if v]
    try:
        password = make_url(cfg.database_url).password
    except Exception:  # not a URL SQLAlchemy parses; the catalog check reports that
        password = None
    return values + ([str(password)] if password else [])


# -- configuration ---------------------------------------------------------------------------------------------


def _writable(directory: Path) -> str | None:
    """None when a file can be created in `directory`, else the reason (a real write: read-only mounts fool access())."""
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".nrt-doctor-"):
            pass
    except OSError as exc:
        return f"not writable ({exc.strerror or exc})"
    return None


def _directory_finding(name: str, directory: Path) -> Finding:
    """A directory nrt writes to: writable, or creatable because its nearest existing parent is writable."""
    if directory.is_dir():
        problem = _writable(directory)
        return Finding(name, FAIL if problem else OK, f"{directory}: {problem or 'writable'}")
    parent = _existing_ancestor(directory)
    problem = _writable(parent) if parent.is_dir() else "not a directory"
    if problem:
        return Finding(name, FAIL, f"{directory}: missing, and {parent} is {problem}")
    return Finding(name, OK, f"{directory}: missing; nrt creates it in {parent} (writable)")


def check_config(cfg: Config) -> list[Finding]:
    findings = [Finding("config", OK, f"{cfg.source_file or '<defaults>'}: valid")]
    findings.append(_directory_finding("workdir", cfg.workdir))
    if cfg.product_dir != cfg.workdir:
        findings.append(_directory_finding("products dir", cfg.product_dir))
    domain = cfg.domain
    outside = [
        area.name
        for area in cfg.alerts.areas
        if area.west < domain.west or area.east > domain.east or area.south < domain.south or area.north > domain.north
    ]
    if outside:
        findings.append(Finding("alert areas", WARN, f"outside the domain, never alerting: {', '.join(outside)}"))
    else:
        findings.append(Finding("alert areas", OK, f"{len(cfg.alerts.areas)} inside the domain"))
    return findings


def check_checkpoint(cfg: Config) -> Finding:
    """The configured checkpoint reads and its sha256 matches its sidecar (the worker's first step)."""
    from nrt.model import checkpoint
    from nrt.model.inference import resolve

    try:
        loaded = checkpoint.load(resolve(cfg.model.checkpoint), "cpu")
    except NrtError as exc:
        return Finding("checkpoint", FAIL, str(exc))
    return Finding("checkpoint", OK, f"{cfg.model.checkpoint}: sha256 {loaded.sha256[:12]}…, {len(loaded.tensors)} tensors")


def check_csgd(cfg: Config) -> Finding:
    """The CSGD parameters read: the csgd method's model, and the fallback when the checkpoint cannot load."""
    from nrt.csgd import load_params

    if cfg.model.method != "csgd" and not cfg.model.fallback:
        return Finding("csgd parameters", OK, "not used (model.method = diffusion, model.fallback off)")
    try:
        load_params(cfg.model.csgd_params)
    except NrtError as exc:
        return Finding("csgd parameters", FAIL, str(exc))
    use = "the downscaling method" if cfg.model.method == "csgd" else "the fallback if the checkpoint cannot load"
    return Finding("csgd parameters", OK, f"{cfg.model.csgd_params}: {use}")


# -- catalog and credentials ----------------------------------------------------------------------------------


def check_catalog(cfg: Config, timeout_s: float = 5.0) -> Finding:
    from nrt.store import Catalog

    try:
        catalog = Catalog(cfg.database_url, busy_timeout_s=min(cfg.catalog.busy_timeout_s, timeout_s))
        try:
            revision = catalog.check()
        finally:
            catalog.close()
    except NrtError as exc:
        return Finding("catalog", FAIL, str(exc))
    return Finding("catalog", OK, f"{mask_url(cfg.database_url)}: reachable, writable, at revision {revision}")


def _credential_origin(name: str) -> str:
    if os.environ.get(SECRET_ENV[name]):
        return f"${SECRET_ENV[name]}"
    return "$CREDENTIALS_DIRECTORY"


def check_credentials(cfg: Config) -> list[Finding]:
    """Each credential the configured servers need is present (from the env, systemd credentials or .netrc)."""
    from nrt.sources.http import Credentials

    creds = Credentials.from_config(cfg)
    src, secrets = cfg.sources, cfg.secrets
    findings = []
    pps_urls = ([src.imerg.pps_url] if src.imerg.server == "pps" else []) + ([src.dpr.pps_url] if src.dpr.enabled else [])
    if pps_urls:
        if secrets.pps_email:
            findings.append(Finding("credential pps", OK, f"pps_email set (from {_credential_origin('pps_email')})"))
        elif all(creds.basic_auth(url) for url in pps_urls):
            findings.append(Finding("credential pps", OK, "PPS login from .netrc"))
        else:
            findings.append(Finding("credential pps", FAIL, "pps_email missing: set LoadCredential=pps_email:... or $NRT_PPS_EMAIL"))
    if src.imerg.server == "gesdisc":
        if secrets.earthdata_token:
            findings.append(Finding("credential earthdata", OK, f"earthdata_token set (from {_credential_origin('earthdata_token')})"))
        elif (secrets.earthdata_username and secrets.earthdata_password) or creds.basic_auth(f"https://{creds.login_host}/"):
            findings.append(Finding("credential earthdata", OK, "Earthdata Login user and password set"))
        else:
            findings.append(
                Finding("credential earthdata", FAIL, "earthdata_token (or earthdata_username + earthdata_password) missing")
            )
    if secrets.database_url:
        findings.append(Finding("credential database_url", OK, f"set (from {_credential_origin('database_url')})"))
    else:
        findings.append(Finding("credential database_url", OK, "not set: catalog.url from the config file is used"))
    return findings


# -- servers --------------------------------------------------------------------------------------------------


def server_urls(cfg: Config) -> dict[str, str]:
    """Base URL per source the configuration will fetch from."""
    src = cfg.sources
    urls = {"imerg": src.imerg.pps_url if src.imerg.server == "pps" else src.imerg.gesdisc_url}
    if src.dpr.enabled:
        urls["dpr"] = src.dpr.pps_url
    if src.geosfp.enabled:
        urls["geosfp"] = src.geosfp.url
    urls["dem"] = src.dem.url
    return urls


def _connection_reason(exc: Exception) -> str:
    import requests

    if isinstance(exc, requests.ConnectTimeout):
        return f"no connection within {HTTP_TIMEOUT_S[0]:g} s"
    if isinstance(exc, requests.ReadTimeout):
        return f"no answer within {HTTP_TIMEOUT_S[1]:g} s"
    message = str(exc)
    if "Failed to resolve" in message or "NameResolutionError" in message:
        return "host name does not resolve"
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", message)
    return errno.group(1).strip() if errno else type(exc).__name__


def probe_url(url: str, credentials=None) -> tuple[str, str]:
    """(status, detail) for one base URL: any HTTP answer means reachable; a local path must exist.

    `credentials` (nrt.sources.http.Credentials) signs the request as the downloads will be, so a refused
    login shows here; redirects (Earthdata Login) are not followed, they are an answer.
    """
    import requests

    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        path = Path(parts.path if parts.scheme else url)
        return (OK, f"{path}: local file") if path.is_file() else (FAIL, f"{path}: no such file")
    with requests.Session() as session:
        session.trust_env = False  # like the download client: auth from Credentials only
        try:
            response, signed = _send(session, "HEAD", url, credentials)
            if response.status_code in (405, 501):  # servers that refuse HEAD
                response, signed = _send(session, "GET", url, credentials)
        except requests.RequestException as exc:
            return FAIL, f"{url}: unreachable ({_connection_reason(exc)})"
    code = response.status_code
    if code in (401, 403):
        if signed:
            return FAIL, f"{url}: HTTP {code}, the configured credentials were refused"
        return OK, f"{url}: HTTP {code} (answers; needs a login)"
    if code >= 500:
        return WARN, f"{url}: HTTP {code} (server trouble)"
    if code == 404:
        return WARN, f"{url}: HTTP 404 (server answers, but not at this base path)"
    return OK, f"{url}: HTTP {code}"


def _send(session, method: str, url: str, credentials):
    import requests

    request = requests.Request(method, url).prepare()
    if credentials is not None:
        credentials.apply(request)
    response = session.send(request, timeout=HTTP_TIMEOUT_S, allow_redirects=False, stream=True)
    response.close()
    return response, "Authorization" in request.headers


def check_servers(cfg: Config, probe: Callable[..., tuple[str, str]] = probe_url) -> list[Finding]:
    from nrt.sources.http import Credentials

    credentials = Credentials.from_config(cfg)
    results: dict[str, tuple[str, str]] = {}
    findings = []
    for source, url in server_urls(cfg).items():
        if url not in results:
            results[url] = probe(url, credentials)
        status, detail = results[url]
        findings.append(Finding(f"server {source}", status, detail))
    return findings


# -- host -----------------------------------------------------------------------------------------------------


def check_gpu(cfg: Config) -> Finding:
    import torch

    wanted = cfg.model.device
    if not torch.cuda.is_available():
        if wanted == "cuda":
            return Finding("gpu", FAIL, "model.device = cuda, but torch sees no CUDA device (driver, /dev/nvidia*, DeviceAllow=?)")
        if wanted == "auto":
            return Finding("gpu", WARN, "no CUDA device visible: model.device = auto runs the diffusion on the CPU (slow)")
        return Finding("gpu", OK, "model.device = cpu; no CUDA device needed")
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    detail = f"{torch.cuda.device_count()} CUDA device(s); cuda:{index} {props.name}, {props.total_memory / GIB:.1f} GiB"
    if wanted == "cpu":
        return Finding("gpu", WARN, detail + "; model.device = cpu leaves it unused")
    if cfg.model.bf16 and not torch.cuda.is_bf16_supported():
        return Finding("gpu", WARN, detail + "; no bfloat16 support: set model.bf16 = false")
    return Finding("gpu", OK, detail)


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(cfg: Config, min_free_bytes: int) -> list[Finding]:
    """Free space on each file system holding the workdir or the products."""
    findings, seen = [], set()
    for directory in (cfg.workdir, cfg.product_dir):
        existing = _existing_ancestor(directory)
        device = existing.stat().st_dev
        if device in seen:
            continue
        seen.add(device)
        free = shutil.disk_usage(existing).free
        status = OK if free >= min_free_bytes else FAIL
        findings.append(
            Finding(f"disk {directory}", status, f"{free / GIB:.1f} GiB free (need {min_free_bytes / GIB:g} GiB)")
        )
    return findings


def _run(argv: list[str]) -> subprocess.CompletedProcess | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=CLOCK_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def check_clock(run: Callable[[list[str]], subprocess.CompletedProcess | None] = _run) -> Finding:
    """NTP synchronisation from systemd-timesyncd/timedatectl or chrony. Only ever a warning: the cycle clock
    drifting by seconds is harmless, by minutes it shifts which granules look late."""
    result = run(["timedatectl", "show", "--property=NTPSynchronized", "--value"])
    if result is not None and result.returncode == 0 and result.stdout.strip() in ("yes", "no"):
        if result.stdout.strip() == "yes":
            return Finding("clock", OK, "NTP synchronised (timedatectl)")
        return Finding("clock", WARN, "timedatectl: NTP not synchronised")
    result = run(["chronyc", "-n", "tracking"])
    if result is not None and result.returncode == 0:
        leap = re.search(r"^Leap status\s*:\s*(.+)$", result.stdout, re.M)
        offset = re.search(r"^System time\s*:\s*(.+)$", result.stdout, re.M)
        if leap and leap.group(1).strip() == "Normal":
            return Finding("clock", OK, f"chrony synchronised ({offset.group(1).strip() if offset else 'offset unknown'})")
        return Finding("clock", WARN, f"chrony: {leap.group(1).strip() if leap else 'no leap status'}")
    return Finding("clock", WARN, "cannot tell whether the clock is synchronised (no timedatectl or chronyc answer)")


# -- all together ---------------------------------------------------------------------------------------------


def run_checks(cfg: Config, min_free_bytes: int = 20 * GIB) -> list[Finding]:
    findings = check_config(cfg)
    findings.append(check_checkpoint(cfg))
    findings.append(check_csgd(cfg))
    findings.append(check_catalog(cfg))
    findings += check_credentials(cfg)
    findings += check_servers(cfg)
    findings.append(check_gpu(cfg))
    findings += check_disk(cfg, min_free_bytes)
    findings.append(check_clock())
    secrets = secret_values(cfg)
    return [Finding(f.check, f.status, redact(f.detail, secrets)) for f in findings]


def exit_code(findings: Iterable[Finding]) -> int:
    return 1 if any(f.status == FAIL for f in findings) else 0


def render_table(findings: list[Finding]) -> str:
    width = max([len("CHECK")] + [len(f.check) for f in findings])
    lines = [f"{'CHECK':<{width}}  STATUS  DETAIL"]
    lines += [f"{f.check:<{width}}  {f.status.upper():<6}  {f.detail}" for f in findings]
    counts = {s: sum(f.status == s for f in findings) for s in (OK, WARN, FAIL)}
    lines.append(f"{counts[OK]} ok, {counts[WARN]} warning(s), {counts[FAIL]} failure(s)")
    return "\n".join(lines)


def render_json(findings: list[Finding]) -> str:
    return json.dumps({"ok": exit_code(findings) == 0, "findings": [asdict(f) for f in findings]}, indent=2)
