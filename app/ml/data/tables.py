"""`--data csv:FILE` and `--data parquet:FILE`: one row per sample.

Columns: `label` (integers 0..K-1, or strings, which become the class names, sorted), optional `sample_id`
(integers or strings: the ids the API uses, mapped to rows in app/ml/data/ids.py; default: the row number),
`subject_id` and `split` (train | val | test | shadow, or empty), and the features: every other column,
numeric, in the file's order (kept with the model, and used by /predict to read named inputs). `--label-column`
names another label column; `--drop-columns` leaves columns out of the features.

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
from app.ml.data.dataset import Dataset
from app.ml.data.ids import placement

RESERVED = ("label", "sample_id", "subject_id", "split")
CHUNK_ROWS = 65_536


def _chunks(path: Path, kind: str, label: str = "label") -> Iterator[object]:
    import pandas as pd

    try:
        if kind == "csv":
            yield from pd.read_csv(path, chunksize=CHUNK_ROWS, dtype={label: str, "subject_id": str,
                                                                         "sample_id": str, "split": str},
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


def load(path: Path, kind: str, *, label_column: str = "label", drop: tuple[str, ...] = ()) -> Dataset:
    tmp = tempfile.NamedTemporaryFile(prefix="unlearnd-table-", suffix=".f32", delete=False)  # noqa: SIM115
    features: list[str] | None = None
    labels, ids, subjects, splits = [], [], [], []
    try:
        for chunk in _chunks(path, kind, label_column):
            if features is None:
                features = _features(path, list(chunk.columns), label_column, drop)  # type: ignore[attr-defined]
            x = _numeric(path, chunk, features, label_column)
            tmp.write(x.tobytes())
            labels.append(_text(chunk[label_column]))  # type: ignore[index]
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


def _features(path: Path, columns: list[str], label: str, drop: tuple[str, ...]) -> list[str]:
    if label not in columns:
        raise DataError(f"{path}: no {label!r} column (name the label column with --label-column); columns are "
                        f"{columns[:12]}")
    unknown = sorted(set(drop) - set(columns))
    if unknown:
        raise DataError(f"{path}: --drop-columns names {unknown[:5]}, which the table does not have")
    features = [c for c in columns if c not in (*RESERVED, label, *drop)]
    if not features:
        raise DataError(f"{path}: no feature columns besides {[c for c in columns if c in (*RESERVED, label)]}"
                        + (f" and the dropped {list(drop)}" if drop else ""))
    return features


def _numeric(path: Path, chunk: object, features: list[str], label: str) -> np.ndarray:
    import pandas as pd

    present = _text(chunk[label]) != ""  # type: ignore[index]
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
    """The chunk's sample ids as text (the row numbers when the table has no sample_id column)."""
    cols = chunk.columns  # type: ignore[attr-defined]
    if "sample_id" not in cols:
        return np.arange(offset, offset + len(chunk)).astype(str)  # type: ignore[arg-type]
    raw = _text(chunk["sample_id"])  # type: ignore[index]
    return np.asarray([_integral(v) for v in raw], dtype=object)


def _integral(v: str) -> str:
    """'12.0' (pandas reads an integer column with gaps as floats) → '12'; anything else as written."""
    try:
        f = float(v)
    except ValueError:
        return v
    return str(int(f)) if f.is_integer() and abs(f) < 2**53 and v.replace(".", "", 1).lstrip("-").isdigit() else v


def _assemble(path: Path, x: np.ndarray, labels: np.ndarray, ids: np.ndarray, subjects: np.ndarray | None,
              splits: np.ndarray | None, features: tuple[str, ...]) -> Dataset:
    present = labels != ""
    names, y_rows = _classes(path, labels[present])
    rows, keys = placement([str(i) for i in ids], str(path))
    n = int(rows.max()) + 1
    if keys is None and not np.array_equal(rows, np.arange(len(rows))):  # rows go where their ids say
        x = _scatter(x, rows, n)
    y = np.full(n, -1, dtype=np.int64)
    y[rows[present]] = y_rows

    def spread(col: np.ndarray | None) -> np.ndarray | None:
        if col is None:
            return None
        out = np.full(n, "", dtype=object)
        out[rows[present]] = col[present]
        return out.astype(str)

    return Dataset(name=path.stem, x=x, y=y, num_classes=len(names), n_pool=n, class_names=names,
                   subjects=spread(subjects), given_split=spread(splits), feature_names=features, keys=keys)


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


def erase(path: Path, kind: str, ids: list[str], *, label_column: str = "label") -> int:
    """Rewrite PATH with the rows of IDS (the table's own sample ids) emptied (sample_id and split kept, every
    other column emptied, dropped ones too); returns rows emptied."""
    import pandas as pd

    gone = [str(i) for i in ids]
    tmp = path.with_name(f".{path.name}.erasing")
    parts, offset, done = [], 0, 0
    with tmp.open("w", newline="") as out:
        for chunk in _chunks(path, kind, label_column):
            frame = chunk.copy()  # type: ignore[attr-defined]
            row_ids = _ids(path, frame, offset)
            hit = np.isin(row_ids.astype(str), gone) & (_text(frame[label_column]) != "")
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
