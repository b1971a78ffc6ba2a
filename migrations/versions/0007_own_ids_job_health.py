"""a team's own data, second pass: the data's own sample ids, and background jobs whose failures show

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 17:00:00

- samples.key: the sample's id as the data names it (integers or strings, app/ml/data/ids.py); rows published
  before this keep their row number as the key.
- deletion_requests.derived_error: why the rebuild of the models derived from the shadow split keeps failing.
- job_health: a background job's failures in a row, its last error and when it is retried.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("samples") as t:
        t.add_column(sa.Column("key", sa.String(length=200), nullable=True))
    op.execute("UPDATE samples SET key = CAST(id AS VARCHAR(200))")
    with op.batch_alter_table("samples") as t:
        t.create_unique_constraint("uq_samples_key", ["key"])
    with op.batch_alter_table("deletion_requests") as t:
        t.add_column(sa.Column("derived_error", sa.Text(), nullable=True))
    op.create_table(
        "job_health",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("total_failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("first_failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_try_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_job_health")),
    )


def downgrade() -> None:
    op.drop_table("job_health")
    with op.batch_alter_table("deletion_requests") as t:
        t.drop_column("derived_error")
    with op.batch_alter_table("samples") as t:
        t.drop_constraint("uq_samples_key", type_="unique")
        t.drop_column("key")
