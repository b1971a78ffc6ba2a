"""The one Settings object: every knob, from UNLEARND_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.ml.provenance import PROJECT_ROOT


def _default_data_dir() -> Path | None:
    shared = PROJECT_ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNLEARND_", extra="ignore")

    home: Path = Field(default=PROJECT_ROOT / "var", description="all state of a running service")
    data_dir: Path | None = Field(default_factory=_default_data_dir,
                                  description="where datasets other than digits are looked for")
    chunk_size: int = Field(default=1024, ge=1, description="samples per gradient chunk")
    threads: int | None = Field(default=None, ge=1, description="torch intra-op threads (None: torch's choice)")
