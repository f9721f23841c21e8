"""Prometheus rules and config, checked and unit-tested with promtool; the Grafana dashboard and provisioning.

promtool comes from Debian's `prometheus` package (.ci/run installs it); its tests skip, saying so, where it is
absent. Every PromQL expression (rules and dashboard) may only name metrics of the table in docs/architecture.md.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURE = REPO / "docs" / "architecture.md"
PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "nrt-rules.yml"
RULE_TESTS = PROMETHEUS / "nrt-rules.test.yml"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "nrt-overview.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "nrt.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "nrt.yml"

# Series Prometheus itself makes, and node_exporter's (the optional `node` job) used by one rule.
NON_NRT_METRICS = {"up", "ALERTS", "node_filesystem_avail_bytes", "node_filesystem_size_bytes"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def contract_metrics() -> set[str]:
    """Series names the daemon exports, from the metric table at the bottom of docs/architecture.md."""
    names = set()
    for line in ARCHITECTURE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`nrt_"):
            continue
        for name in re.findall(r"`(nrt_\w+)`", cells[0]):
            names.add(name)
            if cells[1].startswith("histogram"):
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    assert len(names) > 20, "the metric table in docs/architecture.md was not found"
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, labels or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings: label values, regexes
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # range durations
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*(\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word in PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def test_metric_name_parser_finds_names_and_skips_functions_labels_and_keywords():
    expr = ('histogram_quantile(0.9, sum by (le, stage) (rate(nrt_stage_duration_seconds_bucket{instance=~"$instance"}[2h])))'
            ' / on(instance) group_left nrt_jobs{state="queued"} > 4 and time() - x_total offset 5m')
    assert metric_names(expr) == {"nrt_stage_duration_seconds_bucket", "nrt_jobs", "x_total"}


def promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; .ci/run installs it)")
    return tool


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


# -- Prometheus -----------------------------------------------------------------------------------------------


def test_promtool_check_rules_and_config():
    tool = promtool()
    rules = run([tool, "check", "rules", RULES.name], PROMETHEUS)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in rules.stdout
    conf = run([tool, "check", "config", "prometheus.yml"], PROMETHEUS)
    assert conf.returncode == 0, conf.stdout + conf.stderr


def test_promtool_unit_tests_pass():
    tool = promtool()
    result = run([tool, "test", "rules", RULE_TESTS.name], PROMETHEUS)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_silent():
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    firing, silent = set(), set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else silent).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names == firing, f"alerts never seen firing: {names - firing}; unknown: {firing - names}"
    assert names == silent, f"alerts never checked silent: {names - silent}"


def test_the_unit_tests_catch_a_changed_threshold(tmp_path):
    """The fixture pins the rules: moving the IMERG staleness limit from 5 h to 6 h breaks a test case."""
    tool = promtool()
    rules = RULES.read_text()
    assert rules.count("(4 + 1) * 3600") == 1
    (tmp_path / RULES.name).write_text(rules.replace("(4 + 1) * 3600", "(4 + 2) * 3600"))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = run([tool, "test", "rules", RULE_TESTS.name], tmp_path)
    assert result.returncode != 0 and "NrtImergStale" in result.stdout + result.stderr


def test_rules_cover_the_required_alerts():
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    by_source = {source: name for name, expr in exprs.items() for source in ("imerg", "dpr", "geosfp")
                 if f'nrt_source_newest_granule_timestamp_seconds{{source="{source}"}}' in expr}
    assert set(by_source) == {"imerg", "dpr", "geosfp"}
    assert all(exprs[name].startswith("time() - nrt_source_newest_granule_timestamp_seconds") for name in by_source.values())
    assert "time() - nrt_cycle_last_success_timestamp_seconds > 3600" in exprs.values()
    assert 'increase(nrt_cycles_total{outcome="failed"}[1h]) > 0' in exprs.values()
    assert any("absent(up{job=\"nrt-worker\"})" in e and "up{job=\"nrt-worker\"} == 0" in e for e in exprs.values())
    assert "increase(nrt_downscale_fallback_total[1h]) > 0" in exprs.values()  # products from the CSGD fallback
    for family in ("nrt_disk_free_bytes", "nrt_gpu_memory_peak_bytes", "nrt_precipitation_alert"):
        assert any(family in metric_names(e) for e in exprs.values()), family
    assert all(rule["labels"]["severity"] in ("critical", "warning", "info") for rule in alert_rules())


def test_rules_use_only_contract_metrics():
    known = contract_metrics() | NON_NRT_METRICS
    for rule in alert_rules():
        assert metric_names(rule["expr"]) <= known, (rule["alert"], metric_names(rule["expr"]) - known)


# -- Grafana --------------------------------------------------------------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict) -> list[dict]:
    found = []
    for panel in dash["panels"]:
        found.append(panel)
        found += panel.get("panels", [])
    return found


def dashboard_queries(dash: dict) -> list[str]:
    exprs = [t["expr"] for p in panels(dash) for t in p.get("targets", [])]
    for variable in dash["templating"]["list"]:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        exprs.append(re.fullmatch(r"label_values\((.*), \w+\)", query).group(1))
    return exprs


def test_dashboard_has_fixed_uid_and_sound_layout():
    dash = dashboard()
    assert dash["uid"] == "nrt-overview" and dash["title"]
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids))
    for panel in panels(dash):
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_queries_use_only_contract_metrics():
    known = contract_metrics() | NON_NRT_METRICS
    exprs = dashboard_queries(dashboard())
    assert len(exprs) > 20
    for expr in exprs:
        assert metric_names(expr), expr
        assert metric_names(expr) <= known, (expr, metric_names(expr) - known)


def test_dashboard_covers_each_topic():
    used = set().union(*(metric_names(e) for e in dashboard_queries(dashboard())))
    topics = {
        "freshness": "nrt_source_newest_granule_timestamp_seconds",
        "durations": "nrt_stage_duration_seconds_bucket",
        "failures": "nrt_stage_failures_total",
        "cycles": "nrt_cycles_total",
        "jobs": "nrt_jobs",
        "products": "nrt_products_written_total",
        "gpu memory": "nrt_gpu_memory_peak_bytes",
        "verification": "nrt_verification_score",
        "skill against the baselines": "nrt_verification_crpss",
        "downscaling fallback": "nrt_downscale_fallback_total",
        "alerts": "nrt_precipitation_alert",
    }
    assert not {topic for topic, metric in topics.items() if metric not in used}


def test_dashboard_queries_parse_as_promql(tmp_path):
    """promtool parses each query (as a recording rule), with Grafana's variables set to match-all."""
    tool = promtool()
    exprs = [re.sub(r"\$\w+", ".*", e) for e in dashboard_queries(dashboard())]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run([tool, "check", "rules", path.name], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_provisioning_matches_the_dashboard():
    sources = yaml.safe_load(DATASOURCES.read_text())
    assert sources["apiVersion"] == 1
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    refs = [p["datasource"] for p in panels(dashboard()) if "datasource" in p]
    refs += [t["datasource"] for p in panels(dashboard()) for t in p.get("targets", [])]
    refs += [v["datasource"] for v in dashboard()["templating"]["list"]]
    assert refs and all(ref == {"type": "prometheus", "uid": source["uid"]} for ref in refs)
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and Path(provider["options"]["path"]).is_absolute()
