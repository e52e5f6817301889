"""Readers for datasets that live in files on disk: Fashion-MNIST IDX, CIFAR pickles, image folders,
and a user's own arrays (.npz / Parquet). Each returns `RawData`; `core.data.datasets` applies the options."""
from __future__ import annotations

import gzip
import json
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.data.config import DatasetConfig, names_a_file

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR_LAYOUT = {  # name -> (folder, train files, test file, meta file, meta key, label key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "batches.meta", b"label_names", b"labels"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", b"fine_label_names", b"fine_labels"),
}
CIFAR_HELP = ("download the CIFAR python version from https://www.cs.toronto.edu/~kriz/cifar.html, "
              "unpack it, and set dataset.path to the directory containing {folder}/")


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


GRAYSCALE_MODES = {"1", "L", "LA"}  # PIL modes of 8-bit grayscale images (bilevel, plain, with alpha)


def rows_of(container: str, rows: np.ndarray) -> np.ndarray:
    """The source of each example stored at `rows` of an array or file: `container[row]`, e.g. `x_train[12]`."""
    return np.array([f"{container}[{int(row)}]" for row in rows], dtype=object)


def rows(array: np.ndarray) -> np.ndarray:
    """0..len-1 over the first axis of `array` (none for a 0-d array, which the checks refuse with its shape)."""
    return np.arange(len(array) if np.ndim(array) else 0)


def _need_path(cfg: DatasetConfig, what: str) -> Path:
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


