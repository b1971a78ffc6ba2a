"""Service-side building blocks shared by the API and the worker (no HTTP, no queue here)."""
