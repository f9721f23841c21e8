"""Scores: verification of products against a truth source, one row per metric, threshold, lead and model."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from nrt.store.db import snapshot, utcnow
from nrt.store.schema import Product, Score
from nrt.timeline import utc


@dataclass(frozen=True)
class ScoreRow:
    id: int
    product_id: int
    valid_time: datetime
    truth_source: str
    metric: str
    threshold: float | None
    lead: int
    model: str
    value: float | None
    created_at: datetime


class Scores:
    """The catalog's score queries (a part of `nrt.store.Catalog`)."""

    def add_scores(self, product_id: int, truth_source: str, rows: Iterable[dict[str, Any]]) -> int:
        """Store scores of a product against a truth source; returns how many were stored.

        Each row: `metric`, `value`, optional `threshold` (None), `lead` (the product's) and
        `model` ("nrt"; "baseline" for the reference forecast). A row with the same product, truth,
        metric, threshold, lead and model replaces the old one, so re-verifying is idempotent.
        NaN values are stored as NULL and come back as None.
        """
        stored = 0
        with self.writing() as session:
            product = session.get(Product, product_id)
            if product is None:
                raise LookupError(f"no product {product_id} in the catalog")
            # One read of this product's scores instead of a DELETE per row (an overpass stores hundreds).
            existing = {
                (s.metric, s.threshold, s.lead, s.model): s
                for s in session.scalars(select(Score).where(Score.product_id == product_id, Score.truth_source == truth_source))
            }
            now = utcnow()
            for row in rows:
                value = row["value"]
                value = None if value is None or math.isnan(value) else float(value)
                threshold = row.get("threshold")
                key = (row["metric"], None if threshold is None else float(threshold),
                       int(row.get("lead", product.lead)), row.get("model", "nrt"))
                score = existing.get(key)
                if score is None:
                    score = existing[key] = Score(product_id=product_id, truth_source=truth_source, metric=key[0],
                                                  threshold=key[1], lead=key[2], model=key[3])
                    session.add(score)
                score.value, score.created_at = value, now
                stored += 1
        return stored

    def scores(
        self, product_id: int | None = None, truth_source: str | None = None, metric: str | None = None,
        model: str | None = None, since: datetime | None = None, until: datetime | None = None,
    ) -> list[ScoreRow]:
        """Scores, with their product's valid time, filtered by any of the arguments, oldest first."""
        stmt = select(Score, Product.valid_time).join(Product, Score.product_id == Product.id)
        for column, value in ((Score.product_id, product_id), (Score.truth_source, truth_source),
                              (Score.metric, metric), (Score.model, model)):
            if value is not None:
                stmt = stmt.where(column == value)
        if since is not None:
            stmt = stmt.where(Product.valid_time >= utc(since))
        if until is not None:
            stmt = stmt.where(Product.valid_time <= utc(until))
        stmt = stmt.order_by(Product.valid_time, Score.metric, Score.threshold, Score.lead, Score.model, Score.id)
        with self.reading() as session:
            return [snapshot(ScoreRow, score, valid_time=valid) for score, valid in session.execute(stmt)]
