"""Sample ids: the data's own (integers or strings) ↔ the rows of the dataset and the store. The one place
that maps them.

A row is where a sample sits in the arrays (and in splits.json, the gradient cache, the verifier). The id is
what the data calls it: the `sample_id` column of a table or of an image folder's samples.csv. When a data's
ids are integers near 0..N-1 they are the rows themselves (gaps are erased rows; `keys` is None). Any other
ids (strings: customer numbers, UUIDs, file stems; or large integers) keep the file's row order and a key per
row. Every id the API, the ledger, the CLI and the audit show is the data's own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from app.errors import DataError, ForgetSetError
from app.ids import PublicId, is_canonical_int, public, text

__all__ = ["PublicId", "keys_of", "placement", "public", "read_ids", "rows_of", "text"]

MAX_ID_SLACK = 2  # integer ids index rows directly unless they would name a table over 2× the data
MAX_KEY_LEN = 200  # the ledger's column


def placement(ids: Sequence[str], where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Where each of the data's ids goes: (row per id, keys per row or None when the ids are the rows)."""
    if len(set(ids)) != len(ids):
        raise DataError(f"{where}: sample_id values repeat")
    if any(not i for i in ids):
        raise DataError(f"{where}: a row has an empty sample_id")
    if any(len(i) > MAX_KEY_LEN for i in ids):
        raise DataError(f"{where}: a sample_id is longer than {MAX_KEY_LEN} characters")
    if all(is_canonical_int(i) for i in ids) and ids:
        ints = np.asarray([int(i) for i in ids], dtype=np.int64)
        if int(ints.max()) < MAX_ID_SLACK * len(ids) + 16:
            return ints, None
    return np.arange(len(ids), dtype=np.int64), np.asarray(ids, dtype=str)


def keys_of(keys: np.ndarray | None, rows: Iterable[int]) -> list[str]:
    return [str(int(r)) if keys is None else str(keys[int(r)]) for r in rows]


def rows_of(keys: np.ndarray | None, ids: Iterable[PublicId], *, n_rows: int) -> tuple[np.ndarray, list[str]]:
    """(rows of the ids that exist, the ids that name no row)."""
    index = {str(k): i for i, k in enumerate(keys)} if keys is not None else None
    rows, unknown = [], []
    for i in ids:
        t = text(i)
        r = index.get(t) if index is not None else (int(t) if is_canonical_int(t) else None)
        if r is None or not 0 <= r < n_rows:
            unknown.append(t)
        else:
            rows.append(r)
    return np.asarray(rows, dtype=np.int64), unknown


def read_ids(path: Path) -> list[str]:
    """One sample id per line, as the data names it (integers or strings); blank lines and #-comments are
    ignored. Read before torch is imported, so a bad file fails at once."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ForgetSetError(f"{path}: cannot read the id list ({type(e).__name__})") from None
    return [t for t in (line.split("#", 1)[0].strip() for line in lines) if t]
