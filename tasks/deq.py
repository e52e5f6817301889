"""Task of the `deq` flow: one Jacobian-regularisation strength gamma, every seed's DEQ trained together, with the
solver's figures, ||J_f||_F, the spectral radius and capped-inference accuracy recorded after every epoch."""
from __future__ import annotations

import time

import pandas as pd
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.config import derive_seed
from core.methods.deq import JacobianRegularization, capped_inference, deq_layers, probe
from core.models.deq import SolverLog
from core.runs.store import RunStore
from core.runtime import resolve_device
from core.training.ensemble import Ensemble
from core.training.experiment import DRAW_STREAM, INIT_STREAM, MONITOR_STREAM, ORDER_STREAM, model_seed
from core.training.trainer import train
from tasks.common import compute_once, task_dataset

EPOCH_SHARDS, INFERENCE_SHARDS = "shards/epochs/", "shards/inference/"
SOLVES = [f"{direction}_{field}" for direction in ("forward", "backward") for field in SolverLog.FIELDS]
EPOCH_COLUMNS = ["gamma", "seed", "epoch", "train_loss", *(f"train_{name}" for name in SOLVES), "accuracy", *SOLVES,
                 "jacobian_frobenius", "spectral_radius", "epoch_seconds"]
INFERENCE_COLUMNS = ["gamma", "seed", "epoch", "cap", "accuracy", "residual"]


def shard_names(gamma: float) -> list[str]:
    """The tables of one gamma: its per-epoch figures, its capped-inference accuracy."""
    return [f"{folder}gamma{gamma:g}.parquet" for folder in (EPOCH_SHARDS, INFERENCE_SHARDS)]


@task(cache_policy=NO_CACHE, task_run_name="deq-gamma{gamma}")
def train_gamma(store: RunStore, gamma: float) -> list[str]:
    """Train and monitor every seed's DEQ at regularisation strength `gamma`; skipped when its tables exist."""
    names = shard_names(gamma)
    compute_once(store, names, lambda: _train_and_monitor(store, gamma, names))
    return names


def _train_and_monitor(store: RunStore, gamma: float, names: list[str]) -> None:
    """The body of `train_gamma`."""
    config, start = store.config, time.perf_counter()
    dataset = task_dataset(store)
    seeds = [model_seed(config.seed, s) for s in config.seeds]
    ensemble = Ensemble.init(config.model, dataset.input_shape, dataset.num_classes,
                             [derive_seed(s, INIT_STREAM) for s in seeds], resolve_device(config.runtime.device),
                             config.runtime.precision)
    (layer,) = deq_layers(ensemble.template)
    solver = config.solver
    layer.solver, layer.tol, layer.max_iter = solver.name, solver.tol, solver.max_iter
    layer.backward_tol, layer.backward_max_iter = solver.backward_tol, solver.backward_max_iter
    layer.log = SolverLog()
    penalty = JacobianRegularization(ensemble, gamma, [derive_seed(s, DRAW_STREAM) for s in seeds],
                                     config.penalty.fraction, config.penalty.samples)
    monitor = config.monitor
    x_probe, y_probe = dataset.x_test[: monitor.examples], dataset.y_test[: monitor.examples]
    epochs, inference, clock, logger = [], [], {"start": time.perf_counter()}, get_run_logger()

    def after_epoch(epoch: int) -> None:
        """Record the epoch's training solves and probe the models, outside the epoch's timing."""
        seconds = time.perf_counter() - clock["start"]
        training = {f"train_{name}": value for name, value in layer.log.means().items()}
        # the same probes at every gamma: one seed per epoch
        generator = torch.Generator().manual_seed(derive_seed(config.seed, MONITOR_STREAM, epoch))
        figures = probe(ensemble, x_probe, y_probe, monitor.samples, monitor.power_iters, generator)
        accuracy, residual = capped_inference(ensemble, x_probe, y_probe, monitor.caps)
        epochs.append(pd.DataFrame({"seed": config.seeds, "epoch": epoch + 1, **training, **figures,
                                    "epoch_seconds": seconds}))
        inference.append(pd.DataFrame({"seed": config.seeds * len(monitor.caps), "epoch": epoch + 1,
                                       "cap": [c for c in monitor.caps for _ in config.seeds],
                                       "accuracy": accuracy.flatten().numpy(), "residual": residual.flatten().numpy()}))
        logger.info("gamma %g, epoch %d/%d: %.1f s, %.1f forward and %.1f backward steps, accuracy %.4f", gamma,
                    epoch + 1, config.train.epochs, seconds, training["train_forward_steps"].mean(),
                    training["train_backward_steps"].mean(), figures["accuracy"].mean())
        layer.log = SolverLog()
        clock["start"] = time.perf_counter()

    everything = torch.ones(len(seeds), dataset.n_train, dtype=torch.bool)
    result = train(ensemble, dataset.x_train, dataset.y_train, everything, [derive_seed(s, ORDER_STREAM) for s in seeds],
                   config.train, hooks=penalty.hooks(after_epoch))
    table = pd.concat(epochs, ignore_index=True).assign(gamma=gamma, train_loss=result.losses.T.flatten().numpy())
    store.write_table(names[0], table[EPOCH_COLUMNS])
    store.write_table(names[1], pd.concat(inference, ignore_index=True).assign(gamma=gamma)[INFERENCE_COLUMNS])
    last = table[table["epoch"] == config.train.epochs]
    logger.info("gamma %g: %d seeds, accuracy %.4f, forward steps %.1f, ||J||_F^2/d %.4f, %.1f s", gamma, len(seeds),
                last["accuracy"].mean(), last["forward_steps"].mean(), last["jacobian_frobenius"].mean(),
                time.perf_counter() - start)
