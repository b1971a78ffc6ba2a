"""Ledger tables. Timestamps are UTC; ids of requests are UUID strings."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Integer, MetaData, String, Text, UniqueConstraint, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {"ix": "ix_%(column_0_label)s", "uq": "uq_%(table_name)s_%(column_0_name)s",
          "ck": "ck_%(table_name)s_%(constraint_name)s",
          "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s", "pk": "pk_%(table_name)s"}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # first 16 hex of the weights' sha256
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    weights_present: Mapped[bool] = mapped_column(default=True)  # False once purged
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Head(Base):
    """One row: the version being served. Updated by compare-and-set, so commits serialise."""

    __tablename__ = "model_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Sample(Base):
    __tablename__ = "samples"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)  # the store's row
    key: Mapped[str | None] = mapped_column(String(200), unique=True)  # the data's own id (app/ml/data/ids.py)
    subject_id: Mapped[str | None] = mapped_column(String(128), index=True)
    state: Mapped[str] = mapped_column(String(16), default="active", index=True)  # active | forgotten
    # train | val | test | shadow: every split holds personal data; only train samples are in the served model
    split: Mapped[str] = mapped_column(String(8), default="train", server_default="train", index=True)
    forgotten_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    forgotten_in: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"), index=True)


class DeletionRequest(Base):
    __tablename__ = "deletion_requests"
    # an Idempotency-Key is the client's: another API key using the same string is another request
    __table_args__ = (UniqueConstraint("api_key_id", "idempotency_key"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending|processing|completed|rejected|failed
    subject_id: Mapped[str | None] = mapped_column(String(128))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    body_sha256: Mapped[str] = mapped_column(String(64))
    api_key_id: Mapped[str | None] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    batch_id: Mapped[str | None] = mapped_column(String(36), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    model_version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))
    audit_seq: Mapped[int | None] = mapped_column(ForeignKey("audit_entries.seq"))
    reason: Mapped[str | None] = mapped_column(Text)
    already_forgotten: Mapped[list[int]] = mapped_column(JSON, default=list)
    # how the batch forgot it, and when a model retrained without it from scratch was first served
    method: Mapped[str | None] = mapped_column(String(64))
    verdict: Mapped[str | None] = mapped_column(String(32))  # forgotten | partial | not measurable | unverified
    # exact_at: no model the service keeps was trained on the request's samples. Two parts: the served model
    # (model_exact_at: a retrain without them was served) and the models derived from the shadow split
    # (the verifier's references: derived_pending until they are retrained without them)
    exact_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    model_exact_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    derived_pending: Mapped[bool] = mapped_column(default=False, server_default=false())
    claimed_by: Mapped[str | None] = mapped_column(String(64), index=True)  # the worker processing it
    derived_error: Mapped[str | None] = mapped_column(Text)  # why the derived models' rebuild keeps failing


class JobHealth(Base):
    """A background job that can fail outside any request (the derived models' rebuild, consolidation): its
    failures in a row and the last error, so /readyz, /metrics, /ui and the requests show them."""

    __tablename__ = "job_health"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # in a row; 0 once it succeeds
    total_failures: Mapped[int] = mapped_column(Integer, default=0)
    first_failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # of the current run of them
    last_error: Mapped[str | None] = mapped_column(Text)
    next_try_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RequestSample(Base):
    __tablename__ = "request_samples"
    request_id: Mapped[str] = mapped_column(ForeignKey("deletion_requests.id", ondelete="CASCADE"),
                                            primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), primary_key=True, index=True)


class AuditEntry(Base):
    __tablename__ = "audit_entries"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[str] = mapped_column(String(40))  # ISO text: hashed exactly as stored
    batch_id: Mapped[str] = mapped_column(String(36))
    payload: Mapped[str] = mapped_column(Text)  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # random, shown in `keys list`; not the secret
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(100))  # space-separated
    name: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Worker(Base):
    """A worker process, by its heartbeat: a request claimed by a worker that stopped beating is released
    at once instead of after the lease."""

    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # why its Prometheus endpoint is not served (a port taken): deletions go on, and /readyz, /metrics and /ui say so
    metrics_error: Mapped[str | None] = mapped_column(Text)


class UiSession(Base):
    """An operator page login: the cookie holds a random id, stored here only as its digest."""

    __tablename__ = "ui_sessions"
    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
