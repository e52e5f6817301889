"""What the readers of datasets in files on disk share (`RawData`, `DatasetError`, where each example is stored, labels
as integers), the Fashion-MNIST IDX reader, and dataset.noisy_ids files of example ids. CIFAR pickles
(core.data.cifar), image folders (core.data.image_folder) and a user's arrays (core.data.arrays) have readers of their
own. Each reader returns `RawData`; `core.data.datasets` applies the options."""
from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.data.config import DatasetConfig

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


class DatasetError(ValueError):
    """A dataset could not be loaded; the message names the problem and the fix."""


@dataclass
class RawData:
    """Both splits as loaded from the source, before subsetting, scaling and noise."""

    x_train: np.ndarray
    y_train: np.ndarray
    train_ids: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_ids: np.ndarray
    class_names: list[str]
    scale: float = 1.0  # features are divided by this when converted to float (255 for uint8 pixels)
    on_success: Callable[[], None] | None = None  # deferred cache write: nothing is written on failure
    sources: list[Path] = field(default_factory=list)  # the user's files it was read from
    # per example, where it is stored: a file path relative to dataset.path, or `container[row]` (see `rows_of`)
    train_source: np.ndarray | None = None
    test_source: np.ndarray | None = None
    noisy_ids: np.ndarray | None = None  # training example ids the user's file marks as mislabeled (dataset.noisy_ids)
    decoding: str | None = None  # how the files became arrays, where that differs from what earlier code did


def rows_of(container: str, rows: np.ndarray) -> np.ndarray:
    """The source of each example stored at `rows` of an array or file: `container[row]`, e.g. `x_train[12]`."""
    return np.array([f"{container}[{int(row)}]" for row in rows], dtype=object)


def rows(array: np.ndarray) -> np.ndarray:
    """0..len-1 over the first axis of `array` (none for a 0-d array, which the checks refuse with its shape)."""
    return np.arange(len(array) if np.ndim(array) else 0)


def need_path(cfg: DatasetConfig, what: str) -> Path:
    """The configured path, or an error saying what it must point at."""
    if cfg.path is None:
        raise DatasetError(f"dataset {cfg.name!r} needs `path`: set dataset.path to {what}")
    return Path(cfg.path).expanduser()


