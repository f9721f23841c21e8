"""The catalog (SQLAlchemy 2): granules, cycle runs, products and scores, plus the jobs table that
`nrt.service.queue` works and every write's lease fence checks.

`Catalog` is one database (`db.Database`: engine, SQLite tuning, sessions, fencing, migrations) with the
queries of each table (`granules`, `runs`, `products`, `scores`) as its parts. The job queue is not one of
them: only the service uses it (`nrt.service.queue.JobQueue(catalog)`).
"""

from __future__ import annotations

from sqlalchemy import func, select

from nrt.store.db import Database, resolve_url
from nrt.store.granules import GranuleRow, Granules
from nrt.store.products import ProductRow, Products
from nrt.store.runs import RunRow, Runs
from nrt.store.schema import GRANULE_STATES, JOB_STATES, PRODUCT_STATES, RUN_STATES, Base, Granule, Job, Product, Run, Score
from nrt.store.scores import ScoreRow, Scores

__all__ = ["Base", "Catalog", "GranuleRow", "ProductRow", "RunRow", "ScoreRow", "resolve_url"]


class Catalog(Database, Granules, Runs, Products, Scores):
    """One catalog database. `Catalog.open(url)` checks it; `Catalog.open(url, migrate=True)` creates it."""

    def counts(self) -> dict[str, dict[str, int]]:
        """Row counts by table and state (products: current/superseded; scores: rows)."""
        result = {
            "granules": dict.fromkeys(GRANULE_STATES, 0),
            "runs": dict.fromkeys(RUN_STATES, 0),
            "jobs": dict.fromkeys(JOB_STATES, 0),
            "products": dict.fromkeys(PRODUCT_STATES, 0),
            "scores": {"rows": 0},
        }
        product_state = Product.superseded_by.is_(None)
        with self.reading() as session:
            for table, model in (("granules", Granule), ("runs", Run), ("jobs", Job)):
                for state, n in session.execute(select(model.state, func.count()).group_by(model.state)):
                    result[table][state] = n
            for current, n in session.execute(select(product_state, func.count()).group_by(product_state)):
                result["products"]["current" if current else "superseded"] = n
            result["scores"]["rows"] = session.scalar(select(func.count()).select_from(Score))
        return result
