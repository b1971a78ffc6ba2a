"""A sample id as clients see it: the data's own, an integer or a string. Shared by the ML core (which maps ids to
rows, app/ml/data/ids.py) and the ledger (which keeps them), so neither imports the other."""

from __future__ import annotations

import re

PublicId = int | str
_CANONICAL_INT = re.compile(r"^(0|[1-9][0-9]{0,18})$")


def is_canonical_int(key: str) -> bool:
    return bool(_CANONICAL_INT.match(key))


def public(key: str) -> PublicId:
    """An id as clients see it: an integer when the data's id is one, else the string."""
    return int(key) if is_canonical_int(key) else key


def text(sample_id: PublicId) -> str:
    """An id as stored (the ledger's key, samples.csv, keys.npy)."""
    return str(sample_id).strip()
