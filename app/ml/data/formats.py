"""Dataset loaders, registered by name. Each reads one on-disk format, offline.

| name        | format read                                                          |
|-------------|----------------------------------------------------------------------|
| digits      | scikit-learn's bundled 8×8 digits (no file needed; the default)       |
| cifar10     | dir of official python batches, a generic .npz, or the JPEG .npz of   |
|             | shared/data/cifar10 (train_jpeg + offsets)                            |
| cifar100    | dir of the official python files `train` and `test` (fine labels)     |
| svhn        | dir with train_32x32.mat and test_32x32.mat (labels 1..10, 10 = 0)    |
| purchase100 | .npz with features/labels (or X/Y), labels 0..99 or one-hot          |
| npz         | generic .npz with x_train, y_train, x_test, y_test (+ class_names,    |
|             | subjects_train/subjects_test: the person each row is about)           |
| imagefolder | DIR/train/<class>/*.png|jpg (+ DIR/test/, DIR/samples.csv): imagefolder.py |
| csv         | a table: label, features, sample_id, subject_id, split (tables.py)    |
| parquet     | the same table as Parquet                                             |

On the command line a dataset is `--dataset NAME [--data PATH]` or `--data FORMAT:PATH` (`parse_data`).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from app.errors import DataError
from app.ml.common.device import resolve
from app.ml.common.registry import Registry
from app.ml.data.dataset import Dataset


@dataclass(frozen=True)
class DatasetSpec:
    load: Callable[..., Dataset]
    default_path: str | None  # relative to the data dir; None: needs no file
    erase: Callable[..., int] | None = None  # (path, the data's own ids, **options): erases them in the source files
    options: tuple[str, ...] = ()  # keyword options load takes (image_size)


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def _dataset(name: str, default_path: str | None) -> Callable[[Callable[[Path | None], Dataset]], DatasetSpec]:
    def deco(fn: Callable[[Path | None], Dataset]) -> DatasetSpec:
        return DATASETS.register(name)(DatasetSpec(fn, default_path))

    return deco


def parse_data(text: str) -> tuple[str | None, Path]:
    """`FORMAT:PATH` → (FORMAT, PATH) when FORMAT is a dataset name; a plain path → (None, PATH)."""
    head, sep, rest = text.partition(":")
    if sep and head in DATASETS.names():
        return head, Path(rest)
    return None, Path(text)


def load_dataset(name: str, *, path: Path | None = None, data_dir: Path | None = None,
                 device: torch.device | str | None = None, options: dict[str, Any] | None = None) -> Dataset:
    """Load dataset NAME from PATH, else from its default place under DATA_DIR; batches on DEVICE (default CPU).
    OPTIONS: the loader's own (image_size for imagefolder)."""
    spec = DATASETS.get(name)
    opts = {k: v for k, v in (options or {}).items() if v is not None}
    normalize = opts.pop("normalize", "data")
    if set(opts) - set(spec.options):
        raise DataError(f"dataset {name!r} takes no {', '.join(sorted(set(opts) - set(spec.options)))} option "
                        f"(--image-size is for imagefolder; --label-column and --drop-columns for csv and parquet)")
    if path is None and spec.default_path is not None:
        if data_dir is None:
            raise DataError(f"dataset {name!r} needs a path (--data) or a data dir (UNLEARND_DATA_DIR)")
        path = data_dir / spec.default_path
    if path is not None and not path.exists():
        raise DataError(f"dataset {name!r}: {path} does not exist")
    ds = normalized(spec.load(path, **opts) if opts else spec.load(path), normalize)
    if device is None:
        return ds
    return ds.on(resolve(device) if isinstance(device, str) else device)


def normalized(ds: Dataset, how: str) -> Dataset:
    """Images are scaled to [0, 1] and standardised per channel. HOW: `data` (statistics of the data's training
    pool, the default), `none` (no standardisation), or `M1,M2,M3/S1,S2,S3` (your own, e.g. the ones a
    pretrained backbone was trained with). Tables are fed raw whatever HOW says."""
    if how == "data":
        return ds
    if not ds.is_image:
        raise DataError("--normalize applies to images; tables are fed to the model as they are")
    channels = ds.in_shape[0]
    if how == "none":
        mean, std = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    else:
        try:
            mean, std = (np.asarray([float(v) for v in part.split(",")], np.float32) for part in how.split("/"))
        except ValueError:
            raise DataError(f"--normalize {how!r}: give data, none, or MEAN,…/STD,… (one per channel)") from None
        if len(mean) != channels or len(std) != channels or not (std > 0).all():
            raise DataError(f"--normalize {how!r}: {channels} means and {channels} positive stds are needed")
    ds.mean, ds.std = mean, std
    return ds


