"""Per-deployment secrets kept in the home: made once, mode 0600, read by every process of the deployment."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from app.core.config import Settings

SUBJECT_KEY_FILE = "subject.key"


def _read_or_make(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # O_EXCL: of two processes starting at once, one writes and both read the same key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path.read_bytes().strip()


def subject_key(settings: Settings) -> bytes:
    """The key of the subject digests: UNLEARND_SUBJECT_KEY, else HOME/subject.key (back it up with the ledger:
    without it no typed subject can be matched to a completed request)."""
    if settings.subject_key:
        return settings.subject_key.encode()
    return _read_or_make(settings.home / SUBJECT_KEY_FILE)
