"""The service behind the API: ledger, queue, worker, consolidation, supervision, faults and hostile input,
against live processes on SQLite and PostgreSQL."""