# ---------------------------------------------------------------- CIFAR-10/100 (python pickles)
_PICKLE_MODULES = {"numpy", "numpy.core.multiarray", "numpy._core.multiarray"}  # where numpy pickles arrays from


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except the few numpy needs, so a hostile file cannot run code (nor import a module)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module in _PICKLE_MODULES and name in {"_reconstruct", "ndarray", "dtype", "scalar"}) \
                or (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR file")


def _unpickle(path: Path) -> dict:
    """One CIFAR pickle as a dict with bytes keys."""
    try:
        with open(path, "rb") as f:
            out = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any unpickling failure means the file is not a CIFAR batch
        raise DatasetError(f"{path} is not a readable CIFAR pickle ({e}): re-download the python version") from None
    if not isinstance(out, dict):
        raise DatasetError(f"{path} holds a {type(out).__name__}, not a CIFAR dict: re-download it")
    return out


def _get(d: dict, key: bytes, path: Path) -> Any:
    """d[key] (bytes key as in the original Python 2 files, or its str form), or an error naming the file."""
    if key not in d and key.decode() in d:  # re-pickled under Python 3
        key = key.decode()  # type: ignore[assignment]
    if key not in d:
        raise DatasetError(f"{path} has no key {key!r} (keys: {sorted(d)}): it is not the expected "
                           "CIFAR file; check that dataset.name matches the files (cifar10 vs cifar100)")
    return d[key]


def load_cifar(cfg: DatasetConfig, cache_dir: Path | None = None) -> RawData:
    """CIFAR-10 or CIFAR-100 (fine labels) from the python-pickle layout; pixels scaled to [0, 1]."""
    folder, train_files, test_file, meta_file, meta_key, label_key = CIFAR_LAYOUT[cfg.name]
    base = _need_path(cfg, f"the folder holding {folder}/ (or that folder itself); " + CIFAR_HELP.format(folder=folder))
    tried = [base / folder, base]  # pickles are read from the user's dataset folder only, never from a data root
    found = next((d for d in tried if all((d / f).is_file() for f in [*train_files, test_file, meta_file])),
                 None)
    if found is None:
        need = ", ".join([*train_files, test_file, meta_file])
        raise DatasetError(f"{cfg.name} files ({need}) not found; looked in: " + ", ".join(map(str, tried))
                           + ". To fix: " + CIFAR_HELP.format(folder=folder))

    def split(files: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Images [n, 3, 32, 32] uint8, labels and sources (`batch file[row]`) of the given batch files, concatenated
        in order."""
        xs, ys, where = [], [], []
        for f in files:
            d = _unpickle(found / f)
            x, y = np.asarray(_get(d, b"data", found / f)), np.asarray(_get(d, label_key, found / f))
            if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
                raise DatasetError(f"{found / f}: data has shape {x.shape} and {len(y)} labels; expected "
                                   f"[n, 3072] with n labels: the file is corrupt, re-download it")
            if x.dtype != np.uint8:  # pixels are bytes: anything else must be whole numbers in 0..255
                if x.dtype.kind not in "uif":
                    raise DatasetError(f"{found / f}: data has dtype {x.dtype}; expected uint8 pixels: the file "
                                       "is corrupt, re-download it")
                with np.errstate(invalid="ignore"):
                    bad = ~((x >= 0) & (x <= 255) & (x == np.round(x)))  # NaN fails every comparison
                if bad.any():
                    first = x.flat[np.argmax(bad)]
                    raise DatasetError(f"{found / f}: {int(bad.sum())} pixel values are not whole numbers in "
                                       f"0..255 (NaN, inf, fractions or out of range; first: {first}): the file "
                                       "is corrupt, re-download it")
            xs.append(x.astype(np.uint8).reshape(-1, 3, 32, 32))
            ys.append(y)
            where.append(rows_of(f, np.arange(len(x))))
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(where)

    (xtr, ytr, str_), (xte, yte, ste) = split(train_files), split([test_file])
    names = [n.decode() if isinstance(n, bytes) else str(n)
             for n in _get(_unpickle(found / meta_file), meta_key, found / meta_file)]
    return RawData(xtr, ytr, np.arange(len(xtr)), xte, yte, np.arange(len(xte)), names, scale=255.0,
                   sources=[found / f for f in [*train_files, test_file, meta_file]], train_source=str_,
                   test_source=ste)


# ---------------------------------------------------------------- image folder
def _read_image(path: str) -> np.ndarray:
    """One image file as uint8 [1, H, W] when it is 8-bit grayscale (`GRAYSCALE_MODES`), else [3, H, W] RGB."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("L" if img.mode in GRAYSCALE_MODES else "RGB"))
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError or its own errors on a bad file
        raise DatasetError(f"cannot read image {path} ({type(e).__name__}: {e}); replace or remove the "
                           "file") from None
    return pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)


def _read_image_folder(root: Path) -> tuple[list[np.ndarray], np.ndarray, list[str], list[Path]]:
    """All images of one ImageFolder split (each [1 or 3, H, W] uint8, `_read_image`), labels, class names and image
    files, in the order of (class folder, file name)."""
    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(str(root))
    except (FileNotFoundError, OSError) as e:
        raise DatasetError(f"cannot read image folder {root} ({e}): it needs one sub-folder per class "
                           "holding image files (png, jpg, ...)") from None
    images, sizes = [], {}
    for path, _ in folder.samples:
        img = _read_image(path)
        sizes.setdefault(img.shape[1:], path)
        if len(sizes) > 1:
            (s1, p1), (s2, p2) = sizes.items()
            raise DatasetError(f"images in {root} differ in size: {s1[0]}x{s1[1]} ({p1}) and "
                               f"{s2[0]}x{s2[1]} ({p2}) (HxW); resize them all to one size first")
        images.append(img)
    return images, np.asarray(folder.targets), list(folder.classes), [Path(p) for p, _ in folder.samples]


def _stack_images(images: list[np.ndarray], channels: int) -> np.ndarray:
    """Images of 1 or 3 channels as one uint8 [N, channels, H, W] array; grayscale ones repeated into RGB when
    `channels` is 3 (what PIL's convert("RGB") gives them)."""
    return np.stack([np.repeat(img, channels // len(img), axis=0) for img in images])


def load_image_folder(cfg: DatasetConfig, cache_dir: Path | None = None) -> RawData:
    """An ImageFolder tree `<path>/train/<class>/*.png` and `<path>/test/<class>/*.png`."""
    root = _need_path(cfg, "a folder with train/ and test/ sub-folders, one folder per class in each")
    missing = [str(root / s) for s in ("train", "test") if not (root / s).is_dir()]
    if missing:
        raise DatasetError(f"image folder split(s) not found: {', '.join(missing)}; dataset.path must hold "
                           "train/<class>/<image> and test/<class>/<image>")
    train_images, ytr, classes, train_files = _read_image_folder(root / "train")
    test_images, yte, test_classes, test_files = _read_image_folder(root / "test")
    if test_classes != classes:
        raise DatasetError(f"test classes {test_classes} differ from train classes {classes} in {root}; "
                           "give test/ exactly the same class folders as train/")
    if train_images and test_images and train_images[0].shape[1:] != test_images[0].shape[1:]:
        raise DatasetError(f"train images are {train_images[0].shape[1:]} but test images are "
                           f"{test_images[0].shape[1:]} (HxW) in {root}; resize them to one size")
    # the files' own mode: all grayscale stays 1 channel (a third of the work of RGB), any colour makes all RGB
    grayscale = all(len(img) == 1 for img in train_images + test_images)
    channels = 1 if grayscale else 3
    xtr, xte = _stack_images(train_images, channels), _stack_images(test_images, channels)
    relative = [p.relative_to(root).as_posix() for p in train_files + test_files]
    return RawData(xtr, ytr, np.arange(len(xtr)), xte, yte, np.arange(len(xte)), classes, scale=255.0,
                   sources=train_files + test_files, train_source=np.array(relative[:len(xtr)], dtype=object),
                   test_source=np.array(relative[len(xtr):], dtype=object),
                   decoding="grayscale images as 1 channel" if grayscale else None)


# ---------------------------------------------------------------- user arrays: .npz or Parquet
def _parquet_split(df: Any, split: str, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features, labels, ids and sources (`file name[row]`) of one split of a Parquet table."""
    part = df[df["split"] == split]
    if "features" in part.columns:  # one list column: every row of both splits must have the same length
        lens = {len(v) for v in df["features"]}
        if len(lens) > 1:
            raise DatasetError(f"{path}: `features` lists have different lengths {sorted(lens)[:5]}; "
                               "every row needs the same number of features")
        x = np.asarray(part["features"].tolist(), dtype=np.float64).reshape(len(part), lens.pop() if lens else 0)
    else:  # f0..fN in numeric order (f10 after f9)
        cols = sorted((c for c in df.columns if c[:1] == "f" and c[1:].isdigit()), key=lambda c: int(c[1:]))
        x = part[cols].to_numpy(dtype=np.float64)
    ids = part["example_id"].to_numpy() if "example_id" in part.columns else part.index.to_numpy()
    return x, part["label"].to_numpy(), ids, rows_of(path.name, part.index.to_numpy())


def _load_parquet(path: Path, noisy_column: str | None = None) -> RawData:
    """A Parquet table with columns split, label, features (list) or f0..fN, optional example_id, and the bool
    column `noisy_column` (true = the label is wrong) when given."""
    import pandas as pd

    df = pd.read_parquet(path).reset_index(drop=True)  # row number = default example_id
    has_f = any(c[:1] == "f" and c[1:].isdigit() for c in df.columns)
    missing = [c for c in ("split", "label") if c not in df.columns]
    missing += [] if "features" in df.columns or has_f else ["features (or f0..fN)"]
    if missing:
        raise DatasetError(f"{path} lacks column(s) {missing} (has {list(df.columns)}); a Parquet dataset "
                           "needs `split` ('train'/'test'), `label`, and a list column `features` or "
                           "columns f0..fN")
    missing_labels = np.flatnonzero(df["label"].isna().to_numpy())
    if len(missing_labels):
        raise DatasetError(f"{path}: column `label` has {len(missing_labels)} missing values (first in row "
                           f"{missing_labels[0]}); every example needs a label")
    bad = sorted(set(df["split"].astype(str)) - {"train", "test"})
    if bad:
        raise DatasetError(f"{path}: column `split` has values {bad}; only 'train' and 'test' are allowed")
    (xtr, ytr, itr, str_), (xte, yte, ite, ste) = _parquet_split(df, "train", path), _parquet_split(df, "test", path)
    names = None
    if ytr.dtype.kind in "OSU":  # string labels: classes are the sorted distinct train labels
        names = sorted(set(ytr.astype(str)))
        unknown = sorted(set(yte.astype(str)) - set(names))
        if unknown:
            raise DatasetError(f"{path}: test labels {unknown[:5]} never occur in train; every class needs "
                               "training examples")
        index = {n: i for i, n in enumerate(names)}
        ytr, yte = (np.array([index[v] for v in y.astype(str)], dtype=np.int64) for y in (ytr, yte))
    noisy = _flagged_ids(df, noisy_column, path, itr) if noisy_column else None
    return RawData(xtr, ytr, itr, xte, yte, ite, names, train_source=str_, test_source=ste,  # type: ignore[arg-type]
                   noisy_ids=noisy)


def _flagged_ids(df: Any, column: str, path: Path, train_ids: np.ndarray) -> np.ndarray:
    """Ids of the training rows whose bool column `column` is true; a flagged test row or non-bool values fail."""
    if column not in df.columns:
        raise DatasetError(f"{path} has no column {column!r} for dataset.noisy_ids (has {list(df.columns)}); name "
                           "one of its columns, or give the path of a .csv/.parquet file of example ids")
    flags = df[column]
    if flags.dtype.kind != "b":
        raise DatasetError(f"column {column!r} of {path} has dtype {flags.dtype}; dataset.noisy_ids needs a bool "
                           "column (true = the label is wrong) in a Parquet dataset")
    test_flagged = np.flatnonzero(flags.to_numpy() & (df["split"] == "test").to_numpy())
    if len(test_flagged):
        raise DatasetError(f"column {column!r} of {path} flags {len(test_flagged)} test rows (first: row "
                           f"{test_flagged[0]}); only training labels are checked for noise, so flag train rows only")
    return train_ids[flags[df["split"] == "train"].to_numpy()]


def _load_npz(path: Path, noisy_array: str | None = None) -> RawData:
    """An .npz with x_train, y_train, x_test, y_test and optional class_names, train_ids, test_ids, and the array
    `noisy_array` (example ids, or one bool per row of x_train: true = the label is wrong) when given."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):  # an .npz is a zip archive (the second: an empty one)
        raise DatasetError(f"{path} is not an .npz file: an .npz is a zip archive, but this file starts with "
                           f"{head!r}; save it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
    with np.load(path, allow_pickle=False) as z:  # no pickle: a data file must not run code
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
        if missing:
            raise DatasetError(f"{path} lacks array(s) {missing} (has {z.files}); save it with "
                               "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
        d = {k: z[k] for k in z.files}
    ids = {s: d.get(f"{s}_ids", np.arange(len(d[f"y_{s}"]))) for s in ("train", "test")}
    names = [str(n) for n in d["class_names"]] if "class_names" in d else None
    noisy = None
    if noisy_array is not None:
        if noisy_array not in d:
            raise DatasetError(f"{path} has no array {noisy_array!r} for dataset.noisy_ids (has {sorted(d)}); name one "
                               "of its arrays, or give the path of a .csv/.parquet file of example ids")
        noisy = np.asarray(d[noisy_array])
        if noisy.dtype.kind == "b":  # one flag per row of x_train
            n_rows = len(rows(d["x_train"]))
            if noisy.shape != (n_rows,):
                raise DatasetError(f"bool array {noisy_array!r} of {path} has shape {noisy.shape}; as flags it needs "
                                   f"one per row of x_train ({n_rows}), or store example ids instead")
            noisy = np.asarray(ids["train"])[noisy]
        else:
            noisy = int_labels(noisy, f"array {noisy_array!r} of {path} (dataset.noisy_ids)", what="example ids")
    return RawData(d["x_train"], d["y_train"], ids["train"], d["x_test"], d["y_test"], ids["test"],
                   names, train_source=rows_of("x_train", rows(d["x_train"])),  # type: ignore[arg-type]
                   test_source=rows_of("x_test", rows(d["x_test"])), noisy_ids=noisy)


def load_arrays(cfg: DatasetConfig, cache_dir: Path | None = None) -> RawData:
    """A user's arrays from .npz or Parquet; class names default to "0".."C-1" (C = max label + 1)."""
    path = _need_path(cfg, "an .npz file (x_train, y_train, x_test, y_test) or a Parquet file")
    if not path.is_file():
        raise DatasetError(f"arrays file not found: looked at {path}; set dataset.path to an existing "
                           ".npz or .parquet file")
    is_parquet = path.suffix in (".parquet", ".pq")
    column = cfg.noisy_ids if cfg.noisy_ids and not names_a_file(cfg.noisy_ids) else None
    try:
        raw = _load_parquet(path, column) if is_parquet else _load_npz(path, column)
    except DatasetError:
        raise
    except Exception as e:  # unreadable container: say which file and what kind was expected
        raise DatasetError(f"cannot read {path} as {'Parquet' if is_parquet else 'npz'} "
                           f"({type(e).__name__}: {e}); check the file format and its suffix") from None
    raw.sources = [path]
    raw.y_train = int_labels(raw.y_train, f"y_train of {path}")
    raw.y_test = int_labels(raw.y_test, f"y_test of {path}")
    if raw.class_names is None:
        top = max((int(y.max()) for y in (raw.y_train, raw.y_test) if len(y)), default=-1)
        raw.class_names = [str(i) for i in range(max(top + 1, 1))]
    return raw


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
