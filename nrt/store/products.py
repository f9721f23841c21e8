"""Products: every file written, ranked per (kind, valid time) so that "best available" is one query."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from nrt.store.db import insert, snapshot, utcnow
from nrt.store.schema import Product
from nrt.timeline import utc


@dataclass(frozen=True)
class ProductRow:
    id: int
    kind: str
    valid_time: datetime
    cycle_time: datetime
    lead: int
    members: int
    path: str
    size: int
    sha256: str
    checkpoint: str | None
    superseded_by: int | None
    created_at: datetime


def _best_first(kind: str, valid_time: datetime):
    """Products of one kind and valid time, best first: smallest lead, then newest cycle."""
    return (
        select(Product)
        .where(Product.kind == kind, Product.valid_time == valid_time)
        .order_by(Product.lead.asc(), Product.cycle_time.desc(), Product.id.desc())
    )


class Products:
    """The catalog's product queries (a part of `nrt.store.Catalog`)."""

    def _lock_valid_time(self, session: Session, kind: str, valid_time: datetime) -> None:
        """Serialise writers of one (kind, valid time) on PostgreSQL; SQLite's BEGIN IMMEDIATE already does."""
        if self.dialect == "postgresql":
            digest = hashlib.sha256(f"{kind}|{valid_time.isoformat()}".encode()).digest()
            session.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest[:8], "big", signed=True))))

    def _resupersede(self, session: Session, kind: str, valid_time: datetime) -> None:
        best = session.scalars(_best_first(kind, valid_time).limit(1)).first()
        if best is None:
            return
        session.execute(
            update(Product)
            .where(Product.kind == kind, Product.valid_time == valid_time, Product.id != best.id)
            .values(superseded_by=best.id)
        )
        session.execute(update(Product).where(Product.id == best.id).values(superseded_by=None))

    def register_product(
        self, kind: str, valid_time: datetime, cycle_time: datetime, lead: int, members: int,
        path: str | Path, size: int, sha256: str, checkpoint: str | None = None,
    ) -> int:
        """Record a written product and re-rank its valid time; returns the product id.

        Of all products of one kind and valid time the best has the smallest lead, then the newest
        cycle; every other one gets `superseded_by` = the best. Registering the same kind, valid time
        and cycle again (a re-run) replaces that row.
        """
        valid_time, cycle_time = utc(valid_time), utc(cycle_time)
        values = dict(lead=int(lead), members=int(members), path=str(path), size=int(size), sha256=sha256,
                      checkpoint=checkpoint, created_at=utcnow())
        stmt = insert(self.dialect, Product).values(kind=kind, valid_time=valid_time, cycle_time=cycle_time, **values)
        stmt = stmt.on_conflict_do_update(index_elements=["kind", "valid_time", "cycle_time"], set_=values)
        with self.writing() as session:
            self._lock_valid_time(session, kind, valid_time)
            product_id = session.execute(stmt.returning(Product.id)).scalar_one()
            self._resupersede(session, kind, valid_time)
            return product_id

    def best_product(self, valid_time: datetime, kind: str = "ensemble") -> ProductRow | None:
        """The best available product for `valid_time`: smallest lead, then newest cycle."""
        with self.reading() as session:
            product = session.scalars(_best_first(kind, utc(valid_time)).limit(1)).first()
            return snapshot(ProductRow, product) if product else None

    def product(self, product_id: int) -> ProductRow | None:
        with self.reading() as session:
            product = session.get(Product, product_id)
            return snapshot(ProductRow, product) if product else None

    def products(
        self, since: datetime | None = None, kind: str | None = None, until: datetime | None = None,
        current_only: bool = False,
    ) -> list[ProductRow]:
        """Products with valid time in [since, until] (either optional), by valid time then rank."""
        stmt = select(Product)
        if since is not None:
            stmt = stmt.where(Product.valid_time >= utc(since))
        if until is not None:
            stmt = stmt.where(Product.valid_time <= utc(until))
        if kind is not None:
            stmt = stmt.where(Product.kind == kind)
        if current_only:
            stmt = stmt.where(Product.superseded_by.is_(None))
        stmt = stmt.order_by(Product.valid_time, Product.kind, Product.lead, Product.cycle_time.desc(), Product.id)
        with self.reading() as session:
            return [snapshot(ProductRow, p) for p in session.scalars(stmt)]

    def delete_product(self, product_id: int) -> bool:
        """Forget a product (and its scores); the next best of its valid time becomes current."""
        with self.writing() as session:
            product = session.get(Product, product_id)
            if product is None:
                return False
            kind, valid_time = product.kind, product.valid_time
            self._lock_valid_time(session, kind, valid_time)
            session.delete(product)
            session.flush()
            self._resupersede(session, kind, valid_time)
            return True
