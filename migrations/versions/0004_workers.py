"""workers and their heartbeats; which worker holds each claimed request

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 04:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    op.create_index(op.f("ix_workers_heartbeat_at"), "workers", ["heartbeat_at"])
    with op.batch_alter_table("deletion_requests") as t:
        t.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))
        t.create_index("ix_deletion_requests_claimed_by", ["claimed_by"])


def downgrade() -> None:
    with op.batch_alter_table("deletion_requests") as t:
        t.drop_index("ix_deletion_requests_claimed_by")
        t.drop_column("claimed_by")
    op.drop_index(op.f("ix_workers_heartbeat_at"), table_name="workers")
    op.drop_table("workers")
