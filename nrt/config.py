"""Typed configuration loaded from TOML and validated at load time.

Defaults are the embedded offline setup (synthetic twin served on localhost, SQLite, CPU); the file
`config/default.toml` spells the same values out and a test keeps the two equal. Secrets never live in
the file: they come from the environment, systemd credentials or `.netrc`, and are masked on display.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator

from nrt.errors import ConfigError
from nrt.grids import Domain

SECRET_ENV = {
    "database_url": "NRT_DB_URL",
    "pps_email": "NRT_PPS_EMAIL",
    "earthdata_token": "NRT_EARTHDATA_TOKEN",
    "earthdata_username": "NRT_EARTHDATA_USERNAME",
    "earthdata_password": "NRT_EARTHDATA_PASSWORD",
}
MASK = "********"


class Section(BaseModel):
    # allow_inf_nan=False: an `inf` lease, timeout or retention would pass every bound and then crash or hang.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)
    may_be_empty: ClassVar[frozenset[str]] = frozenset()  # list keys that may be []; every other list may not

    @model_validator(mode="after")
    def _lists_not_empty(self):
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, list) and not value and name not in self.may_be_empty:
                raise ValueError(f"{name} must not be empty")
        return self


class GeneralConfig(Section):
    workdir: Path = Field(Path("~/.local/share/nrt"), validate_default=True)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False

    @field_validator("workdir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return Path(os.path.expandvars(str(value))).expanduser()


class DomainConfig(Section):
    """Bounding box in degrees. The default covers Iowa."""

    west: float = Field(-96.7, ge=-180, le=180)
    south: float = Field(40.3, ge=-90, le=90)
    east: float = Field(-90.1, ge=-180, le=180)
    north: float = Field(43.6, ge=-90, le=90)

    @model_validator(mode="after")
    def _ordered(self):
        if self.west >= self.east:
            raise ValueError(f"west ({self.west}) must be less than east ({self.east})")
        if self.south >= self.north:
            raise ValueError(f"south ({self.south}) must be less than north ({self.north})")
        return self

    def box(self) -> Domain:
        return Domain(self.west, self.south, self.east, self.north)


class TimelineConfig(Section):
    cycle_minutes: int = Field(30, gt=0)
    cycle_delay_minutes: float = Field(5, ge=0)
    imerg_latency_minutes: float = Field(240, ge=0)
    motion_granules: int = Field(3, ge=2)
    geosfp_latency_hours: float = Field(5, ge=0)


class HttpConfig(Section):
    connect_timeout_s: float = Field(10, gt=0)
    read_timeout_s: float = Field(60, gt=0)
    retries: int = Field(4, ge=0)
    backoff_s: float = Field(2, ge=0)
    backoff_max_s: float = Field(60, ge=0)
    max_concurrency: int = Field(4, ge=1)
    max_bad_attempts: int = Field(3, ge=1)
    bad_retry_hours: float = Field(6, gt=0)  # a file refused max_bad_attempts times is tried again after this
    download_deadline_s: float = Field(600, gt=0)  # one file, retries included
    ingest_deadline_s: float = Field(900, gt=0)  # all downloads of one source in one ingest call
    netrc: Path | None = None
    earthdata_login_host: str = "urs.earthdata.nasa.gov"  # host[:port] that gets the Earthdata Login credentials


class ImergConfig(Section):
    may_be_empty = frozenset({"extra_variables"})
    server: Literal["pps", "gesdisc"] = "pps"
    pps_url: str = "http://127.0.0.1:8765/pps"
    gesdisc_url: str = "http://127.0.0.1:8765/gesdisc/data/GPM_L3"
    versions: list[str] = ["V07B", "V07C"]
    extra_variables: list[Literal["randomError", "probabilityLiquidPrecipitation"]] = ["randomError"]
    min_valid_fraction: float = Field(0.5, gt=0, le=1)  # a granule with less non-fill inside the domain is refused
    max_rate_mmh: float = Field(400, gt=0)  # a granule with a higher rate inside the domain is refused (wrong units?)


class DprConfig(Section):
    enabled: bool = True
    pps_url: str = "http://127.0.0.1:8765/pps"
    gesdisc_url: str = "http://127.0.0.1:8765/gesdisc/data/GPM_L2"  # research (orbit) files
    versions: list[str] = ["V07A", "V07B"]
    lookback_hours: float = Field(6, gt=0)  # ingest fetches listed swaths overlapping [t - lookback, t]
    footprint_km: float = Field(5.0, gt=0)  # gridding radius and Gaussian width follow the footprint


class GeosfpConfig(Section):
    may_be_empty = frozenset({"slv_variables", "flx_variables"})
    enabled: bool = True
    url: str = "http://127.0.0.1:8765/nccs/datashare/gmao/geos-fp"
    slv_variables: list[str] = ["TQV", "TQL", "T2M", "QV2M", "U10M", "V10M", "SLP"]
    flx_variables: list[str] = ["PRECTOT"]


class DemConfig(Section):
    url: str = "http://127.0.0.1:8765/dem/nrt_twin_dem.nc"


class SourcesConfig(Section):
    imerg: ImergConfig = ImergConfig()
    dpr: DprConfig = DprConfig()
    geosfp: GeosfpConfig = GeosfpConfig()
    dem: DemConfig = DemConfig()
    http: HttpConfig = HttpConfig()


class CatalogConfig(Section):
    url: str = "sqlite:///{workdir}/catalog.sqlite"
    busy_timeout_s: float = Field(30, gt=0)


class NowcastConfig(Section):
    method: Literal["steps", "extrapolation", "sprog"] = "steps"
    motion: Literal["lucaskanade", "vet", "darts"] = "lucaskanade"
    members: int = Field(30, ge=1)
    steps: int = Field(8, ge=1)
    rain_threshold_mmh: float = Field(0.1, gt=0)
    buffer_degrees: float = Field(2.0, ge=0)
    max_speed_kmh: float = Field(80.0, gt=0)
    seed: int = 20250101
    cascade_levels: int = Field(6, ge=1)
    min_wet_fraction: float = Field(0.005, ge=0, lt=1)  # STEPS/S-PROG need this much rain in each input, else extrapolation
    min_speed_kmh: float = Field(0.5, ge=0)  # motion slower than this everywhere counts as zero: persistence
    num_workers: int = Field(0, ge=0)  # threads over STEPS members (pysteps + dask); 0 = one per usable core, at most 8


class ModelConfig(Section):
    may_be_empty = frozenset({"residual_scale_by_rate"})
    method: Literal["diffusion", "csgd"] = "diffusion"  # the downscaler (nrt.downscale); csgd is the statistical baseline
    checkpoint: str = "builtin:demo"
    csgd_params: str = "builtin:csgd"  # CSGD parameter file (nrt.csgd): the csgd method and the fallback
    fallback: bool = True  # write the CSGD ensemble (flagged degraded) when the diffusion model cannot run
    ood_max_z: float = Field(4.0, gt=0)  # inputs whose domain mean is further from training (in sigma) are flagged
    ood_fallback: bool = True  # ... and the cycle writes the CSGD ensemble instead (needs `fallback`)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    members: int = Field(30, ge=1)
    # The default sampler: DPM-Solver++(2M), 4 steps from sigma 80 stopping at sigma_min (3 network evaluations
    # per sample), its residual scaled by 1.18 and by a factor of the rain rate; fitted on training events against
    # Heun 18 (docs/model.md, "few steps, calibrated" and "A residual scale by rain rate").
    sampler_steps: int = Field(4, ge=1)  # levels of the schedule; evaluations: steps (euler, dpm2m), 2 steps - 1 (heun), one fewer without denoise_to_zero
    solver: Literal["heun", "euler", "dpm2m"] = "dpm2m"
    sampler_rho: float = Field(7.0, gt=0)  # EDM schedule exponent: larger puts more steps at low noise
    sampler_sigma_min: float | None = Field(None, gt=0)  # lowest noise level; default: the checkpoint's sigma_min
    sampler_sigma_max: float | None = Field(80.0, gt=0)  # starting noise level, within the checkpoint's sigma_max
    sampler_denoise_to_zero: bool = False  # EDM's last step to 0, an evaluation at sigma_min that changes < 0.1 % (docs/model.md)
    patch_size: int = Field(64, ge=16)
    patch_overlap: int = Field(8, ge=4)
    bf16: bool = True  # bf16 autocast where the device runs bf16 natively (CUDA; CPUs with avx512_bf16/amx_bf16), else float32
    channels_last: bool = True  # NHWC convolutions; on the team VM's CPU 0.86x the CPU time of NCHW (docs/benchmarks.md)
    compile: bool = False
    seed: int = 20250101
    max_batch: int = Field(256, ge=1)  # patches per network call; all members x patches run in chunks of this
    churn: float = Field(0.0, ge=0)  # EDM S_churn; 0 = deterministic ODE sampler
    input_qdm: bool = False  # quantile delta mapping of the precip input onto the training input's (nrt.model.qdm)
    input_qdm_reference: str = Field("field", min_length=1)  # "field" (plain quantile mapping) or a climatology JSON
    condition_noise_sigma: float = Field(0.0, ge=0)  # noise on the normalised precip condition per member; 0 = off
    churn_sigma_min: float = Field(0.0, ge=0)  # EDM S_tmin: churn only at noise levels in [min, max]
    churn_sigma_max: float | None = Field(None, gt=0)  # EDM S_tmax; default: no upper bound
    churn_noise: float = Field(1.0, gt=0)  # EDM S_noise: scale of the churn noise
    residual_scale: float = Field(1.18, gt=0)  # multiplies the sampled residual (model space); fitted for builtin:demo, refit per checkpoint
    # [rate mm/h of the regression mean, factor on residual_scale], rates rising, interpolated in log(1 + rate);
    # [] = one scale. Fitted for builtin:demo against Heun 18 on training tiles (sampler_probe.py), refit per checkpoint.
    residual_scale_by_rate: list[tuple[float, float]] = [(0.5, 1.08), (2.0, 1.04), (8.0, 0.9), (32.0, 0.78)]

    @model_validator(mode="after")
    def _sampler_ranges(self):
        if self.sampler_sigma_min is not None and self.sampler_sigma_max is not None and self.sampler_sigma_min >= self.sampler_sigma_max:
            raise ValueError(f"sampler_sigma_min ({self.sampler_sigma_min}) must be less than sampler_sigma_max ({self.sampler_sigma_max})")
        rates = [rate for rate, _ in self.residual_scale_by_rate]
        if any(rate < 0 for rate in rates) or any(b <= a for a, b in zip(rates, rates[1:])):
            raise ValueError(f"residual_scale_by_rate: rates must be >= 0 and rising (got {rates})")
        if any(factor <= 0 for _, factor in self.residual_scale_by_rate):
            raise ValueError("residual_scale_by_rate: every factor must be > 0")
        if self.churn_sigma_max is not None and self.churn_sigma_min >= self.churn_sigma_max:
            raise ValueError(f"churn_sigma_min ({self.churn_sigma_min}) must be less than churn_sigma_max ({self.churn_sigma_max})")
        return self


class NetworkConfig(Section):
    """UNet size (SongUNet/DDPM++). Production: 128 channels, mult [1, 2, 2, 2, 2], 4 blocks (~80M parameters)."""

    model_channels: int = Field(32, ge=4)
    channel_mult: list[int] = [1, 2, 2]
    num_blocks: int = Field(1, ge=1)
    attention: bool = True
    dropout: float = Field(0.0, ge=0, lt=1)


class TrainConfig(Section):
    """`nrt train`: training-set building (catalog, start..end) and the regression-then-diffusion schedule."""

    dataset: Path | None = None  # default: <workdir>/train/dataset.safetensors (built from the catalog if absent)
    output: Path | None = None  # default: <workdir>/train/model.safetensors (+ .json)
    run_dir: Path | None = None  # default: <workdir>/train/run (resumable state)
    start: str | None = None  # ISO UTC; the span of collocated granules to build the training set from
    end: str | None = None
    leads: list[int] = [0, 1, 2, 3, 4, 5, 6, 7, 8]
    min_swath_cells: int = Field(200, ge=1)
    regression: NetworkConfig = NetworkConfig()
    diffusion: NetworkConfig = NetworkConfig()
    regression_steps: int = Field(2000, ge=0)
    diffusion_steps: int = Field(4000, ge=0)
    batch_size: int = Field(16, ge=1)
    patch_size: int = Field(32, ge=8)
    min_mask_coverage: float = Field(0.3, gt=0, le=1)
    learning_rate: float = Field(2e-4, gt=0)
    warmup_steps: int = Field(100, ge=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    precip_transform: Literal["log1p", "power"] = "power"  # see docs/model.md, "Skill"
    precip_epsilon_mmh: float = Field(1.0, gt=0)
    precip_power: float = Field(0.5, gt=0, le=1)
    use_random_error: bool = True
    use_geosfp: bool = True
    use_dem: bool = True
    use_position: bool = False  # absolute lat/lon ties a model to its training domain; old checkpoints only
    use_masks: bool = True  # availability channels: GEOS-FP, DEM and randomError may each be absent
    drop_probability: float = Field(0.3, ge=0, lt=1)  # chance per example that each optional group is dropped
    # Where the training set comes from: the catalog's DPR overpasses, or real rain (+ twin examples).
    build_from: Literal["catalog", "realrain"] = "catalog"
    realrain_catalogue: Path | None = None  # default: config/realrain.toml of the package
    realrain_events: list[str] | None = None  # training events to use (default: every event not held out)
    realrain_dir: Path | None = None  # default: $NRT_SHARED_DATA/radar, else ../shared/data/radar
    realrain_cache: Path = Path("~/.cache/nrt/realrain")  # prepared 0.05° events (.npz)
    error_model: str = "builtin:imerg-early"  # degrades real rain into the IMERG-like input
    twin_fraction: float = Field(0.0, ge=0, lt=1)  # share of twin examples in a real-rain set
    tile_size: int = Field(64, ge=8)  # real-rain / twin examples are tile x tile cells at 0.05°
    tiles_per_frame: int = Field(8, ge=1)
    p_mean: float = 0.0
    p_std: float = Field(1.2, gt=0)
    sigma_data: float = Field(0.5, gt=0)
    sigma_min: float = Field(0.002, gt=0)  # the sampler's noise range, recorded in the checkpoint
    sigma_max: float = Field(800.0, gt=0)
    bf16: bool = True
    checkpoint_every: int = Field(200, ge=1)
    log_every: int = Field(50, ge=1)
    seed: int = 20250101

    @model_validator(mode="after")
    def _noise_range(self):
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be less than sigma_max ({self.sigma_max})")
        return self


class Basin(Section):
    """A basin outline drawn on the maps: `polygon` [[lon, lat], ...] or a `geojson` file of (Multi)Polygons."""

    name: str
    polygon: list[tuple[float, float]] | None = None
    geojson: Path | None = None  # relative paths are read from the config file's folder
    _rings: list[list[tuple[float, float]]] = PrivateAttr(default_factory=list)

    @field_validator("geojson")
    @classmethod
    def _beside_config(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        value = Path(os.path.expandvars(str(value))).expanduser()
        base = (info.context or {}).get("config_dir")
        return value if value.is_absolute() or base is None else Path(base) / value

    @model_validator(mode="after")
    def _outline(self):
        if (self.polygon is None) == (self.geojson is None):
            raise ValueError(f"basin {self.name!r} needs exactly one of polygon or geojson")
        rings = [self.polygon] if self.polygon is not None else geojson_rings(self.geojson)
        for ring in rings:
            if len(ring) < 3:
                raise ValueError(f"basin {self.name!r}: an outline needs at least 3 [lon, lat] points")
            if not all(-180 <= lon <= 180 and -90 <= lat <= 90 for lon, lat in ring):
                raise ValueError(f"basin {self.name!r}: every point needs -180 <= lon <= 180 and -90 <= lat <= 90")
        self._rings = [[(float(lon), float(lat)) for lon, lat in ring] for ring in rings]
        return self

    @property
    def rings(self) -> list[list[tuple[float, float]]]:
        """The outline as closed-or-open [lon, lat] rings (a GeoJSON MultiPolygon gives several)."""
        return self._rings


def geojson_rings(path: Path) -> list[list[tuple[float, float]]]:
    """Every outer and inner ring of the Polygon and MultiPolygon geometries in a GeoJSON file."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable GeoJSON ({exc})") from None
    geometries = {"FeatureCollection": lambda d: [f.get("geometry") or {} for f in d.get("features", [])],
                  "Feature": lambda d: [d.get("geometry") or {}]}.get(data.get("type") if isinstance(data, dict) else None, lambda d: [d])(data)
    rings = []
    for geometry in geometries:
        kind, coords = geometry.get("type"), geometry.get("coordinates")
        polygons = [coords] if kind == "Polygon" else coords if kind == "MultiPolygon" else None
        if polygons is None:
            raise ValueError(f"{path}: holds a {kind or 'geometry-less'} geometry; basins need Polygon or MultiPolygon")
        rings.extend([tuple(point[:2]) for point in ring] for polygon in polygons for ring in polygon)
    if not rings:
        raise ValueError(f"{path}: holds no polygon")
    return rings


