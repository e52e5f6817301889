"""Dataset registry: loads a dataset by config, then subsets, normalises and injects label noise.

Every dataset comes back as a `Dataset` whose examples carry an `example_id` (their index in the
source, or the ids of the user's file), so per-example results from different runs and subsets can be
joined on it, and a `source` saying where the example is stored (an image's path relative to
dataset.path, or `container[row]`: the array or file and the row that hold it).
"""
from __future__ import annotations

import random
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from core.data.arrays import load_arrays
from core.data.cifar import load_cifar
from core.data.config import DatasetConfig, names_a_file
from core.data.fingerprint import fingerprint
from core.data.foreign import foreign_examples
from core.data.image_folder import load_image_folder
from core.data.sources import (DatasetError, RawData, describe_classes, int_labels, load_fashion_mnist, read_id_file,
                               rows_of)
from core.runs.files import atomic_write

__all__ = ["DATASETS", "Dataset", "DatasetError", "RawData", "get_loader", "load_dataset", "load_dataset_by_name"]


@dataclass
class Dataset:
    """Both splits as float32 features and int64 labels, with example ids and label-noise bookkeeping."""

    name: str
    x_train: torch.Tensor  # float32 [N, *input_shape]
    y_train: torch.Tensor  # int64 [N], noisy where noise was injected
    x_test: torch.Tensor  # float32 [M, *input_shape]
    y_test: torch.Tensor  # int64 [M]
    train_ids: torch.Tensor  # int64 [N], index of each example in its source, ascending
    test_ids: torch.Tensor  # int64 [M]
    true_label: torch.Tensor  # int64 [N], training labels before noise; -1 where the user marked it wrong
    is_noisy: torch.Tensor  # bool [N]
    is_foreign: torch.Tensor  # bool [N]: mixed in from another source (dataset.foreign), with a random label
    class_names: list[str]
    train_source: np.ndarray  # str [N]: where each example is stored (core.data.sources.RawData)
    test_source: np.ndarray  # str [M]
    sources: list[Path] = field(default_factory=list)  # the user's files it was read from; none if generated
    fingerprint: str | None = None  # of those files' contents (core.data.fingerprint); part of every run's id
    decoding: str | None = None  # how the files were read, where earlier code read them otherwise; in the fingerprint

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. (1, 28, 28)."""
        return tuple(self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        """Number of training examples."""
        return len(self.y_train)

    @property
    def n_test(self) -> int:
        """Number of test examples."""
        return len(self.y_test)

    def files_changed(self, cache_dir: Path | None) -> bool:
        """Whether the files it was read from hold other contents now than when it was loaded."""
        return fingerprint(self.sources, cache_dir, self.decoding) != self.fingerprint


# ---------------------------------------------------------------- generated / bundled datasets
def load_mnist1d(cfg: DatasetConfig, cache_dir: Path | None = None) -> RawData:
    """MNIST-1D generated locally (never downloaded); cached as .npz in cache_dir by (samples, seed)."""
    cache = Path(cache_dir) / f"mnist1d-n{cfg.mnist1d_samples}-seed{cfg.seed}.npz" if cache_dir else None
    d = None
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                d = {k: z[k] for k in ("x", "y", "x_test", "y_test")}
        except Exception:  # a damaged cache is regenerated, not fatal
            d = None
    on_success = None
    if d is None:
        d = _generate_mnist1d(cfg.mnist1d_samples, cfg.seed)
        on_success = (lambda: _save_cache(cache, d)) if cache is not None else None
    x, xt = d["x"][:, None, :], d["x_test"][:, None, :]
    return RawData(x, d["y"], np.arange(len(x)), xt, d["y_test"], np.arange(len(xt)),
                   [str(i) for i in range(10)], on_success=on_success,  # sources: the arrays of make_dataset
                   train_source=rows_of("x", np.arange(len(x))), test_source=rows_of("x_test", np.arange(len(xt))))


_GLOBAL_RNG = threading.Lock()


def _generate_mnist1d(samples: int, seed: int) -> dict[str, np.ndarray]:
    """make_dataset's x, y, x_test, y_test; restores the global RNGs that mnist1d reseeds."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = samples, seed
    with _GLOBAL_RNG:  # make_dataset reseeds numpy's and Python's global generators
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            d = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
    return {k: np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test")}


def _save_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an .npz atomically, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_digits(cfg: DatasetConfig, cache_dir: Path | None = None) -> RawData:
    """scikit-learn's bundled 8x8 digits (pixels 0..16) with a seeded stratified split."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    try:
        tr, te = train_test_split(np.arange(len(d.target)), stratify=d.target, random_state=cfg.seed,
                                  test_size=cfg.digits_test_fraction)
    except ValueError as e:  # stratification needs at least one example per class in each split
        raise DatasetError(f"digits_test_fraction={cfg.digits_test_fraction} cannot be split stratified "
                           f"({e}); choose a fraction between 0.01 and 0.99") from None
    tr, te = np.sort(tr), np.sort(te)
    x = d.images[:, None]
    return RawData(x[tr], d.target[tr], tr, x[te], d.target[te], te, [str(i) for i in range(10)],
                   train_source=rows_of("load_digits", tr), test_source=rows_of("load_digits", te))


SYNTHETIC = {"n_samples": 10_000, "n_features": 20, "n_informative": 10, "n_redundant": 5, "n_classes": 4,
             "n_clusters_per_class": 2}  # a small, nonlinear problem (two Gaussian clusters per class)


def load_synthetic(cfg: DatasetConfig, cache_dir: Path | None = None) -> RawData:
    """scikit-learn's make_classification (`SYNTHETIC`), generated from `cfg.seed`; the first 80% train."""
    from sklearn.datasets import make_classification

    x, y = make_classification(**SYNTHETIC, random_state=cfg.seed)
    n = len(y) * 4 // 5
    ids = np.arange(len(y))
    where = rows_of("make_classification", ids)
    return RawData(x[:n], y[:n], ids[:n], x[n:], y[n:], ids[n:], [str(c) for c in range(SYNTHETIC["n_classes"])],
                   train_source=where[:n], test_source=where[n:])


Loader = Callable[[DatasetConfig, "Path | None"], RawData]
DATASETS: dict[str, Loader] = {
    "mnist1d": load_mnist1d, "digits": load_digits, "synthetic": load_synthetic, "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar, "cifar100": load_cifar, "image_folder": load_image_folder, "arrays": load_arrays,
}


def get_loader(name: str) -> Loader:
    """The loader registered under `name`, or an error listing the valid names."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid names are: {', '.join(DATASETS)}")
    return DATASETS[name]


# ---------------------------------------------------------------- checks and options
def _check(raw: RawData, name: str) -> RawData:
    """Validate shapes, labels, ids and values; put each split in ascending example-id order."""
    C = len(raw.class_names)
    # where the values came from, for the messages: the user's file when there is one
    where = f" in {raw.sources[0]}" if len(raw.sources) == 1 else ""
    for split in ("train", "test"):
        x, ids = np.asarray(getattr(raw, f"x_{split}")), np.asarray(getattr(raw, f"{split}_ids"))
        if x.ndim < 2 or 0 in x.shape[1:]:
            raise DatasetError(f"{name} {split} features have shape {x.shape}{where}; need one row of at least one "
                               "feature per example: [N, features] or [N, channels, ...]")
        y = int_labels(getattr(raw, f"y_{split}"), f"the {split} split of {name}")
        if not len(x) == len(y) == len(ids):
            raise DatasetError(f"{name} {split} split: features have {len(x)} examples but labels have "
                               f"{len(y)} (and ids {len(ids)}); every example needs exactly one label")
        ids = int_labels(ids, f"the {split} split of {name}", what="example ids")
        source = getattr(raw, f"{split}_source")
        if source is None or len(source) != len(x):
            raise TypeError(f"the {name} loader gives no source for each {split} example (RawData.{split}_source)")
        bad = np.flatnonzero((y < 0) | (y >= C))
        if len(bad):
            i = bad[0]
            raise DatasetError(f"{name} {split} split: label {y[i]} at position {i} (example_id {ids[i]}) is "
                               f"outside 0..{C - 1} ({C} classes {describe_classes(raw.class_names)}); "
                               f"{len(bad)} labels out of range. Fix the labels or list every class in "
                               "class_names")
        if x.dtype.kind not in "uifb":
            raise DatasetError(f"{name} {split} features have dtype {x.dtype}{where}; store numbers")
        if x.dtype.kind == "f":  # features become float32: NaN, inf, and finite values beyond its range are refused
            flat = x.reshape(len(x), int(np.prod(x.shape[1:])))  # also for an empty split
            with np.errstate(invalid="ignore", over="ignore"):
                nan, inf = np.isnan(flat), np.isinf(flat)
                big = np.isfinite(flat) & (np.abs(flat) > np.finfo(np.float32).max)
            bad = nan | inf | big
            if bad.any():
                rows = np.flatnonzero(bad.any(axis=1))
                kinds = ", ".join(f"{int(n)} {what}" for n, what in ((nan.sum(), "NaN"), (inf.sum(), "inf"),
                                                                    (big.sum(), "too large for float32")) if n)
                raise DatasetError(f"{name} {split} split has {int(bad.sum())} NaN/inf feature values in {len(rows)} "
                                   f"examples (first example_id {ids[rows[0]]}){where}: {kinds}; remove or impute them")
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise DatasetError(f"{name} {split} split: example_id {uniq[counts > 1][0]} occurs "
                               f"{counts.max()} times; example ids must be unique within a split")
        order = np.argsort(ids, kind="stable")
        setattr(raw, f"x_{split}", x[order])
        setattr(raw, f"y_{split}", y[order])
        setattr(raw, f"{split}_ids", ids[order])
        setattr(raw, f"{split}_source", np.asarray(source, dtype=object)[order])
    if len(raw.y_train) == 0:
        raise DatasetError(f"{name} has no training examples; check the file at dataset.path")
    if raw.x_train.shape[1:] != raw.x_test.shape[1:]:
        raise DatasetError(f"{name}: train examples have shape {raw.x_train.shape[1:]} but test examples "
                           f"{raw.x_test.shape[1:]}; both splits need the same feature shape")
    return raw


def _subset(n_avail: int, n: int | None, rng: np.random.Generator, what: str) -> np.ndarray:
    """Sorted positions of a seeded random subset of size n (all when n is None)."""
    if n is None:
        return np.arange(n_avail)
    if n > n_avail:
        raise DatasetError(f"{what}={n} requested but only {n_avail} examples are available; lower {what} "
                           "or leave it empty to use all")
    return np.sort(rng.choice(n_avail, size=n, replace=False))


def _normalize(x_train: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardise both splits with train statistics: per channel for [N, C, H, W], else one scalar."""
    dims = (0, 2, 3) if x_train.ndim == 4 else tuple(range(x_train.ndim))
    # float32 is enough: torch reduces with cascade sums, and a float64 copy would double the memory
    std, mean = torch.std_mean(x_train, dim=dims, keepdim=True, correction=0)
    if x_train.ndim == 4:
        std, mean = std[0], mean[0]  # broadcast over [C, 1, 1]
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant features stay constant, not NaN
    return ((x_train - mean) / std).float(), ((x_test - mean) / std).float()


def _add_noise(y: np.ndarray, frac: float, kind: str, C: int, rng: np.random.Generator) -> np.ndarray:
    """Labels with exactly round(frac * N) seeded random entries moved to a different class."""
    y = y.copy()
    idx = rng.choice(len(y), size=round(frac * len(y)), replace=False)
    shift = 1 if kind == "pair" else rng.integers(1, C, size=len(idx))  # 1..C-1: never the same class
    y[idx] = (y[idx] + shift) % C
    return y


def _user_marked(config: DatasetConfig, raw: RawData) -> np.ndarray:
    """Bool per training example of `raw`: listed by dataset.noisy_ids (a file of ids, or the array / column the
    loader read). An id that is no training example's fails, naming the file."""
    if config.noisy_ids is None:
        return np.zeros(len(raw.train_ids), bool)
    if names_a_file(config.noisy_ids):
        path = Path(config.noisy_ids).expanduser()
        ids, where = read_id_file(path, raw.train_ids, raw.train_source), str(path)
        raw.sources = [*raw.sources, path]  # the ids are the user's data too: part of the run's fingerprint
    else:
        ids, where = raw.noisy_ids, f"{config.noisy_ids!r} of {raw.sources[0]}"
    unknown = np.setdiff1d(ids, raw.train_ids)
    if len(unknown):
        raise DatasetError(f"dataset.noisy_ids: {len(unknown)} of the ids in {where} are not example ids of the "
                           f"{config.name} training split (first: {unknown[:5].tolist()}); list example_id values "
                           "of training examples (examples.parquet)")
    return np.isin(raw.train_ids, ids)


def load_dataset(config: DatasetConfig, cache_dir: Path | None = None) -> Dataset:
    """Load `config.name`, then subset (seeded), add training label noise or mark the examples dataset.noisy_ids
    lists, mix in foreign examples (dataset.foreign), and normalise (train stats)."""
    loader = get_loader(config.name)
    raw = _check(loader(config, Path(cache_dir) if cache_dir is not None else None), config.name)
    marked = _user_marked(config, raw)
    C = len(raw.class_names)
    if config.label_noise > 0 and C < 2:
        raise DatasetError(f"label_noise={config.label_noise} needs at least 2 classes but {config.name} "
                           f"has {C}; set label_noise to 0")
    # independent streams, so changing n_test does not change the train subset or the noise
    rng_train, rng_test, rng_noise = (np.random.default_rng([config.seed, k]) for k in range(3))
    tr = _subset(len(raw.y_train), config.n_train, rng_train, "n_train")
    te = _subset(len(raw.y_test), config.n_test, rng_test, "n_test")
    # subset before converting so large uint8 sources are never held as float in full
    xtr = torch.from_numpy(raw.x_train[tr].astype(np.float32) / np.float32(raw.scale))
    xte = torch.from_numpy(raw.x_test[te].astype(np.float32) / np.float32(raw.scale))
    true = raw.y_train[tr]
    noisy = true
    if config.label_noise > 0:
        noisy = _add_noise(true, config.label_noise, config.noise_kind, C, rng_noise)
    is_noisy = (noisy != true) | marked[tr]
    if marked.any() and not marked[tr].any():
        warnings.warn(f"none of the {int(marked.sum())} examples dataset.noisy_ids lists is in the n_train="
                      f"{config.n_train} subset: no noise detection; raise n_train or leave it empty", stacklevel=2)
    true = np.where(marked[tr], -1, true)  # the user's file says the label is wrong, not what is right
    ids, source = raw.train_ids[tr], raw.train_source[tr]
    if config.foreign != "none":  # after the subset and before normalising: on the training split's own scale
        foreign = foreign_examples(config.foreign, config.foreign_fraction, xtr, C, config.seed)
        xtr = torch.cat([xtr, foreign.x])
        noisy, true = np.concatenate([noisy, foreign.y]), np.concatenate([true, np.full(len(foreign.y), -1)])
        ids, source = np.concatenate([ids, foreign.ids]), np.concatenate([source, foreign.source])
        is_noisy = np.concatenate([is_noisy, np.zeros(len(foreign.y), bool)])  # foreign, not mislabeled
        raw.sources = [*raw.sources, *foreign.files]
    if config.normalize:
        xtr, xte = _normalize(xtr, xte)
    if raw.on_success is not None:
        raw.on_success()
    return Dataset(
        name=config.name, x_train=xtr, y_train=torch.from_numpy(noisy.copy()), x_test=xte,
        y_test=torch.from_numpy(raw.y_test[te]), train_ids=torch.from_numpy(ids),
        test_ids=torch.from_numpy(raw.test_ids[te]), true_label=torch.from_numpy(true.copy()),
        is_noisy=torch.from_numpy(is_noisy), is_foreign=torch.from_numpy(np.arange(len(ids)) >= len(tr)),
        class_names=list(raw.class_names), train_source=source, test_source=raw.test_source[te], sources=raw.sources,
        fingerprint=fingerprint(raw.sources, cache_dir, raw.decoding), decoding=raw.decoding)


def load_dataset_by_name(name: str, cache_dir: Path | None = None, **options: Any) -> Dataset:
    """`load_dataset(DatasetConfig(name=name, **options))`, with an unknown name reported as DatasetError."""
    get_loader(name)
    return load_dataset(DatasetConfig(name=name, **options), cache_dir)
