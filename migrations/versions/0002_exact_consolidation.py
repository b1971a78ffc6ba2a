"""requests: how each was forgotten (verdict, method) and when it became exact

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 01:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deletion_requests") as t:
        t.add_column(sa.Column("method", sa.String(length=64), nullable=True))
        t.add_column(sa.Column("verdict", sa.String(length=32), nullable=True))
        t.add_column(sa.Column("exact_at", sa.DateTime(timezone=True), nullable=True))
        t.create_index("ix_deletion_requests_exact_at", ["exact_at"])


def downgrade() -> None:
    with op.batch_alter_table("deletion_requests") as t:
        t.drop_index("ix_deletion_requests_exact_at")
        t.drop_column("exact_at")
        t.drop_column("verdict")
        t.drop_column("method")
