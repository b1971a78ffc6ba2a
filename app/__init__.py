"""unlearnd: predictions from a classifier, and deletion of its training samples by machine unlearning."""

__version__ = "0.1.0"  # as pyproject.toml says
