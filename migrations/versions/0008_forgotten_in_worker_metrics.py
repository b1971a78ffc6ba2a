"""samples.forgotten_in is indexed; a worker records why it serves no metrics

- samples.forgotten_in: which versions may still answer by name (ledger.answerable_versions, ledger.retirement)
  joins on it, and without an index each versioned call scanned every sample.
- workers.metrics_error: why the worker's Prometheus endpoint is not served (its port taken), which only its log
  said before.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 01:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("samples") as t:
        t.create_index(t.f("ix_samples_forgotten_in"), ["forgotten_in"], unique=False)
    with op.batch_alter_table("workers") as t:
        t.add_column(sa.Column("metrics_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as t:
        t.drop_column("metrics_error")
    with op.batch_alter_table("samples") as t:
        t.drop_index(t.f("ix_samples_forgotten_in"))