class ProductsConfig(Section):
    may_be_empty = frozenset({"basins"})
    directory: Path | None = None  # default: <workdir>/products
    thresholds_mmh: list[float] = [1.0, 5.0, 10.0, 25.0]
    accumulation_hours: list[int] = [1, 3, 6]
    quantize: bool = True
    deflate_level: int = Field(4, ge=0, le=9)
    ef5_export: bool = False
    quicklook: bool = True
    retention_days: float = Field(30, gt=0)
    granule_retention_days: float = Field(7, gt=0)
    ef5_directory: Path | None = None  # default: <product directory>/ef5
    ef5_stamp: Literal["end", "start"] = "end"  # EF5 reads the file stamped t for the step ending at t
    ef5_nodata: float = -9999.0  # NaN cells become this, declared in the GDAL_NODATA tag
    quicklook_threshold_mmh: float = Field(10.0, gt=0)
    quicklook_member: int = Field(0, ge=0)
    latest_hours: float = Field(24, gt=0)  # latest.json lists valid times this far back from the newest
    orphan_grace_minutes: float = Field(60, gt=0)  # unregistered or temp files younger than this are left alone
    min_valid_fraction: float = Field(0.5, gt=0, le=1)  # an ensemble with less non-NaN is not published
    max_rate_mmh: float = Field(500, gt=0)  # nor one with a member above this rate
    basins: list[Basin] = []  # outlines drawn on the maps, as [[products.basins]] tables with name and polygon or geojson

    @field_validator("accumulation_hours")
    @classmethod
    def _hours(cls, values: list[int]) -> list[int]:
        if any(v <= 0 for v in values):
            raise ValueError("accumulation hours must be positive")
        return sorted(set(values))

    @field_validator("thresholds_mmh")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if any(v <= 0 for v in values):
            raise ValueError("thresholds must be positive")
        return sorted(values)


