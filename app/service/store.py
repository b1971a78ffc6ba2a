"""The data store: this service's own copy of the dataset, from which forgotten rows are purged.

Features live in an .npy file opened as a memory map, so the API and the worker share one
copy through the page cache and a purge (rows overwritten with zeros, then flushed) is seen
by every process at once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from app.errors import DataError
from app.ml.common.fsutil import atomic_replace, atomic_write_text
from app.ml.data.dataset import Dataset
from app.ml.data.ids import keys_of
from app.ml.models.meta import ModelMeta

KEYS = "keys.npy"
COPY_ROWS = 4096  # rows copied at a time: a dataset larger than memory (image files, a table) never is in it


def create_store(folder: Path, ds: Dataset) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_replace(folder / "x.npy") as tmp:
        x = np.lib.format.open_memmap(tmp, mode="w+", dtype=ds.x.dtype, shape=tuple(ds.x.shape))
        for start in range(0, len(ds), COPY_ROWS):
            x[start:start + COPY_ROWS] = ds.x[start:start + COPY_ROWS]
        x.flush()
        del x
    with atomic_replace(folder / "y.npy") as tmp, tmp.open("wb") as f:  # a path would get ".npy" appended
        np.save(f, ds.y)
    if ds.keys is not None:  # the data's own ids (app/ml/data/ids.py): fixed-width text, no pickle
        with atomic_replace(folder / KEYS) as tmp, tmp.open("wb") as f:
            np.save(f, np.asarray(ds.keys, dtype=str))
    meta = {"name": ds.name, "num_classes": ds.num_classes, "n_pool": ds.n_pool, "class_names": list(ds.names),
            "mean": None if ds.mean is None else ds.mean.tolist(), "std": None if ds.std is None else ds.std.tolist(),
            "feature_names": list(ds.feature_names) if ds.feature_names else None}
    atomic_write_text(folder / "store.json", json.dumps(meta))


def open_store(folder: Path, *, writable: bool = False) -> Dataset:
    try:
        meta = json.loads((folder / "store.json").read_text())
        x = np.load(folder / "x.npy", mmap_mode="r+" if writable else "r")
        y = np.load(folder / "y.npy", mmap_mode="r+") if writable else np.load(folder / "y.npy")
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"no data store in {folder}: {e}") from e
    names = meta.get("class_names")
    features = meta.get("feature_names")
    ds = Dataset(name=meta["name"], x=x, y=y, num_classes=meta["num_classes"], n_pool=meta["n_pool"],
                 mean=_floats(meta["mean"]), std=_floats(meta["std"]), class_names=tuple(names) if names else None,
                 feature_names=tuple(features) if features else None)
    ds.keys = _keys(folder)
    if writable:
        ds.y = y  # the memory map itself (Dataset keeps a copy otherwise), so that purge writes the file
    return ds


_ON_DEVICE: dict[tuple[str, str], tuple[tuple[int, int, int, int], Dataset]] = {}


def store_on(folder: Path, device: torch.device) -> Dataset:
    """The store with its batches on DEVICE. On a GPU the resident copy (a whole-set conversion and upload,
    ~0.5 s for CIFAR-10) is kept for the process's next batches until a purge rewrites the files."""
    if device.type == "cpu":
        return open_store(folder)
    stats = [(folder / f).stat() for f in ("x.npy", "y.npy")]
    stamp = (stats[0].st_mtime_ns, stats[0].st_size, stats[1].st_mtime_ns, stats[1].st_size)
    key = (str(folder), str(device))
    hit = _ON_DEVICE.get(key)
    if hit is None or hit[0] != stamp:
        _ON_DEVICE[key] = (stamp, open_store(folder).on(device))
    return _ON_DEVICE[key][1]


def _floats(v: list[float] | None) -> np.ndarray | None:
    return None if v is None else np.asarray(v, dtype=np.float32)


FORGOTTEN_LABEL = -1