# ---------------------------------------------------------------- Fashion-MNIST (IDX format)
def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """One IDX file (gzip or plain) as a uint8 array, checking its magic number and sizes."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip raises these on a corrupt or truncated archive
        raise DatasetError(f"cannot read {path} ({e}): re-install or re-download it") from None
    if len(data) < 4 + 4 * ndim:
        raise DatasetError(f"{path} is truncated ({len(data)} bytes): re-install or re-download it")
    header = np.frombuffer(data, dtype=">i4", count=1 + ndim)
    if header[0] != magic:
        raise DatasetError(f"{path} has magic number {header[0]}, expected {magic}: "
                           "it is not an IDX file of the right kind (images 2051, labels 2049)")
    dims = [int(d) for d in header[1:]]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if min(dims) < 0:
        raise DatasetError(f"{path}: header dims {dims} are negative: the file is corrupt, re-install or "
                           "re-download it")
    if body.size != math.prod(dims):  # Python ints: huge header dims must not wrap around
        raise DatasetError(f"{path}: header dims {dims} need {math.prod(dims)} bytes of data "
                           f"but the file has {body.size}: the file is truncated or corrupt")
    return body.reshape(dims)


def load_fashion_mnist(cfg: DatasetConfig, cache_dir: Path | None = None) -> RawData:
    """Fashion-MNIST from the four IDX files (.gz or decompressed); pixels scaled to [0, 1]."""
    root = Path(cfg.path or FASHION_MNIST_DIR).expanduser()
    dirs = [root, root / "FashionMNIST" / "raw"]  # the second is torchvision's layout
    arrays, sources = [], []
    for stem, magic, ndim in [("train-images-idx3-ubyte", 2051, 3), ("train-labels-idx1-ubyte", 2049, 1),
                              ("t10k-images-idx3-ubyte", 2051, 3), ("t10k-labels-idx1-ubyte", 2049, 1)]:
        tried = [d / f"{stem}{ext}" for d in dirs for ext in (".gz", "")]
        found = next((p for p in tried if p.is_file()), None)
        if found is None:
            raise DatasetError(f"Fashion-MNIST file {stem}[.gz] not found; looked at: "
                               + ", ".join(map(str, tried)) + ". Install it with "
                               "`apt-get install dataset-fashion-mnist` (files land in "
                               f"{FASHION_MNIST_DIR}) or set dataset.path to the folder holding them")
        arrays.append(_read_idx(found, magic, ndim))
        sources.append(found)
    (xtr, ytr, xte, yte) = arrays
    return RawData(xtr[:, None], ytr, np.arange(len(xtr)), xte[:, None], yte, np.arange(len(xte)),
                   list(FASHION_CLASSES), scale=255.0, sources=sources,
                   train_source=rows_of("train-images-idx3-ubyte", np.arange(len(xtr))),
                   test_source=rows_of("t10k-images-idx3-ubyte", np.arange(len(xte))))


# ---------------------------------------------------------------- example-id files (dataset.noisy_ids)
def read_id_file(path: Path, train_ids: np.ndarray, train_source: np.ndarray) -> np.ndarray:
    """Example ids from a .csv or Parquet file: its column `example_id`, or its column `source` (each an example's
    place in your files, e.g. an image path relative to dataset.path, mapped to its id), or its only column (ids if
    they are numbers, sources if text)."""
    import pandas as pd

    if not path.is_file():
        raise DatasetError(f"dataset.noisy_ids file not found: {path}; give the path of a .csv or .parquet file with "
                           "a column example_id or source")
    try:
        table = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as e:  # unreadable container: say which file and what it should hold
        raise DatasetError(f"cannot read {path} ({type(e).__name__}: {e}); dataset.noisy_ids needs a .csv or "
                           ".parquet file with a column example_id or source") from None
    if not {"example_id", "source"} & set(table.columns) and len(table.columns) != 1:
        raise DatasetError(f"{path} has columns {list(table.columns)} but no example_id or source; name the column "
                           "of ids example_id, or that of file paths source (or keep only that column)")
    if not len(table):
        raise DatasetError(f"{path} lists no example ids or sources; list the mislabeled training examples, or "
                           "leave dataset.noisy_ids empty")
    column = next((c for c in ("example_id", "source") if c in table.columns), table.columns[0])
    if column == "source" or (column != "example_id" and table[column].dtype.kind in "OSU"):  # paths, not ids
        return ids_of_sources(table[column].astype(str).to_numpy(), train_ids, train_source, path)
    return int_labels(table[column].to_numpy(), f"column {column!r} of {path}", what="example ids")


def ids_of_sources(wanted: np.ndarray, train_ids: np.ndarray, train_source: np.ndarray, path: Path) -> np.ndarray:
    """The example ids of the training examples stored at `wanted` (values of the `source` column); one that is no
    training example's source fails, naming the file."""
    index = dict(zip(train_source.tolist(), train_ids.tolist()))
    unknown = [w for w in wanted if w not in index]
    if unknown:
        raise DatasetError(f"dataset.noisy_ids: {len(unknown)} of the sources in {path} are no training example's "
                           f"(first: {unknown[:3]}); give them as the source column of examples.parquet writes them "
                           "(an image path relative to dataset.path, e.g. train/CLASS_NAME/0042.png)")
    return np.array([index[w] for w in wanted], dtype=np.int64)


def int_labels(y: Any, where: str, what: str = "labels") -> np.ndarray:
    """Labels (or ids) as int64 [N]; floats are accepted only when every value is a whole number."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DatasetError(f"{what} in {where} have shape {y.shape}; give one integer per example")
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if len(bad):
            raise DatasetError(f"{what} in {where} must be whole numbers, but position {bad[0]} holds "
                               f"{y[bad[0]]} ({len(bad)} such values); store integers")
    elif y.dtype.kind not in "iub":
        raise DatasetError(f"{what} in {where} have dtype {y.dtype}; store integers"
                           + (" (or, in Parquet, class-name strings)" if what == "labels" else ""))
    return y.astype(np.int64)


def describe_classes(names: list[str]) -> str:
    """Class names shortened for error messages."""
    return json.dumps(names if len(names) <= 12 else [*names[:10], "..."])