class AlertArea(Section):
    name: str
    west: float = Field(ge=-180, le=180)
    south: float = Field(ge=-90, le=90)
    east: float = Field(ge=-180, le=180)
    north: float = Field(ge=-90, le=90)
    threshold_mmh: float = Field(10.0, gt=0)
    probability: float = Field(0.5, gt=0, le=1)

    @model_validator(mode="after")
    def _ordered(self):
        if self.west >= self.east or self.south >= self.north:
            raise ValueError(f"area {self.name!r} needs west < east and south < north")
        return self


class AlertsConfig(Section):
    may_be_empty = frozenset({"areas"})
    areas: list[AlertArea] = [
        AlertArea(name="des_moines", west=-94.0, south=41.3, east=-93.3, north=41.9, threshold_mmh=10.0, probability=0.5)
    ]


class ServiceConfig(Section):
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9309, ge=0, le=65535)
    lease_seconds: float = Field(600, gt=0)
    heartbeat_seconds: float = Field(30, gt=0)
    poll_backoff_s: float = Field(60, gt=0)
    ingest_cutoff_minutes: float = Field(20, ge=0)
    misfire_grace_s: float = Field(600, gt=0)
    catchup_order: Literal["newest", "oldest"] = "newest"
    catchup_max_cycles: int = Field(48, ge=0)
    max_attempts: int = Field(3, ge=1)
    retry_delay_s: float = Field(120, ge=0)  # before a failed job's 2nd attempt; doubled for each one after
    shutdown_timeout_s: float = Field(60, gt=0)
    worker_poll_s: float = Field(5, gt=0)  # idle worker: seconds between claim attempts

    @field_validator("metrics_host")
    @classmethod
    def _resolvable(cls, host: str) -> str:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            try:
                socket.getaddrinfo(host, None)
            except (OSError, UnicodeError) as exc:
                raise ValueError(f"cannot resolve host {host!r} ({exc})") from None
        return host


