"""samples: which split each belongs to; val, test and shadow samples can be deleted too

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 04:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("samples") as t:
        t.add_column(sa.Column("split", sa.String(length=8), server_default="train", nullable=False))
        t.create_index("ix_samples_split", ["split"])


def downgrade() -> None:
    with op.batch_alter_table("samples") as t:
        t.drop_index("ix_samples_split")
        t.drop_column("split")
