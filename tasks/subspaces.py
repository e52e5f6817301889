"""Task of the `subspaces` flow: one method at one label-noise level, every seed trained together on the training set
less its validation split, evaluated after every epoch (its model, SWA's average, a subspace's midpoint) on the
validation split and the test set, then along its path, at its midpoint and at its ends (standard training: each
seed's model and its ensembles; SWA: each seed's averaged model), and at its best validation epoch."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from torch import Tensor

from core.config import derive_seed
from core.data.datasets import Dataset
from core.methods.subspace_epochs import (EPOCH_CALIBRATION_EXAMPLES, EPOCH_COLUMNS, EpochEvaluation, best_epochs,
                                          validation_split)
from core.methods.subspaces import (SubspaceTraining, calibration, end_coefficients, ensemble_sizes,
                                    midpoint_coefficients, path_coefficients)
from core.models.names import METHODS, STANDARD, SWA
from core.models.subspaces import fix_coefficients
from core.runs.store import RunStore
from core.runtime import resolve_device
from core.training.averaging import StackedWeightAveraging
from core.training.ensemble import Ensemble, predict_probabilities
from core.training.hooks import TrainingHooks
from core.training.experiment import DRAW_STREAM, INIT_STREAM, MEMBER_STREAM, ORDER_STREAM, model_seed
from core.training.recalibration import recalibrate_batchnorm
from core.training.trainer import train
from tasks.common import compute_once, task_dataset


ALPHA_SHARDS, EPOCH_SHARDS, SUMMARY_SHARDS = "shards/alpha/", "shards/epochs/", "shards/summary/"
SUMMARY_COLUMNS = ["method", "endpoints", "noise", "seed", "point", "members", "accuracy", "confidence", "ece"]


def shard_names(method: str, noise: float) -> list[str]:
    """The tables of one method at one noise level: its points along alpha (none for standard or SWA), its rows
    after each epoch, its summary rows."""
    stem = f"{method}-noise{noise:g}.parquet"
    return ([] if method in (STANDARD, SWA) else [ALPHA_SHARDS + stem]) + [EPOCH_SHARDS + stem, SUMMARY_SHARDS + stem]


@task(cache_policy=NO_CACHE, task_run_name="subspace-{method}-noise{noise}")
def train_method(store: RunStore, method: str, noise: float) -> list[str]:
    """Train and evaluate every seed of `method` on labels with `noise`; skipped when its tables exist."""
    names = shard_names(method, noise)
    compute_once(store, names, lambda: _train_and_evaluate(store, method, noise, names))
    return names


def _train_and_evaluate(store: RunStore, method: str, noise: float, names: list[str]) -> None:
    """The body of `train_method`."""
    config, start = store.config, time.perf_counter()
    dataset = task_dataset(store, config.dataset.model_copy(update={"label_noise": noise}))
    seeds = [model_seed(config.seed, s) for s in config.seeds]
    held_out = validation_split(dataset.n_train, config.validation_fraction, config.dataset.seed)
    if method == STANDARD:
        summary, epochs = _standard(store, dataset, held_out, seeds)
    elif method == SWA:
        summary, epochs = _swa(store, dataset, held_out, seeds)
    else:
        alpha, summary, epochs = _subspace(store, dataset, held_out, method, seeds)
        store.write_table(names[0], alpha.assign(noise=noise)[["method", "alpha", "noise", "seed", "accuracy", "ece"]])
    epochs = epochs.assign(method=method, noise=noise)[["method", "noise", *EPOCH_COLUMNS, "train_seconds"]]
    store.write_table(names[-2], epochs)
    best = best_epochs(epochs)
    best = best.assign(point=best["point"] + "_best", members=1, endpoints=int(summary["endpoints"].iloc[0]))
    summary = pd.concat([summary.assign(method=method, noise=noise), best], ignore_index=True)
    store.write_table(names[-1], summary[SUMMARY_COLUMNS])
    model = summary[summary["point"].isin(["model", "midpoint"])]
    get_run_logger().info("%s at label noise %g: %d seeds, accuracy %.4f, ECE %.4f, %.1f s", method, noise,
                          len(model), model["accuracy"].mean(), model["ece"].mean(), time.perf_counter() - start)


def _trained(store: RunStore, dataset: Dataset, held_out: Tensor, name: str, seeds: list[int],
             method: str | None = None, every: int = 1) -> tuple[Ensemble, pd.DataFrame]:
    """Models `name` of `seeds`, trained together on the training set less the validation split `held_out` (a
    subspace `method` draws its points every step; SWA returns each model's average, BatchNorm statistics recomputed
    there from the examples trained on), and their rows after each epoch: of every `every`-th model (one per seed),
    at its weights, its running average (SWA, from swa_start on) or its midpoint (a subspace), with the epoch's
    training seconds (its steps alone) over the models trained together (`train_seconds`, per model)."""
    config, fit = store.config, ~held_out
    ensemble = Ensemble.init(name, dataset.input_shape, dataset.num_classes,
                             [derive_seed(s, INIT_STREAM) for s in seeds], resolve_device(config.runtime.device),
                             config.runtime.precision)
    hooks, schedule, averaging, at = TrainingHooks(), config.train, None, {}
    if method == SWA:
        schedule = config.swa_train()
        averaging = StackedWeightAveraging(ensemble, schedule)
        at = {"params": averaging.mean, "first_epoch": averaging.start}
    elif method is not None:
        kind, m, layerwise = METHODS[method]
        draws = [derive_seed(s, DRAW_STREAM) for s in seeds]
        subspace = SubspaceTraining(ensemble, kind, draws, layerwise, config.beta)
        hooks, at = subspace.hooks(), {"coefficients": midpoint_coefficients(kind, m)}
    evaluation = EpochEvaluation(ensemble, (dataset.x_train[held_out], dataset.y_train[held_out]),
                                 (dataset.x_test, dataset.y_test), store.config.seeds,
                                 "model" if method in (None, SWA) else "midpoint", list(range(0, len(seeds), every)),
                                 calibration_x=dataset.x_train[fit][:EPOCH_CALIBRATION_EXAMPLES],
                                 batch_size=config.train.batch_size, **at)

    seconds, clock = {}, {"start": time.perf_counter()}

    def after_epoch(epoch: int) -> None:
        """SWA's running mean first (part of its training, and timed with it), so that the evaluation sees this
        epoch's average; the evaluation outside the epoch's timing."""
        if averaging is not None:
            averaging.epoch(epoch)
        seconds[epoch + 1] = time.perf_counter() - clock["start"]  # the trainer synchronised (its epoch losses)
        evaluation.epoch(epoch)
        clock["start"] = time.perf_counter()

    trained_on = fit.expand(len(seeds), -1).clone()
    train(ensemble, dataset.x_train, dataset.y_train, trained_on, [derive_seed(s, ORDER_STREAM) for s in seeds],
          schedule, hooks=TrainingHooks(hooks.step, hooks.regularizer, after_epoch))
    if averaging is not None:
        averaging.apply(dataset.x_train[fit], config.train.batch_size)
    epochs = evaluation.table()
    return ensemble, epochs.assign(train_seconds=epochs["epoch"].map(seconds) / ensemble.size)


def _probabilities(ensemble: Ensemble, dataset: Dataset, fit: Tensor, batch_size: int,
                   coefficients: Tensor | None = None) -> Tensor:
    """`[K, N, C]` test predictions of every model (at the subspace point `coefficients`), with BatchNorm statistics
    recomputed there from the examples trained on (`fit`)."""
    if coefficients is not None:
        fix_coefficients(ensemble.template, coefficients)
    recalibrate_batchnorm(ensemble, dataset.x_train[fit], batch_size)
    return predict_probabilities(ensemble, dataset.x_test)


def _rows(seeds: list[int], point: str, members: int, probs: Tensor, labels: Tensor, **columns) -> pd.DataFrame:
    """One summary row per seed of predictions `[S, N, C]`."""
    accuracy, confidence, ece = calibration(probs, labels)
    return pd.DataFrame({"seed": seeds, "point": point, "members": members, "accuracy": accuracy.numpy(),
                         "confidence": confidence.numpy(), "ece": ece.numpy(), **columns})


def _standard(store: RunStore, dataset: Dataset, held_out: Tensor, seeds: list[int]) -> tuple[pd.DataFrame,
                                                                                               pd.DataFrame]:
    """Summary rows of standard training: each seed's model, and its ensembles with the seed's other members; the
    rows of each seed's model after each epoch."""
    config, sizes = store.config, ensemble_sizes(store.config.methods)
    members = [s if j == 0 else derive_seed(s, MEMBER_STREAM, j) for s in seeds for j in range(sizes[-1])]
    ensemble, epochs = _trained(store, dataset, held_out, config.model, members, every=sizes[-1])
    probs = _probabilities(ensemble, dataset, ~held_out, config.train.batch_size).unflatten(0, (len(seeds), sizes[-1]))
    parts = [_rows(config.seeds, "model", 1, probs[:, 0], dataset.y_test)]
    parts += [_rows(config.seeds, "ensemble", n, probs[:, :n].mean(1), dataset.y_test) for n in sizes]
    return pd.concat(parts, ignore_index=True).assign(endpoints=1), epochs