class VerifyConfig(Section):
    thresholds_mmh: list[float] = [1.0, 5.0]  # CSI, POD and FAR of the ensemble mean (event: rate > threshold)
    min_swath_cells: int = Field(50, ge=1)
    brier_thresholds_mmh: list[float] = [1.0, 5.0, 10.0]  # Brier score and reliability diagram per threshold
    rank_min_mmh: float = Field(0.1, ge=0)  # rank histogram: rates below this tie; all-dry cells are left out
    reliability_bins: int = Field(10, ge=2)

    @field_validator("thresholds_mmh", "brier_thresholds_mmh")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if any(v <= 0 for v in values):
            raise ValueError("thresholds must be positive")
        return sorted(set(values))


class Secrets(Section):
    """Filled from the environment / credential files, never from the TOML file; left out of repr()."""

    database_url: str | None = Field(None, repr=False)
    pps_email: str | None = Field(None, repr=False)
    earthdata_token: str | None = Field(None, repr=False)
    earthdata_username: str | None = Field(None, repr=False)
    earthdata_password: str | None = Field(None, repr=False)


class Config(Section):
    general: GeneralConfig = GeneralConfig()
    domain: DomainConfig = DomainConfig()
    timeline: TimelineConfig = TimelineConfig()
    sources: SourcesConfig = SourcesConfig()
    catalog: CatalogConfig = CatalogConfig()
    nowcast: NowcastConfig = NowcastConfig()
    model: ModelConfig = ModelConfig()
    products: ProductsConfig = ProductsConfig()
    alerts: AlertsConfig = AlertsConfig()
    service: ServiceConfig = ServiceConfig()
    verify: VerifyConfig = VerifyConfig()
    train: TrainConfig = TrainConfig()
    secrets: Secrets = Field(default_factory=Secrets, exclude=True)
    source_file: str | None = Field(default=None, exclude=True)

    @property
    def workdir(self) -> Path:
        return self.general.workdir

    @property
    def product_dir(self) -> Path:
        return self.products.directory or self.workdir / "products"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def database_url(self) -> str:
        url = self.secrets.database_url or self.catalog.url
        return url.replace("{workdir}", str(self.workdir))

    def masked(self) -> dict:
        """The effective configuration as plain data, with every secret masked."""
        data = self.model_dump(mode="json")
        data["catalog"]["url"] = mask_url(self.database_url)
        data["secrets"] = {key: (MASK if value else None) for key, value in self.secrets.model_dump().items()}
        return data


