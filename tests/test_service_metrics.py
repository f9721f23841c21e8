"""Metrics served over real HTTP on 127.0.0.1 and parsed with prometheus_client's own parser."""

from __future__ import annotations

import re
import shutil
import urllib.request
from dataclasses import dataclass
from functools import partial
from datetime import datetime, timezone
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nrt.degradation import Degradation, Fallback, NowcastReason, flag
from nrt.pipeline import CycleReport
from nrt.service.metrics import STAGE_BUCKETS, Metrics

ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def contract_table() -> dict[str, tuple[str, set[str]]]:
    """name -> (type, label names) from the metric table in docs/architecture.md."""
    rows = {}
    text = ARCHITECTURE.read_text()
    for line in text[text.index("Metric names") :].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`(nrt_[a-z_]+)`", cells[0])
        kind = cells[1].split()[0]
        label_text = re.sub(r"\(.*?\)", "", cells[2])  # drop listed values: "outcome (ok, degraded, failed)"
        labels = set() if label_text.strip() == "—" else {part.strip() for part in label_text.split(",")}
        for name in names:
            rows[name] = (kind, labels)
    return rows


@dataclass
class Product:
    kind: str
    size: int


@dataclass
class Summary:
    mean_rain_rate: float
    max_exceedance: dict


@dataclass
class Alert:
    area: str
    threshold: float
    probability: float
    active: bool


@dataclass
class Overpass:
    gauge_rows: list
    new_overpass: bool


# The pipeline's own report type, so the metrics and the worker are tested against what they really get.
Report = partial(CycleReport, datetime(2024, 6, 1, tzinfo=timezone.utc))


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families, family, sample, **labels):
    matches = [s.value for s in families[family].samples if s.name == sample and s.labels == labels]
    assert len(matches) == 1, (sample, labels, families[family].samples)
    return matches[0]


@pytest.fixture
def served():
    metrics = Metrics()
    server, port = metrics.start_http()
    yield metrics, server, port
    server.shutdown()
    server.server_close()


def test_contract_table_is_parsed():
    table = contract_table()
    assert len(table) == 24
    assert table["nrt_verification_score"] == ("gauge", {"metric", "threshold", "lead", "model"})
    assert table["nrt_verification_crpss"] == ("gauge", {"lead", "baseline"})
    assert table["nrt_downscale_fallback_total"] == ("counter", {"reason"})
    assert table["nrt_product_bytes_total"] == ("counter", {"kind"})
    assert table["nrt_cycles_total"] == ("counter", {"outcome"})
    assert table["nrt_gpu_memory_peak_bytes"] == ("gauge", set())


def test_every_contract_metric_is_served_with_its_type_and_labels(served, tmp_path):
    metrics, server, port = served
    assert server.server_address[0] == "127.0.0.1"
    t = datetime(2024, 6, 1, 12, 30, tzinfo=timezone.utc)
    metrics.record_cycle(
        Report(
            timings={"ingest": 2.0},
            degraded=[flag(Degradation.NOWCAST, NowcastReason.DRY)],
            nowcast_degraded=[NowcastReason.DRY],
            downscale_fallbacks=[Fallback.CHECKPOINT_UNLOADABLE],
            products=[Product("ensemble", 10)],
            sources={"imerg": t},
            summary=Summary(0.3, {1.0: 0.2}),
            alerts=[Alert("des_moines", 10.0, 0.6, True)],
        ),
        at=t,
    )
    metrics.record_stage_failure("diffusion", "RuntimeError")
    metrics.refresh_jobs({"jobs": {"queued": 1}})
    metrics.set_checkpoint("builtin:demo", "ab12")
    metrics.record_scores([{"metric": "crps", "threshold": None, "lead": 2, "value": 0.4, "model": "nrt"},
                           {"metric": "crps", "threshold": None, "lead": 2, "value": 0.5, "model": "csgd"}])
    metrics.record_disk_free([tmp_path])
    families = scrape(port)
    for name, (kind, labels) in contract_table().items():
        family = name.removesuffix("_total") if kind == "counter" else name
        assert family in families, name
        # The text format has no "info" type: an Info is a gauge of 1 whose labels carry the values.
        assert families[family].type == ("gauge" if kind == "info" else kind), name
        samples = [s for s in families[family].samples if s.name in (name, f"{name}_bucket")]
        assert samples, f"{name} exported no sample"
        for sample in samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
    assert not {name for name in families if not name.startswith("nrt_")}


