"""The `unlearnd` commands as a user runs them, and their bad-input contract."""