def mask_url(url: str) -> str:
    """Hide the password of a database URL (`postgresql://user:pw@host/db` -> `user:********@`)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy understands; show nothing of it
        return MASK


def _credential(name: str) -> str | None:
    """A secret from the environment or from systemd's $CREDENTIALS_DIRECTORY (LoadCredential=)."""
    value = os.environ.get(SECRET_ENV[name])
    if value:
        return value
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / name
        if path.is_file():
            return path.read_text().strip() or None
    return None


def _format_error(source: str, error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        reason = "unknown key"
    else:
        reason = first["msg"].removeprefix("Value error, ")
        if "input" in first and kind not in ("missing",) and not isinstance(first["input"], dict):
            reason += f" (got {first['input']!r})"
    return f"{source}: {key}: {reason}"


HEARTBEATS_PER_LEASE = 3  # a lease survives two missed heartbeats (a database blip) before it lapses


def check_service(service: ServiceConfig, source: str = "<config>") -> None:
    """Rules between service keys (checked at load and again by the worker, as tests set keys after loading)."""
    if service.heartbeat_seconds * HEARTBEATS_PER_LEASE > service.lease_seconds:
        raise ConfigError(
            source,
            f"service.heartbeat_seconds ({service.heartbeat_seconds:g}) must be at most a third of "
            f"service.lease_seconds ({service.lease_seconds:g}), or a busy worker loses its lease",
        )


def from_dict(data: dict, source: str = "<config>", config_dir: Path | None = None) -> Config:
    try:
        cfg = Config.model_validate(data, context={"config_dir": config_dir})
    except ValidationError as exc:
        raise ConfigError(source, _format_error(source, exc).split(": ", 1)[1]) from None
    check_service(cfg.service, source)
    cfg.source_file = source
    cfg.secrets = Secrets(**{name: _credential(name) for name in SECRET_ENV})
    return cfg


def load(path: str | os.PathLike | None = None) -> Config:
    """Load and validate a TOML file; `None` gives the built-in offline defaults."""
    if path is None:
        return from_dict({}, "<defaults>")
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), "no such file") from None
    except OSError as exc:
        raise ConfigError(str(path), exc.strerror or str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    return from_dict(data, str(path), path.parent)
