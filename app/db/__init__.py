"""The SQL ledger: the source of truth of the deletion service (DESIGN §3)."""