def _require(path: Path | None) -> Path:
    if path is None:
        raise DataError("this dataset is read from a file: pass it with --data FILE")
    return path


def _npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise DataError(f"{path}: missing arrays {missing}; has {sorted(z.files)}")
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz ({e})") from e


def _join(name: str, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray,
          num_classes: int | None = None) -> Dataset:
    x = np.concatenate([_as_layout(xtr), _as_layout(xte)])
    y = np.concatenate([np.asarray(ytr).reshape(-1), np.asarray(yte).reshape(-1)]).astype(np.int64)
    k = num_classes if num_classes is not None else int(y.max()) + 1
    if y.min() < 0 or y.max() >= k:
        raise DataError(f"{name}: labels outside 0..{k - 1}")
    return Dataset(name=name, x=x, y=y, num_classes=k, n_pool=len(xtr))


def _as_layout(x: np.ndarray) -> np.ndarray:
    """Images as (N, H, W, C); tabular as (N, F) float32."""
    if x.ndim == 3:  # (N, H, W) greyscale
        return x[..., None]
    if x.ndim == 4:
        if x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):  # NCHW → NHWC
            x = x.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x)
    if x.ndim == 2:
        return x.astype(np.float32)
    raise DataError(f"cannot use an input array of shape {x.shape}")


