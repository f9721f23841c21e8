"""Reliability: lease tokens that fence a lost job's writes, abandoned runs, expiring bad marks.

- jobs.lease_token: a new random token at every claim; writes made for a job check it (fencing).
- runs.lease_token: the token of the job lease a run was made under, so a run left `running` by a worker
  that died or lost its lease can be closed as `abandoned` (a new run state).
- granules.retry_after: a bad mark stops refusing the file after this time; granules.remote_tag: the size,
  date and ETag the server gave the bad copy, so a changed remote file is tried again at once.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

OLD_RUN_STATES = "state IN ('running', 'ok', 'degraded', 'failed')"
NEW_RUN_STATES = "state IN ('running', 'ok', 'degraded', 'failed', 'abandoned')"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("lease_token", sa.String(32), nullable=True))
    op.add_column("granules", sa.Column("retry_after", sa.DateTime(timezone=True), nullable=True))
    op.add_column("granules", sa.Column("remote_tag", sa.String(255), nullable=True))
    with op.batch_alter_table("runs") as batch:  # SQLite rebuilds the table to change a CHECK
        batch.add_column(sa.Column("lease_token", sa.String(32), nullable=True))
        batch.drop_constraint(op.f("ck_runs_state"), type_="check")
        batch.create_check_constraint(op.f("ck_runs_state"), sa.text(NEW_RUN_STATES))


def downgrade() -> None:
    op.execute("UPDATE runs SET state = 'failed' WHERE state = 'abandoned'")
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint(op.f("ck_runs_state"), type_="check")
        batch.create_check_constraint(op.f("ck_runs_state"), sa.text(OLD_RUN_STATES))
        batch.drop_column("lease_token")
    with op.batch_alter_table("granules") as batch:
        batch.drop_column("remote_tag")
        batch.drop_column("retry_after")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_token")
