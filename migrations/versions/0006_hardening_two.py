"""hardening, round two: exactness in two parts, idempotency keys per API key, server-side UI sessions

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 06:00:00

- deletion_requests.model_exact_at: when a served model retrained without the request's samples was first
  served (what exact_at meant so far); exact_at now also waits for derived_pending: the models derived from
  the shadow split (the verifier's references) must be retrained without the request's samples too.
- idempotency keys are unique per API key, not globally: another client's key is not a replay of yours.
- ui_sessions: the operator page's cookie holds a random session id, revocable, instead of the API key.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deletion_requests") as t:
        t.add_column(sa.Column("model_exact_at", sa.DateTime(timezone=True), nullable=True))
        t.add_column(sa.Column("derived_pending", sa.Boolean(), server_default=sa.false(), nullable=False))
        t.drop_constraint("uq_deletion_requests_idempotency_key", type_="unique")
        t.create_unique_constraint("uq_deletion_requests_api_key_id", ["api_key_id", "idempotency_key"])
        t.create_index("ix_deletion_requests_model_exact_at", ["model_exact_at"])
    op.execute("UPDATE deletion_requests SET model_exact_at = exact_at")
    op.create_table(
        "ui_sessions",
        sa.Column("id_sha256", sa.String(length=64), nullable=False),
        sa.Column("api_key_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id_sha256", name=op.f("pk_ui_sessions")),
    )


def downgrade() -> None:
    op.drop_table("ui_sessions")
    with op.batch_alter_table("deletion_requests") as t:
        t.drop_index("ix_deletion_requests_model_exact_at")
        t.drop_constraint("uq_deletion_requests_api_key_id", type_="unique")
        t.create_unique_constraint("uq_deletion_requests_idempotency_key", ["idempotency_key"])
        t.drop_column("derived_pending")
        t.drop_column("model_exact_at")