def test_cycle_report_values(served):
    metrics, _, port = served
    t = datetime(2024, 6, 1, 12, 30, tzinfo=timezone.utc)
    newest = datetime(2024, 6, 1, 8, 30, tzinfo=timezone.utc)
    durations = [0.2, 3.0, 45.0, 700.0]
    for seconds in durations[:-1]:
        metrics.record_cycle(Report(timings={"nowcast": seconds}), at=t)
    report = Report(
        timings={"nowcast": durations[-1], "diffusion": 80.0},
        degraded=[Degradation.GEOSFP_PREVIOUS_FORECAST],
        nowcast_degraded=[NowcastReason.MISSING_GRANULE],
        downscale_fallbacks=[Fallback.CHECKPOINT_UNLOADABLE],
        products=[Product("ensemble", 1000), Product("ensemble", 2500), Product("summary", 300)],
        sources={"imerg": newest, "dem": None},
        summary=Summary(0.75, {1.0: 0.9, 10: 0.25}),
        alerts=[Alert("des_moines", 10, 0.25, False)],
        scores=[
            Overpass([{"metric": "crps", "threshold": None, "lead": 0, "value": 0.5, "model": "nrt"}], True),
            Overpass([{"metric": "crps", "threshold": None, "lead": 0, "value": 0.4, "model": "nrt"}], False),
        ],
    )
    assert metrics.record_cycle(report, at=t) == "degraded"
    metrics.record_cycle_failure("ingest", "FetchError")
    families = scrape(port)

    buckets = {s.labels["le"]: s.value for s in families["nrt_stage_duration_seconds"].samples
               if s.name.endswith("_bucket") and s.labels["stage"] == "nowcast"}
    for bound in STAGE_BUCKETS:
        assert buckets[str(float(bound))] == sum(d <= bound for d in durations)
    assert buckets["+Inf"] == len(durations)
    assert value(families, "nrt_stage_duration_seconds", "nrt_stage_duration_seconds_sum", stage="nowcast") == pytest.approx(sum(durations))
    assert value(families, "nrt_stage_last_success_timestamp_seconds", "nrt_stage_last_success_timestamp_seconds", stage="diffusion") == t.timestamp()
    assert value(families, "nrt_source_newest_granule_timestamp_seconds", "nrt_source_newest_granule_timestamp_seconds", source="imerg") == newest.timestamp()
    assert value(families, "nrt_source_last_success_timestamp_seconds", "nrt_source_last_success_timestamp_seconds", source="dem") == t.timestamp()
    assert value(families, "nrt_cycles", "nrt_cycles_total", outcome="ok") == 3
    assert value(families, "nrt_cycles", "nrt_cycles_total", outcome="degraded") == 1
    assert value(families, "nrt_cycles", "nrt_cycles_total", outcome="failed") == 1
    assert value(families, "nrt_stage_failures", "nrt_stage_failures_total", stage="ingest", reason="FetchError") == 1
    assert value(families, "nrt_nowcast_degraded", "nrt_nowcast_degraded_total", reason="missing_granule") == 1
    assert value(families, "nrt_downscale_fallback", "nrt_downscale_fallback_total", reason="checkpoint_unloadable") == 1
    assert value(families, "nrt_products_written", "nrt_products_written_total", kind="ensemble") == 2
    assert value(families, "nrt_product_bytes", "nrt_product_bytes_total", kind="ensemble") == 3500
    assert value(families, "nrt_product_bytes", "nrt_product_bytes_total", kind="summary") == 300
    assert value(families, "nrt_last_product_mean_rain_rate_mm_per_hour", "nrt_last_product_mean_rain_rate_mm_per_hour") == 0.75
    # 10 and 10.0 must land on one label value
    assert value(families, "nrt_last_product_max_exceedance_probability", "nrt_last_product_max_exceedance_probability", threshold="10") == 0.25
    assert value(families, "nrt_precipitation_alert", "nrt_precipitation_alert", area="des_moines", threshold="10") == 0
    assert value(families, "nrt_precipitation_alert_probability", "nrt_precipitation_alert_probability", area="des_moines", threshold="10") == 0.25
    assert value(families, "nrt_cycle_last_success_timestamp_seconds", "nrt_cycle_last_success_timestamp_seconds") == t.timestamp()
    # a re-score of the same crossing updates the gauge but is not a second overpass
    assert value(families, "nrt_verification_score", "nrt_verification_score", metric="crps", threshold="", lead="0", model="nrt") == 0.4
    assert value(families, "nrt_verification_overpasses", "nrt_verification_overpasses_total") == 1


