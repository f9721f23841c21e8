"""Verification against GPM DPR: scores (pure), online scoring of each overpass, and the report.

- `scores`: `score_overpass` (ensemble and baseline vs truth on swath cells), `pool`, `gauge_rows`;
- `online`: `verify_granules` / `verify_granule` / `verify_half_hour` score the catalog's products valid
  during an overpass and store the scores (truth source "dpr");
- `report`: `write_report`, the Markdown + PNG report of `nrt verify`.

See docs/verification.md for the definitions.
"""

from nrt.verify.online import (
    TRUTH_SOURCE, OverpassScores, VerifySettings, verify_granule, verify_granules, verify_half_hour, verify_settings,
)
from nrt.verify.scores import BASELINES, BILINEAR, CSGD, NRT, ScoreSet, crps_ensemble, gauge_rows, pool, score_overpass, score_sets

__all__ = [
    "TRUTH_SOURCE", "OverpassScores", "VerifySettings", "verify_granule", "verify_granules", "verify_half_hour", "verify_settings",
    "BASELINES", "BILINEAR", "CSGD", "NRT", "ScoreSet", "crps_ensemble", "gauge_rows", "pool", "score_overpass", "score_sets",
]
