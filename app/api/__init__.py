"""The HTTP API (FastAPI): routes, dependencies, problem+json errors, the served model."""
