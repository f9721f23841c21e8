"""Alembic environment for the nrt catalog.

`nrt.store.Catalog.upgrade()` runs this with its own connection (no alembic.ini on the user's
machine). Developers create a revision from the source tree with
`NRT_DB_URL=sqlite:////tmp/dev.sqlite alembic -c nrt/store/migrations/alembic.ini revision --autogenerate -m "..."`
after `nrt catalog init` on that database.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from nrt.store.schema import Base


def run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = os.environ.get("NRT_DB_URL") or context.config.get_main_option("sqlalchemy.url")
    with create_engine(url).connect() as own_connection:
        run(own_connection)