class _ArraysOnly(pickle.Unpickler):
    """The official CIFAR files are pickles: allow numpy arrays and builtins, nothing else."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _read_cifar_pickle(path: Path) -> dict[bytes, object]:
    try:
        with path.open("rb") as f:
            return _ArraysOnly(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise DataError(f"{path}: not an official CIFAR python file ({e})") from e


def _cifar_rows(d: dict[bytes, object], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(data), np.asarray(d[label_key], dtype=np.int64)


@_dataset("digits", None)
def _digits(path: Path | None) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1)
    return Dataset(name="digits", x=x, y=bunch.target, num_classes=10, n_pool=len(x))


def _decode_jpegs(buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.stack([
        np.asarray(Image.open(io.BytesIO(buf[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
        for i in range(len(offsets) - 1)
    ])


CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@_dataset("cifar10", "cifar10")
def _cifar10(path: Path | None) -> Dataset:
    ds = _cifar10_arrays(path)
    ds.class_names = CIFAR10_NAMES
    return ds


def _cifar10_arrays(path: Path | None) -> Dataset:
    p = _require(path)
    if p.is_dir():
        for candidate in ("cifar10_jpeg_full.npz", "cifar10.npz"):
            if (p / candidate).exists():
                return _cifar10_arrays(p / candidate)
        batches = p / "cifar-10-batches-py" if (p / "cifar-10-batches-py").is_dir() else p
        train = [_cifar_rows(_read_cifar_pickle(batches / f"data_batch_{i}"), b"labels") for i in range(1, 6)]
        xte, yte = _cifar_rows(_read_cifar_pickle(batches / "test_batch"), b"labels")
        xtr = np.concatenate([t[0] for t in train])
        ytr = np.concatenate([t[1] for t in train])
        return _join("cifar10", xtr, ytr, xte, yte, num_classes=10)
    with np.load(p, allow_pickle=False) as z:
        if "train_jpeg" in z.files:
            xtr = _decode_jpegs(z["train_jpeg"], z["train_offsets"])
            xte = _decode_jpegs(z["test_jpeg"], z["test_offsets"])
            return _join("cifar10", xtr, z["y_train"], xte, z["y_test"], num_classes=10)
    d = _npz(p, ("x_train", "y_train", "x_test", "y_test"))
    return _join("cifar10", d["x_train"], d["y_train"], d["x_test"], d["y_test"], num_classes=10)


@_dataset("cifar100", "cifar100")
def _cifar100(path: Path | None) -> Dataset:
    p = _require(path)
    if (p / "cifar-100-python").is_dir():
        p = p / "cifar-100-python"
    xtr, ytr = _cifar_rows(_read_cifar_pickle(p / "train"), b"fine_labels")
    xte, yte = _cifar_rows(_read_cifar_pickle(p / "test"), b"fine_labels")
    return _join("cifar100", xtr, ytr, xte, yte, num_classes=100)


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    try:
        m = loadmat(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .mat file ({e})") from e
    if "X" not in m or "y" not in m:
        raise DataError(f"{path}: expected arrays X and y")
    x = np.ascontiguousarray(m["X"].transpose(3, 0, 1, 2))  # (32, 32, 3, N) → (N, 32, 32, 3)
    y = m["y"].reshape(-1).astype(np.int64)
    return x, np.where(y == 10, 0, y)  # SVHN stores digit 0 as label 10


@_dataset("svhn", "svhn")
def _svhn(path: Path | None) -> Dataset:
    p = _require(path)
    xtr, ytr = _read_svhn(p / "train_32x32.mat")
    xte, yte = _read_svhn(p / "test_32x32.mat")
    return _join("svhn", xtr, ytr, xte, yte, num_classes=10)


@_dataset("purchase100", "purchase100/purchase100.npz")
def _purchase100(path: Path | None) -> Dataset:
    p = _require(path)
    d = _npz(p, ())
    for xk, yk in (("features", "labels"), ("X", "Y"), ("x", "y")):
        if xk in d and yk in d:
            x, y = d[xk].astype(np.float32), d[yk]
            break
    else:
        raise DataError(f"{p}: expected arrays features/labels (or X/Y); has {sorted(d)}")
    if y.ndim == 2:  # one-hot
        y = y.argmax(axis=1)
    # No official test split: make_splits carves one out of the pool.
    return Dataset(name="purchase100", x=x, y=y.astype(np.int64), num_classes=100, n_pool=len(x))


@_dataset("npz", None)
def _generic_npz(path: Path | None) -> Dataset:
    p = _require(path)
    d = _npz(p, ("x_train", "y_train", "x_test", "y_test"))
    k = len(d["class_names"]) if "class_names" in d else None
    ds = _join(p.stem, d["x_train"], d["y_train"], d["x_test"], d["y_test"], num_classes=k)
    if k is not None:  # the names travel with the data into the store and /predict's answers
        ds.class_names = tuple(str(n) for n in d["class_names"])
    if "subjects_train" in d or "subjects_test" in d:
        parts = [d.get(f"subjects_{s}", np.full(len(d[f"y_{s}"]), "")).astype(str) for s in ("train", "test")]
        if [len(p) for p in parts] != [len(d["y_train"]), len(d["y_test"])]:
            raise DataError(f"{p}: subjects_train/subjects_test must have one entry per row of y_train/y_test")
        ds.subjects = np.concatenate(parts)
    return ds


def _imagefolder(path: Path | None, image_size: int | None = None) -> Dataset:
    from app.ml.data import imagefolder

    return imagefolder.load(_require(path), image_size)


def _erase_images(path: Path, ids: list[str], image_size: int | None = None) -> int:
    from app.ml.data import imagefolder

    return imagefolder.erase(path, ids)


def _table(kind: str) -> DatasetSpec:
    def load(path: Path | None, label_column: str = "label", drop_columns: list[str] | None = None) -> Dataset:
        from app.ml.data import tables

        return tables.load(_require(path), kind, label_column=label_column, drop=tuple(drop_columns or ()))

    def erase(path: Path, ids: list[str], label_column: str = "label", drop_columns: list[str] | None = None) -> int:
        from app.ml.data import tables

        return tables.erase(path, kind, ids, label_column=label_column)

    return DatasetSpec(load, None, erase=erase, options=("label_column", "drop_columns"))


DATASETS.register("imagefolder")(DatasetSpec(_imagefolder, None, erase=_erase_images, options=("image_size",)))
DATASETS.register("csv")(_table("csv"))
DATASETS.register("parquet")(_table("parquet"))