def test_jobs_checkpoint_scores_and_disk(served, tmp_path):
    metrics, _, port = served
    metrics.refresh_jobs({"jobs": {"queued": 4, "running": 2, "done": 9}})
    metrics.refresh_jobs({"jobs": {"queued": 3}})  # running drained: must read 0, not stay at 2
    metrics.set_checkpoint("builtin:demo", "c0ffee")
    rows = [
        {"metric": "csi", "threshold": 1.0, "lead": 3, "value": 0.41, "model": "nrt"},
        {"metric": "csi", "threshold": 1.0, "lead": 3, "value": 0.33, "model": "bilinear"},
        {"metric": "crps", "threshold": None, "lead": 3, "value": 0.3, "model": "nrt"},
        {"metric": "crps", "threshold": None, "lead": 3, "value": 0.2, "model": "bilinear"},
        {"metric": "crps", "threshold": None, "lead": 3, "value": 0.4, "model": "csgd"},
    ]
    metrics.record_scores(rows)
    metrics.record_scores(rows[:1])
    metrics.record_disk_free([tmp_path])
    families = scrape(port)
    assert value(families, "nrt_jobs", "nrt_jobs", state="queued") == 3
    assert value(families, "nrt_jobs", "nrt_jobs", state="running") == 0
    assert value(families, "nrt_checkpoint_info", "nrt_checkpoint_info", name="builtin:demo", sha256="c0ffee") == 1
    assert value(families, "nrt_verification_score", "nrt_verification_score", metric="csi", threshold="1", lead="3", model="bilinear") == 0.33
    # CRPS skill against each baseline: 1 - 0.3 / 0.2 (worse than upsampling) and 1 - 0.3 / 0.4
    assert value(families, "nrt_verification_crpss", "nrt_verification_crpss", lead="3", baseline="bilinear") == pytest.approx(-0.5)
    assert value(families, "nrt_verification_crpss", "nrt_verification_crpss", lead="3", baseline="csgd") == pytest.approx(0.25)
    assert value(families, "nrt_verification_overpasses", "nrt_verification_overpasses_total") == 2
    free = value(families, "nrt_disk_free_bytes", "nrt_disk_free_bytes", path=str(tmp_path))
    assert free == pytest.approx(shutil.disk_usage(tmp_path).free, rel=0.01)


def test_metrics_objects_are_independent():
    first, second = Metrics(), Metrics()
    first.cycles.labels(outcome="ok").inc()
    assert second.registry.get_sample_value("nrt_cycles_total", {"outcome": "ok"}) == 0


def test_gpu_memory_follows_the_cuda_allocator():
    torch = pytest.importorskip("torch")
    metrics = Metrics()
    metrics.record_gpu_memory()
    used = metrics.registry.get_sample_value("nrt_gpu_memory_used_bytes")
    if not torch.cuda.is_available():
        assert used == 0  # CPU host: the gauges stay at zero rather than inventing a figure
        return
    block = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    metrics.record_gpu_memory()
    assert metrics.registry.get_sample_value("nrt_gpu_memory_used_bytes") == torch.cuda.memory_allocated()
    assert metrics.registry.get_sample_value("nrt_gpu_memory_peak_bytes") >= block.numel()
