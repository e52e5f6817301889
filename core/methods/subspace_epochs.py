"""Early stopping for the subspaces flow: a validation split held out of the training set, every arm evaluated after
each epoch on it and on the test set (train()'s epoch hook), and each arm's best validation epoch.

The validation split keeps the training labels' noise, as a user's own validation set would: early stopping may only
look at what a user could see. The test set stays clean.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pandas as pd
import torch
from torch import Tensor

from core.config import derive_seed
from core.methods.subspaces import calibration
from core.models.subspaces import fix_coefficients, subspace_layers
from core.training.ensemble import Ensemble, predict_probabilities
from core.training.recalibration import recalibrate_batchnorm

VALIDATION_STREAM = 100  # derive_seed key of the validation split; core.training.experiment's streams are 0-7
EPOCH_CALIBRATION_EXAMPLES = 2048  # training examples that recompute BatchNorm at a point each epoch (not all: cost)
EPOCH_COLUMNS = ["seed", "epoch", "point", "validation_accuracy", "accuracy", "confidence", "ece"]
BEST_KEYS = ["method", "noise", "seed", "point"]


def validation_split(n_train: int, fraction: float, dataset_seed: int) -> Tensor:
    """Bool `[n_train]`, True for the round(fraction * n_train) training examples held out for validation: the first
    of a random permutation drawn from `dataset_seed` alone, so every arm, model seed and noise level of a run holds
    out the same examples."""
    held_out = round(fraction * n_train)
    if not 1 <= held_out < n_train:
        raise ValueError(f"validation_fraction={fraction} of {n_train} training examples holds out {held_out}; it must "
                         "hold out at least one and leave the rest to train on: change validation_fraction")
    generator = torch.Generator().manual_seed(derive_seed(dataset_seed, VALIDATION_STREAM))
    order = torch.randperm(n_train, generator=generator)
    mask = torch.zeros(n_train, dtype=torch.bool)
    mask[order[:held_out]] = True
    return mask


@contextmanager
def evaluated_point(ensemble: Ensemble, params: dict[str, Tensor] | None = None, coefficients: Tensor | None = None,
                    calibration_x: Tensor | None = None, batch_size: int = 128) -> Iterator[Ensemble]:
    """`ensemble` with `params` in place of its parameters (e.g. a running average) and its subspace layers at
    `coefficients` (`[m]`), BatchNorm statistics recomputed there from `calibration_x` when either is given; its
    parameters, buffers and coefficients are restored afterwards, bit for bit."""
    saved_params = {name: p.detach().clone() for name, p in ensemble.params.items()} if params is not None else {}
    saved_buffers = {name: b.clone() for name, b in ensemble.buffers.items()}
    layers = subspace_layers(ensemble.template) if coefficients is not None else []
    saved_coefficients = [layer.coefficients for layer in layers]
    try:
        with torch.no_grad():
            for name, value in (params or {}).items():
                ensemble.params[name].copy_(value)
            if coefficients is not None:
                fix_coefficients(ensemble.template, coefficients)
            if params is not None or coefficients is not None:
                recalibrate_batchnorm(ensemble, calibration_x, batch_size)
        yield ensemble
    finally:
        with torch.no_grad():
            for name, value in saved_params.items():
                ensemble.params[name].copy_(value)
            for name, value in saved_buffers.items():
                ensemble.buffers[name].copy_(value)
        for layer, c in zip(layers, saved_coefficients):
            layer.coefficients = c


class EpochEvaluation:
    """train()'s epoch hook: after each epoch from `first_epoch` (0-based) on, the validation accuracy and the test
    accuracy, mean confidence and ECE of the models `models` (one per seed of `seeds`; default all), evaluated at
    `params` / `coefficients` as `evaluated_point` takes them (default: the weights being trained); see `table()`."""

    def __init__(self, ensemble: Ensemble, validation: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
                 seeds: list[int], point: str, models: list[int] | None = None, first_epoch: int = 0,
                 params: dict[str, Tensor] | None = None, coefficients: Tensor | None = None,
                 calibration_x: Tensor | None = None, batch_size: int = 128):
        self.ensemble, self.validation, self.test, self.seeds, self.point = ensemble, validation, test, seeds, point
        self.models = list(range(ensemble.size)) if models is None else models
        self.first_epoch, self.params, self.coefficients = first_epoch, params, coefficients
        self.calibration_x, self.batch_size = calibration_x, batch_size
        self.rows: list[pd.DataFrame] = []

    def epoch(self, epoch: int) -> None:
        """Evaluate after `epoch` (0-based); rows carry `epoch + 1`, the epochs trained."""
        if epoch < self.first_epoch:
            return
        with evaluated_point(self.ensemble, self.params, self.coefficients, self.calibration_x, self.batch_size), \
                torch.no_grad():
            validation = predict_probabilities(self.ensemble, self.validation[0])[self.models]
            test = predict_probabilities(self.ensemble, self.test[0])[self.models]
        validation_accuracy = (validation.argmax(-1) == self.validation[1]).double().mean(1)
        accuracy, confidence, ece = calibration(test, self.test[1])
        self.rows.append(pd.DataFrame({"seed": self.seeds, "epoch": epoch + 1, "point": self.point,
                                       "validation_accuracy": validation_accuracy.numpy(), "accuracy": accuracy.numpy(),
                                       "confidence": confidence.numpy(), "ece": ece.numpy()}))

    def table(self) -> pd.DataFrame:
        """Every row so far, EPOCH_COLUMNS, in epoch then seed order."""
        return pd.concat(self.rows, ignore_index=True) if self.rows else pd.DataFrame(columns=EPOCH_COLUMNS)


def best_epochs(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per (method, noise, seed, point) of subspace_epochs.parquet's rows: the row of the highest validation accuracy,
    the earliest epoch on a tie (a user stops at the first best)."""
    ordered = epochs.sort_values([*BEST_KEYS, "epoch"], kind="stable")
    best = ordered.groupby(BEST_KEYS, sort=True)["validation_accuracy"].idxmax()  # the first of a tie, in epoch order
    return ordered.loc[best.to_numpy()].reset_index(drop=True)
