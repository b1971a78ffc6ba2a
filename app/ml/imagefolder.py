"""`--data imagefolder:DIR`: PNG or JPEG files in DIR/train/<class>/ and DIR/test/<class>/.

The images are never all in memory: `ImageFiles` decodes the rows a batch asks for (the service copies them once
into its memory-mapped store). Without DIR/test/ the test split is carved out by a seeded split (recorded in
splits.json). Class names are the folder names, sorted.

Ids: DIR/samples.csv (`path,sample_id[,subject_id]`, paths relative to DIR) gives stable ids and subjects;
without it, ids follow the sorted paths, and the mapping is written to the model directory (`samples.csv`).
Erasing a sample (`erase`) overwrites its file with zeros and truncates it to 0 bytes, and blanks its subject in
DIR/samples.csv: the empty file keeps every other id where it was, and reads back as an erased row.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from app.errors import DataError
from app.ml.data import Dataset
from app.ml.fsutil import atomic_write_text

SUFFIXES = (".png", ".jpg", ".jpeg")
SAMPLES = "samples.csv"
MAX_ID_SLACK = 2  # ids may leave gaps (erased samples), but not name a table 2× larger than the data


class ImageFiles:
    """An (N, H, W, C) uint8 array-like over image files; None or an empty file is an erased row (zeros)."""

    ndim = 4
    dtype = np.dtype(np.uint8)

    def __init__(self, files: list[Path | None], size: tuple[int, int], channels: int) -> None:
        self.files, self.size, self.channels = files, size, channels
        self.shape = (len(files), size[1], size[0], channels)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: object) -> np.ndarray:
        rows = np.arange(len(self))[index]  # type: ignore[index]
        out = np.zeros((len(rows), *self.shape[1:]), dtype=np.uint8)
        for k, i in enumerate(rows):
            f = self.files[int(i)]
            if f is not None:
                out[k] = self.read(f)
        return out

    def read(self, path: Path) -> np.ndarray:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return np.zeros(self.shape[1:], dtype=np.uint8)  # erased since the listing
        if not data:
            return np.zeros(self.shape[1:], dtype=np.uint8)
        try:
            with Image.open(io.BytesIO(data)) as img:
                img = img.convert("L" if self.channels == 1 else "RGB")
                if img.size != self.size:
                    img = img.resize(self.size, Image.Resampling.BILINEAR)
                return np.asarray(img, dtype=np.uint8).reshape(self.shape[1:])
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def _listing(root: Path) -> tuple[list[tuple[str, str, str]], tuple[str, ...]]:
    """(relative path, class, split) of every image, sorted by path; and the class names."""
    if not (root / "train").is_dir():
        raise DataError(f"imagefolder {root}: no train/ folder (expected {root}/train/<class>/<image>)")
    splits = [s for s in ("train", "test") if (root / s).is_dir()]
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    if len(classes) < 2:
        raise DataError(f"imagefolder {root}/train: {len(classes)} class folder(s); a classifier needs at least 2")
    rows = []
    for split in splits:
        for cls in sorted(d.name for d in (root / split).iterdir() if d.is_dir()):
            if cls not in classes:
                raise DataError(f"imagefolder {root}/{split}/{cls}: class {cls!r} is not among train's {classes}")
            files = sorted(f for f in (root / split / cls).iterdir() if f.suffix.lower() in SUFFIXES)
            if not files and split == "train":
                raise DataError(f"imagefolder {root}/{split}/{cls}: an empty class folder (no .png/.jpg files)")
            rows += [(str(f.relative_to(root)), cls, split) for f in files]
    return sorted(rows), tuple(classes)


def _samples_csv(root: Path) -> dict[str, tuple[int, str]] | None:
    """DIR/samples.csv as path → (sample_id, subject_id)."""
    path = root / SAMPLES
    if not path.is_file():
        return None
    out: dict[str, tuple[int, str]] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "sample_id"} <= set(reader.fieldnames):
            raise DataError(f"{path}: needs columns path,sample_id[,subject_id]; has {reader.fieldnames}")
        for n, row in enumerate(reader, 2):
            try:
                sid = int(row["sample_id"])
            except (TypeError, ValueError):
                raise DataError(f"{path}:{n}: sample_id {row['sample_id']!r} is not an integer") from None
            if sid < 0 or row["path"] in out:
                raise DataError(f"{path}:{n}: sample_id must be ≥ 0 and each path listed once")
            out[row["path"]] = (sid, (row.get("subject_id") or "").strip())
    return out


def _probe(root: Path, rel: str) -> tuple[tuple[int, int], int]:
    try:
        with Image.open(root / rel) as img:
            img.verify()
        with Image.open(root / rel) as img:
            return img.size, 1 if img.mode in ("L", "1", "I;16") else 3
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{root / rel}: not a readable PNG or JPEG ({type(e).__name__})") from None


def load(root: Path, image_size: int | None = None) -> Dataset:
    rows, classes = _listing(root)
    given = _samples_csv(root)
    live = [r for r in rows if (root / r[0]).stat().st_size > 0]
    if not live:
        raise DataError(f"imagefolder {root}: no images")
    sizes, channels = zip(*(_probe(root, r[0]) for r in live), strict=True)
    if image_size is None and len(set(sizes)) > 1:
        raise DataError(f"imagefolder {root}: images of different sizes ({', '.join(map(str, sorted(set(sizes))[:3]))}"
                        "); pass --image-size N to resize them all to N×N")
    size = (image_size, image_size) if image_size else sizes[0]
    if given is not None:
        missing = [r[0] for r in rows if r[0] not in given]
        if missing:
            raise DataError(f"{root / SAMPLES} lists no sample_id for {len(missing)} image(s), e.g. {missing[0]}")
        ids = [given[r[0]][0] for r in rows]
        if len(set(ids)) != len(ids):
            raise DataError(f"{root / SAMPLES}: sample_id values repeat")
        if max(ids) >= MAX_ID_SLACK * len(ids) + 16:
            raise DataError(f"{root / SAMPLES}: sample_id up to {max(ids)} for {len(ids)} images; ids index the "
                            "model's rows, so keep them near 0..N-1 (gaps are fine)")
    else:
        ids = list(range(len(rows)))
    n = max(ids) + 1
    files: list[Path | None] = [None] * n
    y = np.full(n, -1, dtype=np.int64)
    split = np.full(n, "", dtype=object)
    subjects = np.full(n, "", dtype=object)
    sources = [""] * n
    has_test = any(r[2] == "test" for r in rows)
    for i, (rel, cls, sp) in zip(ids, rows, strict=True):
        sources[i] = rel
        if (root / rel).stat().st_size == 0:
            continue  # erased: no label, no pixels
        files[i], y[i] = root / rel, classes.index(cls)
        split[i] = sp if has_test else ""
        subjects[i] = given[rel][1] if given else ""
    return Dataset(name=root.name, x=ImageFiles(files, size, max(channels)), y=y,  # type: ignore[arg-type]
                   num_classes=len(classes), n_pool=n, class_names=classes, given_split=split.astype(str),
                   subjects=subjects.astype(str) if given else None, sources=tuple(sources))


def erase(root: Path, ids: np.ndarray) -> int:
    """Overwrite and empty the files of IDS, blank their subjects in samples.csv; returns files emptied."""
    ds = load_listing_only(root)
    done = 0
    for i in np.asarray(ids, dtype=np.int64):
        if 0 <= i < len(ds) and ds[i]:
            path = root / ds[i]
            size = path.stat().st_size if path.exists() else 0
            if size:
                with path.open("r+b") as f:
                    f.write(b"\0" * size)
                    f.flush()
                    os.fsync(f.fileno())
                    f.truncate(0)
                done += 1
    _blank_subjects(root, set(np.asarray(ids, dtype=np.int64).tolist()))
    return done


def load_listing_only(root: Path) -> list[str]:
    """Relative path of each id, without opening an image."""
    rows, _ = _listing(root)
    given = _samples_csv(root)
    ids = [given[r[0]][0] for r in rows] if given else list(range(len(rows)))
    out = [""] * (max(ids, default=-1) + 1)
    for i, r in zip(ids, rows, strict=True):
        out[i] = r[0]
    return out


def _blank_subjects(root: Path, ids: set[int]) -> None:
    path = root / SAMPLES
    if not path.is_file():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    if "subject_id" not in fields:
        return
    hit = [r for r in rows if int(r["sample_id"]) in ids and r["subject_id"]]
    if not hit:
        return
    for r in hit:
        r["subject_id"] = ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def write_mapping(ds: Dataset, folder: Path) -> None:
    """The model directory's record of which file each id is, and whose it is (data that names either)."""
    if ds.sources is None and ds.subjects is None:
        return
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["sample_id", "path", "subject_id"])
    for i in np.flatnonzero(ds.y >= 0):
        w.writerow([int(i), ds.sources[i] if ds.sources else "", ds.subjects[i] if ds.subjects is not None else ""])
    atomic_write_text(folder / SAMPLES, buf.getvalue())
