"""Tasks of the `deq` flow: one Jacobian-regularisation strength gamma, every seed's DEQ trained together, with the
solver's figures, ||J_f||_F, the spectral radius and capped-inference accuracy recorded after every epoch; one explicit
baseline (core.models.unrolled) of one depth, every seed trained together, its accuracy recorded after every epoch.
Each arm then measures its models' costs one by one (core.methods.deq_costs)."""
from __future__ import annotations

import time

import pandas as pd
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.config import derive_seed
from core.methods.deq import JacobianRegularization, capped_inference, deq_layers, probe, solver_settings
from core.methods.deq_costs import model_costs
from core.models.fixed_point import SolverLog
from core.runs.store import RunStore
from core.runtime import resolve_device
from core.models.names import parse_model_name
from core.training.ensemble import Ensemble, example_outcomes
from core.training.experiment import DRAW_STREAM, INIT_STREAM, MONITOR_STREAM, ORDER_STREAM, model_seed
from core.training.hooks import TrainingHooks
from core.training.trainer import train
from tasks.common import compute_once, task_dataset

EPOCH_SHARDS, INFERENCE_SHARDS = "shards/epochs/", "shards/inference/"
BASELINE_SHARDS, COST_SHARDS = "shards/baselines/", "shards/costs/"
SOLVES = [f"{direction}_{field}" for direction in ("forward", "backward") for field in SolverLog.FIELDS]
EPOCH_COLUMNS = ["gamma", "seed", "epoch", "train_loss", *(f"train_{name}" for name in SOLVES), "accuracy", *SOLVES,
                 "jacobian_frobenius", "spectral_radius", "epoch_seconds"]
INFERENCE_COLUMNS = ["gamma", "seed", "epoch", "cap", "accuracy", "residual"]
BASELINE_COLUMNS = ["network", "depth", "seed", "epoch", "train_loss", "accuracy", "epoch_seconds"]
COST_COLUMNS = ["network", "gamma", "depth", "seed", "parameters", "accuracy", "epoch_seconds", "inference_seconds",
                "step_memory_bytes", "memory_method"]
DEQ_NETWORK = "deq"  # the `network` of the DEQ's rows in deq_costs.parquet (its `depth`: 0, none fixed)


def baseline_names(network: str, depth: int) -> list[str]:
    """The tables of one explicit baseline: its per-epoch figures, its models' costs."""
    return [f"{BASELINE_SHARDS}{network}{depth}.parquet", f"{COST_SHARDS}{network}{depth}.parquet"]


def shard_names(gamma: float) -> list[str]:
    """The tables of one gamma: its per-epoch figures, its capped-inference accuracy, its models' costs."""
    return [f"{folder}gamma{gamma:g}.parquet" for folder in (EPOCH_SHARDS, INFERENCE_SHARDS, COST_SHARDS)]


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

    def penalty_of(one: Ensemble, k: int):
        """Model k's loss term in a penalised step (every step penalised), or None at gamma 0."""
        if gamma == 0:
            return None
        alone = JacobianRegularization(one, gamma, [derive_seed(seeds[k], DRAW_STREAM)], 1.0, config.penalty.samples)

        def penalised(params: dict[str, torch.Tensor]) -> torch.Tensor:
            alone.step(torch.ones(1, dtype=torch.bool))  # fraction 1: this step carries the penalty
            return alone.regularizer(params)
        return penalised

    with solver_settings([layer], log=None):
        costs = model_costs(ensemble, dataset.x_train[: config.train.batch_size],
                            dataset.y_train[: config.train.batch_size], dataset.x_test, config.train.batch_size,
                            penalty_of)
    store.write_table(names[2], cost_table(DEQ_NETWORK, gamma, 0, table, costs))
    logger.info("gamma %g: %d seeds, accuracy %.4f, forward steps %.1f, ||J||_F^2/d %.4f, %.1f s", gamma, len(seeds),
                last["accuracy"].mean(), last["forward_steps"].mean(), last["jacobian_frobenius"].mean(),
                time.perf_counter() - start)


def cost_table(network: str, gamma: float, depth: int, epochs: pd.DataFrame, costs: dict[str, list]) -> pd.DataFrame:
    """One arm's deq_costs rows: per seed, the last epoch's accuracy, the mean epoch seconds and `costs`."""
    per_seed = epochs.sort_values("epoch").groupby("seed").agg(accuracy=("accuracy", "last"),
                                                               epoch_seconds=("epoch_seconds", "mean"))
    table = per_seed.reset_index().assign(network=network, gamma=gamma, depth=depth, **costs)
    return table[COST_COLUMNS]


@task(cache_policy=NO_CACHE, task_run_name="deq-{network}{depth}")
def train_baseline(store: RunStore, network: str, depth: int) -> list[str]:
    """Train every seed's explicit baseline `network` ("unrolled" or "explicit") of `depth` cells at the DEQ's width;
    skipped when its tables exist."""
    names = baseline_names(network, depth)
    compute_once(store, names, lambda: _train_baseline(store, network, depth, names))
    return names


def _train_baseline(store: RunStore, network: str, depth: int, names: list[str]) -> None:
    """The body of `train_baseline`: the DEQs' seeds, data, batch orders and epochs, without a regulariser."""
    config, start = store.config, time.perf_counter()
    dataset = task_dataset(store)
    seeds = [model_seed(config.seed, s) for s in config.seeds]
    name = f"{network}{depth}_w{parse_model_name(config.model).width}"
    ensemble = Ensemble.init(name, dataset.input_shape, dataset.num_classes,
                             [derive_seed(s, INIT_STREAM) for s in seeds], resolve_device(config.runtime.device),
                             config.runtime.precision)
    x_probe, y_probe = dataset.x_test[: config.monitor.examples], dataset.y_test[: config.monitor.examples]
    epochs, clock = [], {"start": time.perf_counter()}

    def after_epoch(epoch: int) -> None:
        """Record the epoch's seconds and the accuracy on the DEQ's probed examples, outside the epoch's timing."""
        seconds = time.perf_counter() - clock["start"]
        with torch.no_grad():
            correct = example_outcomes(ensemble(x_probe, shared=True), y_probe.to(ensemble.device))[0]
        epochs.append(pd.DataFrame({"seed": config.seeds, "epoch": epoch + 1,
                                    "accuracy": correct.double().mean(-1).cpu().numpy(), "epoch_seconds": seconds}))
        clock["start"] = time.perf_counter()

    everything = torch.ones(len(seeds), dataset.n_train, dtype=torch.bool)
    orders = [derive_seed(s, ORDER_STREAM) for s in seeds]
    result = train(ensemble, dataset.x_train, dataset.y_train, everything, orders, config.train,
                   hooks=TrainingHooks(epoch=after_epoch))
    table = pd.concat(epochs, ignore_index=True).assign(network=network, depth=depth,
                                                        train_loss=result.losses.T.flatten().numpy())
    store.write_table(names[0], table[BASELINE_COLUMNS])
    batch = config.train.batch_size
    costs = model_costs(ensemble, dataset.x_train[:batch], dataset.y_train[:batch], dataset.x_test, batch)
    store.write_table(names[1], cost_table(network, float("nan"), depth, table, costs))
    get_run_logger().info("%s: %d seeds, accuracy %.4f, %.1f s", name, len(seeds),
                          table[table["epoch"] == config.train.epochs]["accuracy"].mean(), time.perf_counter() - start)
