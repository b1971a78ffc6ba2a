"""`--data imagefolder:DIR`: PNG or JPEG files in DIR/train/<class>/ and DIR/test/<class>/.

The images are never all in memory: `ImageFiles` decodes the rows a batch asks for (the service copies them once
into its memory-mapped store). The folders name the splits: every image under train/ is trained on; DIR/test/ (and
optional DIR/val/, DIR/shadow/) are held out, and validation and the verifier's non-members are carved from the
held-out images when no folder names them. Only without any held-out folder does train/ give up images (a seeded
split, said in meta.json's `split_origin`). Class names are the folder names, sorted.

Ids: DIR/samples.csv (`path,sample_id[,subject_id][,split]`, paths relative to DIR) gives stable ids and subjects;
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
from app.ml.common.fsutil import atomic_write_text
from app.ml.data.dataset import SPLIT_NAMES, Dataset
from app.ml.data.ids import keys_of, placement

SUFFIXES = (".png", ".jpg", ".jpeg")
SAMPLES = "samples.csv"


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
    splits = [s for s in SPLIT_NAMES if (root / s).is_dir()]
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


def _samples_csv(root: Path) -> dict[str, tuple[str, str, str]] | None:
    """DIR/samples.csv as path → (sample_id, subject_id, split): a split named there wins over the folder's."""
    path = root / SAMPLES
    if not path.is_file():
        return None
    out: dict[str, tuple[str, str, str]] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "sample_id"} <= set(reader.fieldnames):
            raise DataError(f"{path}: needs columns path,sample_id[,subject_id]; has {reader.fieldnames}")
        for n, row in enumerate(reader, 2):
            sid = (row["sample_id"] or "").strip()
            if not sid or row["path"] in out:
                raise DataError(f"{path}:{n}: every row needs a sample_id, and each path is listed once")
            split = (row.get("split") or "").strip()
            if split not in (*SPLIT_NAMES, ""):
                raise DataError(f"{path}:{n}: split {split!r} is not among {', '.join(SPLIT_NAMES)} (or empty)")
            out[row["path"]] = (sid, (row.get("subject_id") or "").strip(), split)
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
        at, keys = placement([given[r[0]][0] for r in rows], str(root / SAMPLES))
        ids = at.tolist()
    else:
        ids, keys = list(range(len(rows))), None
    n = max(ids) + 1
    files: list[Path | None] = [None] * n
    y = np.full(n, -1, dtype=np.int64)
    split = np.full(n, "", dtype=object)
    subjects = np.full(n, "", dtype=object)
    sources = [""] * n
    for i, (rel, cls, sp) in zip(ids, rows, strict=True):
        sources[i] = rel
        if (root / rel).stat().st_size == 0:
            continue  # erased: no label, no pixels
        files[i], y[i] = root / rel, classes.index(cls)
        split[i] = (given[rel][2] if given else "") or sp
        subjects[i] = given[rel][1] if given else ""
    return Dataset(name=root.name, x=ImageFiles(files, size, max(channels)), y=y,  # type: ignore[arg-type]
                   num_classes=len(classes), n_pool=n, class_names=classes, given_split=split.astype(str),
                   subjects=subjects.astype(str) if given else None, sources=tuple(sources), keys=keys)


def erase(root: Path, ids: list[str]) -> int:
    """Overwrite and empty the files of IDS (the folder's own sample ids), blank their subjects in samples.csv;
    returns files emptied."""
    paths = listing_by_id(root)
    done = 0
    for i in ids:
        rel = paths.get(str(i))
        path = root / rel if rel else None
        size = path.stat().st_size if path is not None and path.exists() else 0
        if path is not None and size:
            with path.open("r+b") as f:
                f.write(b"\0" * size)
                f.flush()
                os.fsync(f.fileno())
                f.truncate(0)
            done += 1
    _blank_subjects(root, {str(i) for i in ids})
    return done


def listing_by_id(root: Path) -> dict[str, str]:
    """Relative path of each sample id, without opening an image."""
    rows, _ = _listing(root)
    given = _samples_csv(root)
    return {(given[r[0]][0] if given else str(k)): r[0] for k, r in enumerate(rows)}


def _blank_subjects(root: Path, ids: set[str]) -> None:
    path = root / SAMPLES
    if not path.is_file():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    if "subject_id" not in fields:
        return
    hit = [r for r in rows if (r["sample_id"] or "").strip() in ids and r["subject_id"]]
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
    rows = np.flatnonzero(ds.y >= 0)
    for i, key in zip(rows, keys_of(ds.keys, rows), strict=True):
        w.writerow([key, ds.sources[i] if ds.sources else "", ds.subjects[i] if ds.subjects is not None else ""])
    atomic_write_text(folder / SAMPLES, buf.getvalue())


def drop_from_mapping(folder: Path, ids: set[str]) -> int:
    """Remove the rows of forgotten sample ids from FOLDER's samples.csv (a model directory's record of whose
    each sample is): once a sample is forgotten, no file the service wrote may link its id to a person or a
    path. Returns rows removed."""
    path = folder / SAMPLES
    if not path.is_file():
        return 0
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    kept = [r for r in rows if r.get("sample_id", "") not in ids]
    if len(kept) == len(rows):
        return 0
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept)
    atomic_write_text(path, buf.getvalue())
    return len(rows) - len(kept)
