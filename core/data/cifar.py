"""The CIFAR-10/100 reader: the python-pickle layout from the authors' page, read without running code."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from core.data.config import DatasetConfig
from core.data.sources import DatasetError, RawData, need_path, rows_of

CIFAR_LAYOUT = {  # name -> (folder, train files, test file, meta file, meta key, label key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "batches.meta", b"label_names", b"labels"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", b"fine_label_names", b"fine_labels"),
}
CIFAR_HELP = ("download the CIFAR python version from https://www.cs.toronto.edu/~kriz/cifar.html, "
              "unpack it, and set dataset.path to the directory containing {folder}/")

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
    base = need_path(cfg, f"the folder holding {folder}/ (or that folder itself); " + CIFAR_HELP.format(folder=folder))
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
