"""The reader of a user's own arrays: an .npz of x_train, y_train, x_test, y_test, or a Parquet table."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.data.config import DatasetConfig, names_a_file
from core.data.sources import DatasetError, RawData, int_labels, need_path, rows, rows_of


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
    path = need_path(cfg, "an .npz file (x_train, y_train, x_test, y_test) or a Parquet file")
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