def purge(ds: Dataset, ids: Sequence[int]) -> int:
    """Overwrite the features of IDS with zeros and their labels with FORGOTTEN_LABEL on disk; returns how
    many rows were not purged yet. Purged rows are only read, so the sweep can pass every forgotten id."""
    if not len(ids):
        return 0
    if not all(isinstance(a, np.memmap) and a.flags.writeable for a in (ds.x, ds.y)):
        raise DataError("purge needs a writable store")
    ids = np.asarray(ids)
    live = ids[ds.x[ids].reshape(len(ids), -1).any(axis=1) | (ds.y[ids] != FORGOTTEN_LABEL)]
    if len(live):
        ds.x[live] = 0
        ds.y[live] = FORGOTTEN_LABEL
        ds.x.flush()
        ds.y.flush()
    return len(live)


def erased_rows(ds: Dataset) -> np.ndarray:
    """Ids of rows purged from the store: never training, validation or verification data again, whatever a
    ledger says (a lost ledger must not bring them back)."""
    return np.flatnonzero(np.asarray(ds.y) == FORGOTTEN_LABEL).astype(np.int64)


def raw_to_features(ds: Dataset, rows: np.ndarray) -> torch.Tensor:
    """Client inputs (flattened, in the store's scale: uint8 0-255 or float) → model input."""
    shape = ds.x.shape[1:]
    if rows.ndim != 2 or rows.shape[1] != int(np.prod(shape)):
        raise ValueError(f"each instance needs {int(np.prod(shape))} numbers (layout {list(shape)})")
    x = rows.reshape(-1, *shape)
    with np.errstate(over="ignore"):  # 1e39 becomes inf in float32: refused below, not answered with NaN
        x = np.clip(np.rint(x), 0, 255).astype(np.uint8) if ds.x.dtype == np.uint8 else x.astype(np.float32)
    if not (np.isfinite(rows).all() and np.isfinite(x).all()):
        raise ValueError("instances must be finite numbers within float32's range")
    tmp = Dataset(name=ds.name, x=x, y=np.zeros(len(x), dtype=np.int64), num_classes=ds.num_classes,
                  n_pool=len(x), mean=ds.mean, std=ds.std)
    return tmp.features(np.arange(len(x)))


SOURCE_ERASED = "source_erased.npy"


def erase_source(folder: Path, meta: ModelMeta, ids: Sequence[int]) -> int:
    """Erase IDS in the data the model was made from too, when its format can (image files, table rows); each id
    once (FOLDER/source_erased.npy remembers which). Returns the samples erased now."""
    from app.ml.data.formats import DATASETS

    name, path = meta.dataset, meta.data_path
    if name not in DATASETS or DATASETS.get(name).erase is None or not path:
        return 0
    done_file = folder / SOURCE_ERASED
    done = np.load(done_file) if done_file.is_file() else np.empty(0, np.int64)
    todo = np.setdiff1d(np.asarray(ids, dtype=np.int64), done)
    if not len(todo):
        return 0
    erase = DATASETS.get(name).erase
    assert erase is not None
    spec = DATASETS.get(name)
    opts = {k: v for k, v in meta.data_options.items() if k in spec.options and v is not None}
    n = erase(Path(path), sample_keys(folder, todo), **opts)
    with atomic_replace(done_file) as tmp, tmp.open("wb") as f:
        np.save(f, np.union1d(done, todo))
    return n


def sample_keys(folder: Path, rows: Sequence[int] | np.ndarray) -> list[str]:
    """The data's own ids of these store rows (app/ml/data/ids.py)."""
    return keys_of(_keys(folder), np.asarray(rows, dtype=np.int64))


def _keys(folder: Path) -> np.ndarray | None:
    """The store's keys.npy: None when the data's ids are the rows themselves."""
    return np.load(folder / KEYS, allow_pickle=False) if (folder / KEYS).is_file() else None


SOURCE_FOLDER = "published_from.txt"


def remember_source_folder(folder: Path, model_dir: Path) -> None:
    """The model folder the service published from (the operator's): its samples.csv links ids to people, so
    the purge drops forgotten rows there too, whichever version is served by then."""
    atomic_write_text(folder / SOURCE_FOLDER, str(model_dir.resolve()))


def source_folder(folder: Path) -> Path | None:
    path = folder / SOURCE_FOLDER
    return Path(path.read_text().strip()) if path.is_file() else None
