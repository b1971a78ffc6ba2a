"""api keys: random ids instead of the key's first 12 characters, found by a unique digest

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 04:00:00

Old ids were the first 12 characters of each secret, stored in plaintext in api_keys.id and in
deletion_requests.api_key_id. Both are rewritten to random ids; the keys themselves keep working.
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    for (old,) in conn.execute(sa.text("SELECT id FROM api_keys")).fetchall():
        new = "key_" + secrets.token_hex(8)
        conn.execute(sa.text("UPDATE api_keys SET id = :new WHERE id = :old"), {"new": new, "old": old})
        conn.execute(sa.text("UPDATE deletion_requests SET api_key_id = :new WHERE api_key_id = :old"),
                     {"new": new, "old": old})
    with op.batch_alter_table("api_keys") as t:
        t.create_unique_constraint(op.f("uq_api_keys_key_sha256"), ["key_sha256"])


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as t:
        t.drop_constraint(op.f("uq_api_keys_key_sha256"), type_="unique")