def _swa(store: RunStore, dataset: Dataset, held_out: Tensor, seeds: list[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Summary rows of SWA: each seed's plain network, initialised and shuffled as standard training's model of that
    seed, evaluated at its average (point "model", like standard training's); the rows of its average after each
    epoch from swa_start on (before, its weights are standard training's)."""
    config = store.config
    ensemble, epochs = _trained(store, dataset, held_out, config.model, seeds, SWA)
    probs = predict_probabilities(ensemble, dataset.x_test)  # BatchNorm already recomputed at the average
    return _rows(config.seeds, "model", 1, probs, dataset.y_test).assign(endpoints=1), epochs


def _subspace(store: RunStore, dataset: Dataset, held_out: Tensor, method: str,
              seeds: list[int]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Rows along the path (alpha), summary rows (the midpoint, the mean of the ends, the ends' ensemble), and the
    midpoint's rows after each epoch."""
    config, (kind, m, _) = store.config, METHODS[method]
    ensemble, epochs = _trained(store, dataset, held_out, f"subspace{m}_{config.model}", seeds, method)
    evaluated: dict[tuple[float, ...], Tensor] = {}

    def at(coefficients: Tensor) -> Tensor:
        """Predictions at a point, computed once: a line's ends and midpoint, a curve's ends, a simplex's first two
        vertices are points of the path too, and each costs a pass over the training set for BatchNorm."""
        key = tuple(coefficients.tolist())
        if key not in evaluated:
            evaluated[key] = _probabilities(ensemble, dataset, ~held_out, config.train.batch_size, coefficients)
        return evaluated[key]

    alphas = np.linspace(0.0, 1.0, config.alpha_points).round(12)
    path = [_rows(config.seeds, "path", 1, at(c), dataset.y_test, alpha=a)
            for a, c in zip(alphas, path_coefficients(kind, m, torch.tensor(alphas, dtype=torch.float32)))]
    ends = torch.stack([at(c) for c in end_coefficients(kind, m)])  # [E, S, N, C]
    end_rows = pd.concat([_rows(config.seeds, "end", 1, probs, dataset.y_test) for probs in ends])
    mean_end = (end_rows.groupby("seed", as_index=False)[["accuracy", "confidence", "ece"]].mean()
                .assign(point="endpoint", members=1))
    summary = [_rows(config.seeds, "midpoint", 1, at(midpoint_coefficients(kind, m)), dataset.y_test), mean_end,
               _rows(config.seeds, "ensemble", len(ends), ends.mean(0), dataset.y_test)]
    summary = pd.concat(summary, ignore_index=True).assign(endpoints=m)
    return pd.concat(path, ignore_index=True).assign(method=method), summary, epochs
