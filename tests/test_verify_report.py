"""`nrt verify`: the report's tables match the pooled scores, and its figures are written."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from nrt.store import Catalog
from nrt.cli import main
from nrt.verify import score_overpass

UTC = timezone.utc
V1 = datetime(2024, 6, 1, 12, tzinfo=UTC)
V2 = datetime(2024, 6, 2, 18, 30, tzinfo=UTC)
FIGURES = {"scores_by_lead.png", "crps_by_lead.png", "categorical_by_lead.png", "brier_by_lead.png", "reliability.png",
           "rank_histograms.png"}


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "nrt.toml"
    path.write_text(f'[general]\nworkdir = "{tmp_path / "work"}"\n')
    return path


def fields(rng, lead: int, shape=(30, 40), members=10):
    """Truth, an ensemble whose spread and error grow with lead, a bilinear baseline and a CSGD-like ensemble."""
    truth = np.maximum(rng.gamma(0.7, 4.0, shape) - 1.0, 0).astype(np.float32)
    error = 0.2 + 0.1 * lead
    centre = np.log1p(truth) + error * rng.standard_normal(shape)
    ens = np.maximum(np.expm1(centre + error * rng.standard_normal((members, *shape))), 0).astype(np.float32)
    base = np.maximum(truth * np.exp(0.5 * rng.standard_normal(shape)), 0).astype(np.float32)
    csgd = np.maximum(base * np.exp(0.6 * rng.standard_normal((members, *shape))), 0).astype(np.float32)
    return ens, base, truth, csgd


@pytest.fixture
def scored(config_file, tmp_path):
    """A catalog holding DPR scores of leads 0..2 at two valid times; returns what was scored."""
    from nrt import config

    cfg = config.load(config_file)
    rng = np.random.default_rng(0)
    mask = np.zeros((30, 40), bool)
    mask[:, 8:30] = True
    stacks = {}
    with Catalog.open(cfg.database_url, migrate=True) as catalog:
        for valid in (V1, V2):
            for lead in (0, 1, 2):
                cycle = valid - lead * timedelta(minutes=30) + timedelta(hours=4)
                product = catalog.register_product("ensemble", valid, cycle, lead, 10, tmp_path / f"p{lead}.nc", 1, "0" * 64)
                ens, base, truth, csgd = fields(rng, lead)
                rows = score_overpass(ens, base, truth, mask, cfg.verify.thresholds_mmh, cfg.verify.brier_thresholds_mmh, csgd=csgd)
                catalog.add_scores(product, "dpr", [{**r, "lead": lead} for r in rows])
                stacks.setdefault(lead, []).append((ens, base, truth, csgd))
    return cfg, stacks, mask


def all_at_once(stacks, mask, lead=None):
    """Score every field of the span (or of one lead) as one big overpass: what the pooled report must show."""
    chosen = [f for k, fs in stacks.items() if lead is None or k == lead for f in fs]
    ens = np.concatenate([f[0] for f in chosen], axis=1)
    base = np.concatenate([f[1] for f in chosen], axis=0)
    truth = np.concatenate([f[2] for f in chosen], axis=0)
    csgd = np.concatenate([f[3] for f in chosen], axis=1)
    rows = score_overpass(ens, base, truth, np.concatenate([mask] * len(chosen), axis=0), [1.0, 5.0], [1.0, 5.0, 10.0], csgd=csgd)
    return {(r["metric"], r["threshold"], r["model"]): r["value"] for r in rows}


def direct_crpss(stacks, mask, lead=None) -> dict[str, float]:
    """CRPSS against each baseline straight from the fields: the fair CRPS of the members, the MAE of the bilinear."""
    chosen = [f for k, fs in stacks.items() if lead is None or k == lead for f in fs]
    ens, base, truth, csgd = (np.concatenate([f[i][..., mask] for f in chosen], axis=-1).astype(np.float64) for i in range(4))

    def crps(members):  # E|X - y| - E|X - X'| / 2, by brute force over member pairs
        pairs = np.abs(members[:, None] - members[None]).mean(axis=(0, 1))
        return (np.abs(members - truth).mean(axis=0) - pairs / 2).mean()

    ours = crps(ens)
    return {"bilinear": 1 - ours / np.abs(base - truth).mean(), "csgd": 1 - ours / crps(csgd)}


def table_row(text: str, heading: str, first: str) -> list[str]:
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} under {heading!r}")


def test_report_tables_match_pooled_scores_and_figures_are_written(scored, config_file, tmp_path, capsys):
    cfg, stacks, mask = scored
    out = tmp_path / "report"
    rc = main(["--config", str(config_file), "verify", "--start", "2024-06-01T00:00Z", "--end", "2024-06-03T00:00Z", "--out", str(out)])
    assert rc == 0
    assert "2 overpass half-hour(s), 6 product(s)" in capsys.readouterr().out
    text = (out / "report.md").read_text()
    assert {p.name for p in out.glob("*.png")} == FIGURES
    for name in FIGURES:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
        assert f"]({name})" in text

    heading = "## CRPS and skill by lead"
    for lead in (None, 0, 2):
        expected = all_at_once(stacks, mask, lead)
        name = "all" if lead is None else str(lead)
        row = table_row(text, heading, name)
        assert int(row[1]) == expected[("n_cells", None, "nrt")]
        assert float(row[2]) == pytest.approx(expected[("crps", None, "nrt")], abs=6e-4)
        assert float(row[3]) == pytest.approx(expected[("crps", None, "bilinear")], abs=6e-4)
        assert float(row[4]) == pytest.approx(expected[("crps", None, "csgd")], abs=6e-4)
        skill = direct_crpss(stacks, mask, lead)
        assert float(row[5]) == pytest.approx(skill["bilinear"], abs=6e-3)
        assert float(row[6]) == pytest.approx(skill["csgd"], abs=6e-3)
        assert float(row[7]) == pytest.approx(expected[("spread_skill", None, "nrt")], abs=6e-3)
        assert float(row[8]) == pytest.approx(expected[("spread_skill", None, "csgd")], abs=6e-3)
        means = table_row(text, "## Continuous scores", name)
        assert float(means[3]) == pytest.approx(expected[("bias", None, "bilinear")], abs=6e-4)
        assert float(means[4]) == pytest.approx(expected[("bias", None, "csgd")], abs=6e-4)
    expected = all_at_once(stacks, mask)
    csi = table_row(text, "## Categorical scores", "all")  # the first threshold's pooled row comes first
    assert csi[1] == "1" and float(csi[2]) == pytest.approx(expected[("csi", 1.0, "nrt")], abs=6e-3)
    brier = table_row(text, "## Brier score", "all")
    assert float(brier[2]) == pytest.approx(expected[("brier", 1.0, "nrt")], abs=6e-5)
    # The ensemble's error grows with lead in this data: the report must show it.
    crps = [float(table_row(text, heading, str(lead))[2]) for lead in (0, 1, 2)]
    assert crps[0] < crps[1] < crps[2]


def test_report_of_a_span_without_scores_says_so(scored, config_file, tmp_path, capsys):
    out = tmp_path / "empty"
    rc = main(["--config", str(config_file), "verify", "--start", "2023-01-01T00:00Z", "--end", "2023-01-02T00:00Z", "--out", str(out)])
    assert rc == 1
    assert "no DPR scores" in capsys.readouterr().out
    assert "No DPR scores" in (out / "report.md").read_text()
    assert not list(out.glob("*.png"))


@pytest.mark.parametrize(
    "start, end, message",
    [("2024-06-02T00:00Z", "2024-06-01T00:00Z", "--end: 2024-06-01T00:00:00Z is before --start"),
     ("yesterday", "2024-06-01T00:00Z", "--start/--end")],
)
def test_bad_span_is_a_one_line_error(config_file, tmp_path, capsys, start, end, message):
    rc = main(["--config", str(config_file), "verify", "--start", start, "--end", end, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert re.match(r"nrt: error: ", err)
