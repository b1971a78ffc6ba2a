"""`unlearnd db upgrade`: run the Alembic migrations in migrations/ (the prestart step)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from app.db.session import make_engine
from app.shared import PROJECT_ROOT

MIGRATIONS = PROJECT_ROOT / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate to REVISION; returns the revision before and after (None: an empty database)."""
    before = current(url)
    command.upgrade(alembic_config(url), revision)
    return before, current(url)


def current(url: str) -> str | None:
    engine = make_engine(url, read_only=True)
    try:
        with engine.connect() as c:
            return MigrationContext.configure(c).get_current_revision()
    finally:
        engine.dispose()


def check(url: str) -> None:
    """Raises if the models and the migrated schema differ (`alembic check`)."""
    command.check(alembic_config(url))
