"""Which dataset a run reads and how it is subset, normalised and corrupted: the config group alone, without torch,
so that configs validate (and `regularity config` prints) without loading the data stack."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from core.config import ADDED_SETTING, Config

ID_FILE_SUFFIXES = (".csv", ".parquet", ".pq")  # dataset.noisy_ids ending so names a file of ids


def names_a_file(noisy_ids: str) -> bool:
    """Whether a dataset.noisy_ids value is the path of a file of ids (else the name of an array or column)."""
    return noisy_ids.lower().endswith(ID_FILE_SUFFIXES)


DatasetName = Literal["mnist1d", "digits", "synthetic", "fashion_mnist", "cifar10", "cifar100", "image_folder",
                      "arrays"]


class DatasetConfig(Config):
    """Which dataset to load and how to subset, normalise and corrupt it."""

    name: DatasetName = Field("digits", description=(
        "Dataset. mnist1d, digits and synthetic are generated/bundled locally (synthetic: scikit-learn's "
        "make_classification, 10,000 examples of 20 features in 4 classes, 80% train); fashion_mnist reads the IDX "
        "files of the Debian package dataset-fashion-mnist; cifar10/cifar100, image_folder and arrays read your "
        "files at `path`."))
    path: str | None = Field(None, description=(
        "Where the files are. fashion_mnist: folder of the IDX .gz files (default "
        "/usr/share/datasets/fashion-mnist). cifar10/cifar100: folder containing cifar-10-batches-py/ or "
        "cifar-100-python/ (or that folder itself). image_folder: folder with train/CLASS_NAME/ and "
        "test/CLASS_NAME/ image folders (8-bit grayscale images stay 1 channel; any colour image makes all RGB). "
        "arrays: an .npz (x_train, y_train, x_test, y_test, optional "
        "class_names, train_ids, test_ids) or a Parquet file (columns split, label, and a list column "
        "`features` or numeric columns f0..fN; optional example_id). Unused by mnist1d and digits."))
    n_train: int | None = Field(None, ge=1, description=(
        "Number of training examples: a seeded random subset, kept in example-id order. Empty = all."))
    n_test: int | None = Field(None, ge=1, description=(
        "Number of test examples: a seeded random subset, kept in example-id order. Empty = all."))
    normalize: bool = Field(True, description=(
        "Standardise features with the training split's mean and std (per channel for images "
        "[N, C, H, W], one scalar otherwise), applied to both splits."))
    label_noise: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "Fraction in [0, 1) of training labels replaced by a wrong class; exactly "
        "round(label_noise * n_train) examples. Test labels are never changed."))
    noise_kind: Literal["uniform", "pair"] = Field("uniform", description=(
        "How a corrupted label is chosen: uniform = a uniformly random different class; "
        "pair = class c becomes (c + 1) mod C."))
    seed: int = Field(0, ge=0, description=(
        "Random seed for the subsets, the digits train/test split, MNIST-1D generation and label noise."))
    mnist1d_samples: int = Field(5000, ge=10, le=1_000_000, description=(
        "mnist1d only: total generated examples (rounded down to a multiple of 10), 80% train / 20% test."))
    digits_test_fraction: float = Field(0.2, ge=0.01, le=0.99, description=(
        "digits only: fraction of the 1,797 examples held out as the stratified test split."))
    noisy_ids: Annotated[str | None, ADDED_SETTING] = Field(None, description=(
        "Training examples you know are mislabeled, so that the cscore and proxies flows measure how well each "
        "score finds them (noise_detection.parquet): the path of a .csv or .parquet file with a column example_id "
        "(or a single column) of their ids, or a column source of their places in your files (an image's path "
        "relative to path, e.g. train/CLASS_NAME/0042.png), or, for arrays, the name of an array of your .npz (example ids, or one "
        "bool per row of x_train) or of a bool column of your Parquet file (true = wrong label). Their labels stay "
        "as given; true_label is -1 (unknown). Empty = none. Not with label_noise."))

    foreign: Annotated[Literal["none", "digits", "fashion_mnist", "noise"], ADDED_SETTING] = Field("none", description=(
        "Out-of-distribution examples mixed into the training split, each with a uniformly random label, marked in "
        "the column is_foreign of examples.parquet and cscores.parquet (ids from 1,000,000,000 on, source "
        "foreign:...): digits (scikit-learn's 8x8 digits) or fashion_mnist (Fashion-MNIST's training images, from "
        "path's default folder) resized to this dataset's image size, or noise (each feature uniform between its "
        "smallest and largest training value: any dataset). none = no foreign examples."))
    foreign_fraction: Annotated[float, ADDED_SETTING] = Field(0.0, ge=0.0, le=1.0, description=(
        "How many foreign examples: round(foreign_fraction x n_train) are added to the n_train examples (0.1 adds "
        "10%, a 9% share of the mixed split). Needs foreign."))

    @field_validator("noisy_ids")
    @classmethod
    def _blank_is_none(cls, noisy_ids: str | None) -> str | None:
        """A blank form field means no ids (and the run id of a config without them)."""
        return (noisy_ids or "").strip() or None

    @model_validator(mode="after")
    def _foreign_from_elsewhere(self) -> "DatasetConfig":
        if (self.foreign == "none") != (self.foreign_fraction == 0):
            raise ValueError(f"foreign={self.foreign!r} and foreign_fraction={self.foreign_fraction} go together: set "
                             "both (e.g. foreign: noise, foreign_fraction: 0.05) or neither")
        if self.foreign == self.name:
            raise ValueError(f"foreign={self.foreign!r} is the dataset itself: its examples would not be foreign; "
                             "choose another source or noise")
        return self

    @model_validator(mode="after")
    def _one_kind_of_noise(self) -> "DatasetConfig":
        if self.noisy_ids and self.label_noise > 0:
            raise ValueError(f"noisy_ids={self.noisy_ids!r} and label_noise={self.label_noise} cannot be combined: "
                             "detection is measured on one set of mislabeled examples; set label_noise to 0")
        if self.noisy_ids and not names_a_file(self.noisy_ids) and self.name != "arrays":
            raise ValueError(f"noisy_ids={self.noisy_ids!r} names an array or column of the dataset file, which only "
                             f"name=arrays has; for {self.name} give the path of a .csv or .parquet file of example "
                             "ids")
        return self
