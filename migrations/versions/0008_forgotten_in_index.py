"""samples.forgotten_in is indexed: which versions may still answer by name (ledger.answerable_versions,
ledger.retirement) joins on it, and without an index each versioned call scanned every sample

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 01:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("samples") as t:
        t.create_index(t.f("ix_samples_forgotten_in"), ["forgotten_in"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("samples") as t:
        t.drop_index(t.f("ix_samples_forgotten_in"))
