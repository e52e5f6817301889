"""Foreign examples mixed into a training split, each with a uniformly random label: the out-of-distribution examples
that the C-score paper says land at one end of the continuum (dataset.foreign, dataset.foreign_fraction).

  digits         scikit-learn's bundled 8x8 digits, resized to the dataset's image size;
  fashion_mnist  Fashion-MNIST training images (Debian's dataset-fashion-mnist), resized;
  noise          each feature uniform between the training split's smallest and largest value of it.
Images arrive in [0, 1], are resized by torch's bilinear interpolation (antialiased when shrinking), repeated over
the dataset's channels, and mapped onto the range of the training split's features, before normalisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.data.sources import DatasetError, load_fashion_mnist, rows_of

FOREIGN_ID_START = 1_000_000_000  # foreign example ids: this plus the row of the source, above every dataset's own


@dataclass
class Foreign:
    """`count` foreign training examples: features shaped as the dataset's, labels, ids and sources."""

    x: torch.Tensor  # float32 [count, *input_shape], on the training split's scale
    y: np.ndarray  # int64 [count], uniform over the classes
    ids: np.ndarray  # int64 [count], FOREIGN_ID_START + the source row, ascending
    source: np.ndarray  # str [count], e.g. "foreign:digits/load_digits[12]"
    files: list[Path]  # the files read (part of the run's fingerprint)


def _source_images(kind: str) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """All images of `kind` in [0, 1] as float32 `[N, 1, h, w]`, their sources, and the files read."""
    if kind == "digits":
        from sklearn.datasets import load_digits

        images = load_digits().images.astype(np.float32) / np.float32(16)
        return images[:, None], rows_of("load_digits", np.arange(len(images))), []
    from core.data.config import DatasetConfig

    raw = load_fashion_mnist(DatasetConfig(name="fashion_mnist"))  # from Debian's folder
    return raw.x_train.astype(np.float32) / np.float32(raw.scale), raw.train_source, raw.sources


def _resized(images: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """`[N, 1, h, w]` images as `[N, *shape]` (`shape` = (C, H, W)): bilinear, antialiased when shrinking."""
    x = torch.from_numpy(images)
    shrinking = shape[1] < x.shape[2] or shape[2] < x.shape[3]
    x = F.interpolate(x, size=shape[1:], mode="bilinear", align_corners=False, antialias=shrinking)
    return x.expand(-1, shape[0], -1, -1).contiguous()


def foreign_examples(kind: str, fraction: float, x_train: torch.Tensor, num_classes: int, seed: int) -> Foreign:
    """round(`fraction` x len(x_train)) examples of `kind`, drawn without replacement by `seed`, shaped and scaled as
    `x_train` (before normalisation), with labels uniform over `num_classes`."""
    count = round(fraction * len(x_train))
    rng = np.random.default_rng([seed, 3])  # its own stream: the subsets and the label noise stay as they were
    if kind == "noise":
        low, high = x_train.min(0).values, x_train.max(0).values
        x = low + (high - low) * torch.from_numpy(rng.random((count, *x_train.shape[1:]), dtype=np.float32))
        rows = np.arange(count)
        return Foreign(x, rng.integers(0, num_classes, count), FOREIGN_ID_START + rows,
                       np.array([f"foreign:noise[{r}]" for r in rows], dtype=object), [])
    if x_train.dim() != 4:
        raise DatasetError(f"dataset.foreign={kind!r} mixes in images, but this dataset's examples are shaped "
                           f"{list(x_train.shape[1:])}, not [C, H, W]; use foreign: noise")
    images, sources, files = _source_images(kind)
    if count > len(images):
        raise DatasetError(f"dataset.foreign_fraction={fraction} asks for {count} foreign examples but {kind} has "
                           f"{len(images)}; lower foreign_fraction or n_train")
    rows = np.sort(rng.choice(len(images), size=count, replace=False))
    lo, hi = x_train.min(), x_train.max()
    x = lo + (hi - lo) * _resized(images[rows], tuple(x_train.shape[1:]))
    return Foreign(x, rng.integers(0, num_classes, count), FOREIGN_ID_START + rows,
                   np.array([f"foreign:{kind}/{s}" for s in sources[rows]], dtype=object), files)
