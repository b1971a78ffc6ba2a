"""The ledger connection a process holds: a write engine, a read engine, and their sessions."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.db.session import make_engine, session_factory


@dataclass
class LedgerConn:
    engine: Engine
    read_engine: Engine
    write: sessionmaker[Session]
    read: sessionmaker[Session]

    @classmethod
    def open(cls, settings: Settings) -> LedgerConn:
        settings.home.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.db_url)
        read_engine = make_engine(settings.db_url, read_only=True)
        return cls(engine, read_engine, session_factory(engine), session_factory(read_engine))

    def close(self) -> None:
        self.engine.dispose()
        self.read_engine.dispose()
