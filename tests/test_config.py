"""Configuration: TOML in, typed and validated objects out; bad files fail in one line; secrets never shown."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nrt import config
from nrt.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def run_nrt(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    beside = Path(sys.executable).with_name("nrt")
    command = [str(beside)] if beside.exists() else [shutil.which("nrt") or "nrt"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NRT_") and k != "CREDENTIALS_DIRECTORY"}
    return subprocess.run(
        [*command, *args], env={**clean, **(env or {})}, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=120,
    )


@pytest.fixture
def no_secrets(monkeypatch):
    for name in (*config.SECRET_ENV.values(), "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)


def test_default_toml_spells_out_exactly_the_builtin_defaults(no_secrets):
    from_file = config.load(REPO / "config" / "default.toml")
    builtin = config.load(None)
    assert from_file.model_dump() == builtin.model_dump()
    # Spelled out means every section and key is written in the file, not left to the code.
    import tomllib

    written = tomllib.loads((REPO / "config" / "default.toml").read_text())

    def keys(data, prefix=""):
        found = set()
        for key, value in data.items():
            found.add(prefix + key)
            if isinstance(value, dict):
                found |= keys(value, f"{prefix}{key}.")
        return found

    assert keys(written) == keys(builtin.model_dump(mode="json", exclude_none=True))


def test_production_example_loads_with_real_servers_postgres_and_gpu(no_secrets, monkeypatch):
    monkeypatch.setenv("NRT_DB_URL", "postgresql://nrt:pw@db.example/nrt")
    cfg = config.load(REPO / "config" / "production.example.toml")
    assert cfg.sources.imerg.pps_url == "https://jsimpsonhttps.pps.eosdis.nasa.gov"
    assert cfg.sources.imerg.gesdisc_url == "https://gpm1.gesdisc.eosdis.nasa.gov/data/GPM_L3"
    assert cfg.sources.geosfp.url == "https://portal.nccs.nasa.gov/datashare/gmao/geos-fp"
    assert cfg.model.device == "cuda" and cfg.workdir == Path("/var/lib/nrt")
    assert cfg.database_url.startswith("postgresql://")
    from sqlalchemy.engine import make_url

    assert make_url(cfg.catalog.url).password is None  # the file names where secrets come from, never holds one
    assert "NRT_DB_URL" in (REPO / "config" / "production.example.toml").read_text()


@pytest.mark.parametrize(
    "toml,key,reason",
    [
        ("[general]\nworkdri = '/tmp'\n", "general.workdri", "unknown key"),
        ("[nowcst]\nmembers = 3\n", "nowcst", "unknown key"),
        ("[nowcast]\nmembers = 'thirty'\n", "nowcast.members", "valid integer"),
        ("[general]\nlog_json = 'sometimes'\n", "general.log_json", "valid boolean"),
        ("[domain]\nnorth = 91.0\n", "domain.north", "less than or equal to 90"),
        ("[domain]\nwest = -181.0\n", "domain.west", "greater than or equal to -180"),
        ("[domain]\neast = 180.5\n", "domain.east", "less than or equal to 180"),
        ("[domain]\nsouth = 45.0\nnorth = 44.0\n", "domain", "south (45.0) must be less than north"),
        ("[nowcast]\nmembers = 0\n", "nowcast.members", "greater than or equal to 1"),
        ("[nowcast]\nnum_workers = -2\n", "nowcast.num_workers", "greater than or equal to 0"),
        ("[model]\nmembers = -3\n", "model.members", "greater than or equal to 1"),
        ("[timeline]\nimerg_latency_minutes = -30\n", "timeline.imerg_latency_minutes", "greater than or equal to 0"),
        ("[timeline]\ngeosfp_latency_hours = -1\n", "timeline.geosfp_latency_hours", "greater than or equal to 0"),
        ("[[alerts.areas]]\nname = 'x'\nwest = 0\nsouth = -95\neast = 1\nnorth = 1\n", "alerts.areas.0.south", "-90"),
        ("[train]\nsigma_min = 90.0\nsigma_max = 80.0\n", "train", "sigma_min (90.0) must be less than sigma_max"),
        ("[model]\nsolver = 'dpm3'\n", "model.solver", "'heun', 'euler' or 'dpm2m'"),
        ("[model]\nsampler_rho = 0\n", "model.sampler_rho", "greater than 0"),
        ("[model]\nsampler_sigma_max = -1.0\n", "model.sampler_sigma_max", "greater than 0"),
        ("[model]\nsampler_sigma_min = 5.0\nsampler_sigma_max = 2.0\n", "model", "sampler_sigma_min (5.0) must be less than sampler_sigma_max"),
        ("[model]\nresidual_scale_by_rate = [[1.0, 1.5], [0.5, 1.2]]\n", "model", "residual_scale_by_rate: rates must be >= 0 and rising"),
        ("[model]\nresidual_scale_by_rate = [[0.5, 1.5], [1.0, 0.0]]\n", "model", "residual_scale_by_rate: every factor must be > 0"),
        ("[model]\nchurn = -0.5\n", "model.churn", "greater than or equal to 0"),
        ("[model]\nchurn_noise = 0\n", "model.churn_noise", "greater than 0"),
        ("[model]\nchurn_sigma_min = 3.0\nchurn_sigma_max = 1.0\n", "model", "churn_sigma_min (3.0) must be less than churn_sigma_max"),
    ],
)
def test_bad_values_name_the_key_and_the_file(tmp_path, no_secrets, toml, key, reason):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: ") and reason in message and "\n" not in message


@pytest.mark.parametrize(
    "toml,fragment",
    [
        ("[domain]\nnorth = 95\n", "domain.north"),
        ("[nowcast]\nmembers = 0\n", "nowcast.members"),
        ("[timeline]\nimerg_latency_minutes = -1\n", "timeline.imerg_latency_minutes"),
        ("[catalog]\nulr = 'sqlite://'\n", "catalog.ulr: unknown key"),
        ("[[products.basins]]\nname = 'x'\npolygon = [[0, 0], [1, 1]]\n", "products.basins.0: basin 'x': an outline needs at least 3"),
        ("[domain\n", "not valid TOML"),
    ],
)
def test_cli_bad_config_is_one_line_exit_2(tmp_path, toml, fragment):
    path = tmp_path / "nrt.toml"
    path.write_text(toml)
    result = run_nrt("--config", str(path), "config", "show")
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith(f"nrt: error: {path}: ") and fragment in line


def test_cli_missing_config_file(tmp_path):
    result = run_nrt("--config", str(tmp_path / "absent.toml"), "config", "show")
    assert result.returncode == 2 and result.stderr.strip() == f"nrt: error: {tmp_path / 'absent.toml'}: no such file"


def test_cli_config_show_masks_every_secret(tmp_path):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "earthdata_password").write_text("cred-dir-pass\n")
    env = {
        "NRT_DB_URL": "postgresql://nrt:db-pass-123@db.example:5432/nrt",
        "NRT_PPS_EMAIL": "someone@example.org",
        "NRT_EARTHDATA_TOKEN": "tok-abcdef",
        "CREDENTIALS_DIRECTORY": str(credentials),
    }
    result = run_nrt("config", "show", env=env)
    assert result.returncode == 0, result.stderr
    for secret in ("db-pass-123", "someone@example.org", "tok-abcdef", "cred-dir-pass"):
        assert secret not in result.stdout + result.stderr
    shown = json.loads(result.stdout)
    assert shown["catalog"]["url"] == "postgresql://nrt:***@db.example:5432/nrt"  # where it goes, not the key
    assert shown["secrets"] == {
        "database_url": config.MASK, "pps_email": config.MASK, "earthdata_token": config.MASK,
        "earthdata_username": None, "earthdata_password": config.MASK,
    }


def test_secrets_stay_out_of_repr_and_dumps(no_secrets, monkeypatch):
    monkeypatch.setenv("NRT_DB_URL", "postgresql://nrt:db-pass-123@db/nrt")
    monkeypatch.setenv("NRT_EARTHDATA_PASSWORD", "ed-pass-456")
    cfg = config.load(None)
    assert cfg.database_url == "postgresql://nrt:db-pass-123@db/nrt" and cfg.secrets.earthdata_password == "ed-pass-456"
    for shown in (repr(cfg), str(cfg), json.dumps(cfg.model_dump(mode="json")), json.dumps(cfg.masked())):
        assert "db-pass-123" not in shown and "ed-pass-456" not in shown


def test_workdir_expands_home_and_fills_the_catalog_placeholder(no_secrets, tmp_path):
    assert config.load(None).workdir == Path("~/.local/share/nrt").expanduser()
    cfg = config.from_dict({"general": {"workdir": str(tmp_path / "w")}}, "<test>")
    assert cfg.database_url == f"sqlite:///{tmp_path}/w/catalog.sqlite"
    assert cfg.product_dir == tmp_path / "w" / "products"


def test_a_heartbeat_not_well_below_the_lease_is_refused():
    from nrt import config
    from nrt.errors import ConfigError

    with pytest.raises(ConfigError, match=r"heartbeat_seconds \(30\) must be at most a third of service.lease_seconds \(30\)"):
        config.from_dict({"service": {"lease_seconds": 30, "heartbeat_seconds": 30}}, "x.toml")
    config.from_dict({"service": {"lease_seconds": 90, "heartbeat_seconds": 30}}, "x.toml")


@pytest.mark.parametrize(
    "toml, message",
    [
        ("[service]\nlease_seconds = inf", "service.lease_seconds: Input should be a finite number"),
        ("[sources.http]\nread_timeout_s = inf", "sources.http.read_timeout_s: Input should be a finite number"),
        ("[catalog]\nbusy_timeout_s = inf", "catalog.busy_timeout_s: Input should be a finite number"),
        ("[products]\nretention_days = nan", "products.retention_days: Input should be a finite number"),
        ("[sources.imerg]\nversions = []", "sources.imerg: versions must not be empty"),
        ("[products]\naccumulation_hours = []", "products: accumulation_hours must not be empty"),
        ('[service]\nmetrics_host = "no-such-host.invalid"', "service.metrics_host: cannot resolve host 'no-such-host.invalid'"),
    ],
)
def test_values_that_would_crash_later_are_refused_at_load(tmp_path, toml, message):
    """These used to load, then crash or hang the daemon (issue 16, failure 8)."""
    from nrt import config
    from nrt.errors import ConfigError

    path = tmp_path / "nrt.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(caught.value).startswith(f"{path}: {message}"), str(caught.value)
    assert "\n" not in str(caught.value)


def test_lists_that_may_be_empty_still_may():
    from nrt import config

    cfg = config.from_dict({"sources": {"imerg": {"extra_variables": []}, "geosfp": {"slv_variables": []}}, "alerts": {"areas": []}})
    assert cfg.alerts.areas == [] and cfg.sources.imerg.extra_variables == []


BASIN = "[[products.basins]]\nname = 'raccoon'\n"


@pytest.mark.parametrize(
    "toml, message",
    [
        (BASIN, "products.basins.0: basin 'raccoon' needs exactly one of polygon or geojson"),
        (BASIN + "polygon = [[-94, 41], [-93, 41]]\n", "products.basins.0: basin 'raccoon': an outline needs at least 3"),
        (BASIN + "polygon = [[-94, 41], [-93, 41], [-93, 95]]\n", "products.basins.0: basin 'raccoon': every point needs"),
        (BASIN + "polygon = [[-94, 41, 0, 1], [-93, 41], [-93, 42]]\n", "products.basins.0.polygon.0: Tuple should have at most 2 items"),
        (BASIN + "geojson = 'absent.geojson'\n", "products.basins.0: {dir}/absent.geojson: no such file"),
        (BASIN + "geojson = 'line.geojson'\n", "products.basins.0: {dir}/line.geojson: holds a LineString geometry"),
        (BASIN + "geojson = 'broken.geojson'\n", "products.basins.0: {dir}/broken.geojson: not readable GeoJSON"),
        (BASIN + "bbox = [1, 2]\npolygon = [[-94, 41], [-93, 41], [-93, 42]]\n", "products.basins.0.bbox: unknown key"),
    ],
)
def test_bad_basins_are_one_line_naming_the_key_or_file(tmp_path, no_secrets, toml, message):
    (tmp_path / "line.geojson").write_text('{"type": "LineString", "coordinates": [[-94, 41], [-93, 42]]}')
    (tmp_path / "broken.geojson").write_text('{"type": "Polygon", ')
    path = tmp_path / "nrt.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(caught.value).startswith(f"{path}: {message.format(dir=tmp_path)}"), str(caught.value)
    assert "\n" not in str(caught.value)


def test_basins_from_a_polygon_or_a_geojson_file_beside_the_config(tmp_path, no_secrets):
    import json

    (tmp_path / "basins").mkdir()
    square = [[-93.0, 41.0], [-92.0, 41.0], [-92.0, 42.0], [-93.0, 42.0], [-93.0, 41.0]]
    islands = {"type": "MultiPolygon", "coordinates": [[square], [[[-91.5, 41.0], [-91.0, 41.0], [-91.0, 41.5]]]]}
    (tmp_path / "basins" / "cedar.geojson").write_text(json.dumps(
        {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": islands}]}))
    path = tmp_path / "nrt.toml"
    path.write_text(BASIN + "polygon = [[-94.9, 41.6], [-93.6, 41.5], [-93.5, 42.2]]\n"
                    "[[products.basins]]\nname = 'cedar'\ngeojson = 'basins/cedar.geojson'\n")
    raccoon, cedar = config.load(path).products.basins
    assert raccoon.rings == [[(-94.9, 41.6), (-93.6, 41.5), (-93.5, 42.2)]]
    assert cedar.geojson == tmp_path / "basins" / "cedar.geojson"  # read beside the config file, not the working directory
    assert cedar.rings == [[tuple(p) for p in square], [(-91.5, 41.0), (-91.0, 41.0), (-91.0, 41.5)]]
    assert config.load(None).products.basins == []
