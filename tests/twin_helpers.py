"""Small twin trees for the twin tests: the default (Iowa) domain over a couple of hours with a DPR overpass."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from nrt.config import DomainConfig
from nrt.twin.generate import generate
from nrt.twin.spec import TwinSpec

IOWA = DomainConfig().box()
# 2024-06-01 12:00-14:00 UTC holds the DPR granule 12:02:57-12:32:57, whose swath crosses the Iowa region.
START = datetime(2024, 6, 1, 12, tzinfo=timezone.utc)
END = datetime(2024, 6, 1, 14, tzinfo=timezone.utc)


def small_spec(start=START, end=END, seed=7, **imerg) -> TwinSpec:
    spec = TwinSpec(IOWA, start, end, seed)
    return replace(spec, imerg=replace(spec.imerg, **imerg)) if imerg else spec


def make_tree(root: Path, spec: TwinSpec | None = None) -> Path:
    generate(spec or small_spec(), root)
    return root
