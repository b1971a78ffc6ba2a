"""Each loader on a small file of its exact on-disk format, written here."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.errors import DataError, UnknownNameError
from app.ml.data.dataset import SplitConfig, make_splits
from app.ml.data.formats import DATASETS, load_dataset

RNG = np.random.default_rng(0)


def _images(n: int) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def _cifar_batch(path: Path, x: np.ndarray, labels: np.ndarray, key: bytes) -> None:
    rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # the official row layout: R plane, G, B
    with path.open("wb") as f:
        pickle.dump({b"data": rows, key: labels.tolist(), b"batch_label": b"x"}, f)


def test_digits_is_bundled() -> None:
    ds = load_dataset("digits")
    assert len(ds) == 1797 and ds.in_shape == (1, 8, 8) and ds.num_classes == 10


def test_cifar10_python_batches(tmp_path: Path) -> None:
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    xs = [_images(4) for _ in range(6)]
    for i in range(5):
        _cifar_batch(d / f"data_batch_{i + 1}", xs[i], np.arange(4) + i, b"labels")
    _cifar_batch(d / "test_batch", xs[5], np.array([9, 8, 7, 6]), b"labels")
    ds = load_dataset("cifar10", path=tmp_path)
    assert len(ds) == 24 and ds.n_pool == 20 and ds.in_shape == (3, 32, 32)
    assert np.array_equal(ds.x[0], xs[0][0]) and np.array_equal(ds.x[20], xs[5][0])
    assert ds.y[4] == 1 and ds.y[20] == 9
    assert ds.features(np.array([0, 1])).shape == (2, 3, 32, 32)


def test_cifar_pickle_with_code_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    with (d / "data_batch_1").open("wb") as f:
        pickle.dump({b"data": Path("/")}, f)  # a class no data file should need
    with pytest.raises(DataError, match="refusing"):
        load_dataset("cifar10", path=tmp_path)


def test_cifar10_shared_jpeg_npz(tmp_path: Path) -> None:
    def pack(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        blobs = []
        for img in x:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=75)
            blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
        return np.concatenate(blobs), np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)

    xtr, xte = np.full((3, 32, 32, 3), 100, np.uint8), np.full((2, 32, 32, 3), 200, np.uint8)
    tj, to = pack(xtr)
    sj, so = pack(xte)
    np.savez(tmp_path / "cifar10_jpeg_full.npz", train_jpeg=tj, train_offsets=to, y_train=np.array([0, 1, 2]),
             test_jpeg=sj, test_offsets=so, y_test=np.array([3, 4]), class_names=np.array(["a"] * 10))
    ds = load_dataset("cifar10", path=tmp_path)  # found inside the folder, as in shared/data
    assert len(ds) == 5 and ds.n_pool == 3
    assert abs(int(ds.x[0].mean()) - 100) <= 2 and abs(int(ds.x[4].mean()) - 200) <= 2


def test_cifar100_python_files(tmp_path: Path) -> None:
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    _cifar_batch(d / "train", _images(5), np.array([0, 50, 99, 3, 4]), b"fine_labels")
    _cifar_batch(d / "test", _images(2), np.array([98, 1]), b"fine_labels")
    ds = load_dataset("cifar100", path=tmp_path)
    assert len(ds) == 7 and ds.num_classes == 100 and ds.y[2] == 99


def test_svhn_mat(tmp_path: Path) -> None:
    from scipy.io import savemat

    for name, n in (("train_32x32.mat", 6), ("test_32x32.mat", 3)):
        x = _images(n)
        y = np.array([10, 1, 2, 3, 4, 5][:n]).reshape(-1, 1)
        savemat(tmp_path / name, {"X": x.transpose(1, 2, 3, 0), "y": y})
    ds = load_dataset("svhn", path=tmp_path)
    assert len(ds) == 9 and ds.n_pool == 6 and ds.in_shape == (3, 32, 32)
    assert ds.y[0] == 0 and ds.y[1] == 1  # label 10 means digit 0


def test_purchase100_npz(tmp_path: Path) -> None:
    x = RNG.integers(0, 2, size=(50, 600)).astype(np.float32)
    y = np.eye(100, dtype=np.float32)[RNG.integers(0, 100, size=50)]
    np.savez(tmp_path / "p.npz", features=x, labels=y)
    ds = load_dataset("purchase100", path=tmp_path / "p.npz")
    assert ds.in_shape == (600,) and ds.num_classes == 100 and np.array_equal(ds.y, y.argmax(1))
    splits = make_splits(ds, SplitConfig(seed=0))
    assert len(splits.test) == 10  # carved out: no official test split


def test_generic_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "mine.npz", x_train=_images(8), y_train=np.arange(8) % 3,
             x_test=_images(2), y_test=np.array([0, 2]))
    ds = load_dataset("npz", path=tmp_path / "mine.npz")
    assert ds.num_classes == 3 and len(ds) == 10 and ds.n_pool == 8


def test_splits_are_disjoint_complete_and_deterministic() -> None:
    ds = load_dataset("digits")
    a, b, c = (make_splits(ds, SplitConfig(seed=s)) for s in (0, 0, 1))
    parts = [a.train, a.val, a.test, a.shadow]
    assert sum(len(p) for p in parts) == len(ds)
    assert len(np.unique(np.concatenate(parts))) == len(ds)
    assert all(np.array_equal(x, y) for x, y in zip(parts, [b.train, b.val, b.test, b.shadow], strict=True))
    assert not np.array_equal(a.train, c.train)


def test_official_test_split_is_kept(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x_train=_images(40), y_train=np.arange(40) % 2,
             x_test=_images(10), y_test=np.arange(10) % 2)
    splits = make_splits(load_dataset("npz", path=tmp_path / "d.npz"), SplitConfig(seed=3))
    assert splits.test.tolist() == list(range(40, 50))


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="digits") as e:
        load_dataset("mnist")
    assert set(e.value.valid) == set(DATASETS.names())
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cifar10", path=tmp_path / "nope")
    with pytest.raises(DataError, match="pass it with --data"):
        load_dataset("npz")
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(DataError, match="missing arrays"):
        load_dataset("npz", path=tmp_path / "bad.npz")


def test_an_npz_brings_its_class_names_into_the_store(tmp_path: Path) -> None:
    from app.service.store import create_store, open_store

    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=rng.integers(0, 255, (20, 4, 4, 3), dtype=np.uint8), y_train=rng.integers(0, 2, 20),
             x_test=rng.integers(0, 255, (6, 4, 4, 3), dtype=np.uint8), y_test=rng.integers(0, 2, 6),
             class_names=np.array(["red", "blue"]))
    ds = load_dataset("npz", path=path)
    assert ds.names == ("red", "blue") and ds.num_classes == 2
    create_store(tmp_path / "store", ds)
    assert open_store(tmp_path / "store").names == ("red", "blue")
    assert load_dataset("digits").names == tuple("0123456789")  # no names given: the label's digits
