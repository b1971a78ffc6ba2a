"""`unlearnd db upgrade`: run the Alembic migrations in migrations/ (the prestart step)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from app.ml.provenance import PROJECT_ROOT

MIGRATIONS = PROJECT_ROOT / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def check(url: str) -> None:
    """Raises if the models and the migrated schema differ (`alembic check`)."""
    command.check(alembic_config(url))
