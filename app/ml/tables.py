"""`--data csv:FILE` and `--data parquet:FILE`: one row per sample.

Columns: `label` (integers 0..K-1, or strings, which become the class names, sorted), optional `sample_id`
(integers: the ids the API uses; default: the row number), `subject_id` and `split` (train | val | test | shadow,
or empty), and the features: every other column, numeric, in the file's order (kept with the model, and used by
/predict to read named inputs).

The file is read in chunks into a float32 memory map in a temporary file that is unlinked at once (the mapping
outlives the name), so a table larger than memory is never held in it. Erasing a sample (`erase`) rewrites the
file with that row's values emptied but its sample_id kept, so every other row keeps its id; a row with an empty
label reads back as erased.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from app.errors import DataError
from app.ml.data import SPLIT_NAMES, Dataset

RESERVED = ("label", "sample_id", "subject_id", "split")
CHUNK_ROWS = 65_536


def _chunks(path: Path, kind: str) -> Iterator[object]:
    import pandas as pd

    try:
        if kind == "csv":
            yield from pd.read_csv(path, chunksize=CHUNK_ROWS, dtype={"label": str, "subject_id": str,
                                                                         "split": str},
                                   keep_default_na=False, na_values=[""])
        else:
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS):
                yield batch.to_pandas()
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable {kind} table ({type(e).__name__}: {str(e)[:160]})") from None
    except Exception as e:  # pandas' ParserError and pyarrow's ArrowInvalid share no base beyond Exception
        raise DataError(f"{path}: not a readable {kind} table ({type(e).__name__}: {str(e)[:160]})") from None


def _text(col: object) -> np.ndarray:
    import pandas as pd

    s = pd.Series(col)
    return s.where(s.notna(), "").astype(str).str.strip().to_numpy(dtype=object)


def load(path: Path, kind: str) -> Dataset:
    tmp = tempfile.NamedTemporaryFile(prefix="unlearnd-table-", suffix=".f32", delete=False)  # noqa: SIM115
    features: list[str] | None = None
    labels, ids, subjects, splits = [], [], [], []
    try:
        for chunk in _chunks(path, kind):
            if features is None:
                features = _features(path, list(chunk.columns))  # type: ignore[attr-defined]
            x = _numeric(path, chunk, features)
            tmp.write(x.tobytes())
            labels.append(_text(chunk["label"]))  # type: ignore[index]
            ids.append(_ids(path, chunk, sum(len(a) for a in labels[:-1])))
            cols = chunk.columns  # type: ignore[attr-defined]
            subjects.append(_text(chunk["subject_id"]) if "subject_id" in cols else None)  # type: ignore[index]
            splits.append(_text(chunk["split"]) if "split" in cols else None)  # type: ignore[index]
        tmp.close()
        if features is None or not labels or not sum(len(a) for a in labels):
            raise DataError(f"{path}: the table has no rows")
        n = sum(len(a) for a in labels)
        x = np.memmap(tmp.name, dtype=np.float32, mode="r", shape=(n, len(features)))
    finally:
        tmp.close()
        os.unlink(tmp.name)  # the mapping stays valid; the bytes go when the process ends
    return _assemble(path, x, np.concatenate(labels), np.concatenate(ids),
                     None if subjects[0] is None else np.concatenate(subjects),
                     None if splits[0] is None else np.concatenate(splits), tuple(features))


def _features(path: Path, columns: list[str]) -> list[str]:
    if "label" not in columns:
        raise DataError(f"{path}: no 'label' column; columns are {columns[:12]}")
    features = [c for c in columns if c not in RESERVED]
    if not features:
        raise DataError(f"{path}: no feature columns besides {[c for c in columns if c in RESERVED]}")
    return features


def _numeric(path: Path, chunk: object, features: list[str]) -> np.ndarray:
    import pandas as pd

    present = _text(chunk["label"]) != ""  # type: ignore[index]
    out = np.zeros((len(present), len(features)), dtype=np.float32)
    for j, col in enumerate(features):
        values = pd.to_numeric(chunk[col], errors="coerce").to_numpy(dtype=np.float64)  # type: ignore[index]
        bad = present & ~np.isfinite(values)
        if bad.any():
            raise DataError(f"{path}: column {col!r} is not numeric or is missing in {int(bad.sum())} row(s) "
                            f"with a label (e.g. {chunk[col].to_numpy()[bad][0]!r})")  # type: ignore[index]
        out[:, j] = np.where(present, values, 0.0)
    return out


def _ids(path: Path, chunk: object, offset: int) -> np.ndarray:
    cols = chunk.columns  # type: ignore[attr-defined]
    if "sample_id" not in cols:
        return np.arange(offset, offset + len(chunk), dtype=np.int64)  # type: ignore[arg-type]
    import pandas as pd

    raw = pd.to_numeric(chunk["sample_id"], errors="coerce").to_numpy(dtype=np.float64)  # type: ignore[index]
    if not np.isfinite(raw).all() or (raw < 0).any() or (raw != np.round(raw)).any():
        raise DataError(f"{path}: sample_id must be integers ≥ 0 in every row")
    return raw.astype(np.int64)


def _assemble(path: Path, x: np.ndarray, labels: np.ndarray, ids: np.ndarray, subjects: np.ndarray | None,
              splits: np.ndarray | None, features: tuple[str, ...]) -> Dataset:
    present = labels != ""
    names, y_rows = _classes(path, labels[present])
    if len(np.unique(ids)) != len(ids):
        raise DataError(f"{path}: sample_id values repeat")
    if splits is not None and not set(splits[present]) <= {*SPLIT_NAMES, ""}:
        bad = sorted(set(splits[present]) - {*SPLIT_NAMES, ""})
        raise DataError(f"{path}: split values {bad[:3]} are not among {', '.join(SPLIT_NAMES)} (or empty)")
    n = int(ids.max()) + 1
    if n > 2 * len(ids) + 16:
        raise DataError(f"{path}: sample_id up to {n - 1} for {len(ids)} rows; ids index the model's rows, so keep "
                        "them near 0..N-1 (gaps are fine)")
    if not np.array_equal(ids, np.arange(len(ids))):  # rows go where their ids say, gaps are erased rows
        x = _scatter(x, ids, n)
    y = np.full(n, -1, dtype=np.int64)
    y[ids[present]] = y_rows

    def spread(col: np.ndarray | None) -> np.ndarray | None:
        if col is None:
            return None
        out = np.full(n, "", dtype=object)
        out[ids[present]] = col[present]
        return out.astype(str)

    return Dataset(name=path.stem, x=x, y=y, num_classes=len(names), n_pool=n, class_names=names,
                   subjects=spread(subjects), given_split=spread(splits), feature_names=features)


def _scatter(x: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    tmp = tempfile.NamedTemporaryFile(prefix="unlearnd-table-", suffix=".f32", delete=False)  # noqa: SIM115
    tmp.close()
    try:
        out = np.memmap(tmp.name, dtype=np.float32, mode="w+", shape=(n, x.shape[1]))
        for start in range(0, len(ids), CHUNK_ROWS):
            out[ids[start:start + CHUNK_ROWS]] = x[start:start + CHUNK_ROWS]
        out.flush()
    finally:
        os.unlink(tmp.name)
    return out


def _classes(path: Path, labels: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    values = sorted(set(labels))
    if len(values) < 2:
        raise DataError(f"{path}: the label column has {len(values)} class ({values[:1]}); a classifier needs ≥ 2")
    if all(v.lstrip("-").isdigit() for v in values):
        ints = np.asarray(labels, dtype=np.int64)
        if ints.min() < 0:
            raise DataError(f"{path}: integer labels must be ≥ 0")
        k = int(ints.max()) + 1
        return tuple(str(i) for i in range(k)), ints
    index = {v: i for i, v in enumerate(values)}
    return tuple(values), np.asarray([index[v] for v in labels], dtype=np.int64)


def erase(path: Path, kind: str, ids: np.ndarray) -> int:
    """Rewrite PATH with the rows of IDS emptied (sample_id and split kept); returns rows emptied."""
    import pandas as pd

    gone = set(np.asarray(ids, dtype=np.int64).tolist())
    tmp = path.with_name(f".{path.name}.erasing")
    parts, offset, done = [], 0, 0
    with tmp.open("w", newline="") as out:
        for chunk in _chunks(path, kind):
            frame = chunk.copy()  # type: ignore[attr-defined]
            row_ids = _ids(path, frame, offset)
            hit = np.isin(row_ids, list(gone)) & (_text(frame["label"]) != "")
            if hit.any():
                for col in frame.columns:
                    if col not in ("sample_id", "split"):
                        frame[col] = frame[col].astype(object)
                        frame.loc[hit, col] = None
                done += int(hit.sum())
            if kind == "csv":  # streamed: a table larger than memory is rewritten chunk by chunk
                frame.to_csv(out, header=offset == 0, index=False)
            else:
                parts.append(frame)
            offset += len(frame)
    if done and kind == "parquet":
        pd.concat(parts, ignore_index=True).to_parquet(tmp, index=False)
    if not done:
        tmp.unlink()
        return 0
    with tmp.open("rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return done
