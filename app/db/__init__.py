"""The SQL ledger: the source of truth of the deletion service (docs/method.md, "The service's parts")."""
