"""Task of the `weight_correlation` flow: every learning rate and seed in one pass, the dense run first, then
the four methods round by round; each finished round is kept and skipped on re-run."""
from __future__ import annotations

import time

import pandas as pd
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.config import derive_seed
from core.methods.pruning import dense_masks, density, prunable_names, prune, rewind
from core.methods.weight_correlation import (METHODS, budget, correlation_names, mask_sources, starting_points,
                                             weight_correlation)
from core.runs.store import RunStore
from core.runtime import resolve_device
from core.training.ensemble import Ensemble, evaluate
from core.training.experiment import INIT_STREAM, ORDER_STREAM, REINIT_STREAM, model_seed
from core.training.trainer import train
from tasks.common import task_dataset, waiting

CORRELATION = "weight_correlation.parquet"


def round_names(level: int) -> tuple[str, str]:
    """The accuracy table and the weights (state, masks, updates spent) of round `level` (0: the dense run)."""
    return f"shards/round-{level:02d}.parquet", f"weights/round-{level:02d}.safetensors"


class Sweep:
    """The base models of the pass: one per (learning rate, seed), learning-rate-major."""

    def __init__(self, learning_rates: list[float], seeds: list[int], run_seed: int):
        self.rows = [(lr, s) for lr in learning_rates for s in seeds]
        self.seeds = [model_seed(run_seed, s) for _, s in self.rows]
        self.lr = torch.tensor([lr for lr, _ in self.rows], dtype=torch.float64)

    def stream(self, stream: int) -> list[int]:
        """Each base model's seed of one random stream (initialisation, batch order, re-initialisation)."""
        return [derive_seed(s, stream) for s in self.seeds]

    def table(self, methods: list[str], densities, updates, accuracy) -> pd.DataFrame:
        """Rows of lt_vs_pf.parquet for an ensemble of `methods` (method-major) over all base models."""
        repeat = len(methods)
        return pd.DataFrame({"lr": [lr for lr, _ in self.rows] * repeat,
                             "method": [m for m in methods for _ in self.rows],
                             "density": densities, "seed": [s for _, s in self.rows] * repeat,
                             "updates": updates, "test_accuracy": accuracy})


def _state(saved: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors stored under `prefix/` (e.g. `state/0.weight` -> `0.weight`)."""
    return {n.split("/", 1)[1]: v for n, v in saved.items() if n.startswith(f"{prefix}/")}


def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`tensors` with names `prefix/<name>`, on the CPU."""
    return {f"{prefix}/{n}": v.detach().cpu() for n, v in tensors.items()}


@task(cache_policy=NO_CACHE, task_run_name="lottery-vs-fine-tuning")
def compare_methods(store: RunStore) -> list[str]:
    """Train dense at every learning rate, then prune and retrain by each method round by round; under the claim
    on the pass, so a second process running the same config waits for it instead of training it again."""
    with store.claim("comparison-pass", on_wait=waiting("the comparison pass")):
        return _compare(store)


def _dense_round(store: RunStore, sweep: Sweep, dataset, device) -> dict[str, torch.Tensor]:
    """Round 0: every base model trained dense (skipped when stored); its weights, rewind point and R_p table."""
    config, (table, weights) = store.config, round_names(0)
    store.remove_corrupt(table)
    saved = store.whole_tensors(weights) if store.is_complete(table) else None
    if saved is None:
        dense = Ensemble.init(config.model, dataset.input_shape, dataset.num_classes, sweep.stream(INIT_STREAM), device,
                              config.runtime.precision)
        everything = torch.ones(len(sweep.rows), dataset.n_train, dtype=torch.bool)
        result = train(dense, dataset.x_train, dataset.y_train, everything, sweep.stream(ORDER_STREAM),
                       config.train.model_copy(update={"lr": 1.0}), snapshot_step=config.pruning.rewind_step,
                       lr_scale=sweep.lr)  # the sweep's rates: 1.0 x each model's own
        saved = {**_prefixed("state", dense.state()), **_prefixed("rewind", result.snapshot), "updates": result.steps}
        store.write_tensors(weights, saved)
        accuracy = evaluate(dense, dataset.x_test, dataset.y_test).accuracy().double()
        store.write_table(table, sweep.table(["dense"], 1.0, result.steps.numpy(), accuracy.numpy()), built_from=[weights])
    store.remove_corrupt(CORRELATION)
    if not store.is_complete(CORRELATION, [weights]):
        store.write_table(CORRELATION, _correlations(store, sweep, dataset, _state(saved, "state")), built_from=[weights])
    return saved


def _correlations(store: RunStore, sweep: Sweep, dataset, trained: dict[str, torch.Tensor]) -> pd.DataFrame:
    """R_p of every base model at every p of the config, between its initialisation and its dense training."""
    config = store.config
    init = Ensemble.init(config.model, dataset.input_shape, dataset.num_classes, sweep.stream(INIT_STREAM))
    names = correlation_names(init.template, config.correlation, config.pruning.prune_output)
    r_p = {p: weight_correlation(init.state(), trained, names, p, config.correlation)
           for p in config.correlation_fractions}
    parts = [pd.DataFrame({"lr": sweep.lr.numpy(), "p": p, "r_p": r_p[p].numpy(),
                           "seed": [s for _, s in sweep.rows]}) for p in config.correlation_fractions]
    return pd.concat(parts, ignore_index=True).sort_values(["lr", "p", "seed"], ignore_index=True)


def _compare(store: RunStore) -> list[str]:
    """The body of `compare_methods`."""
    config, logger = store.config, get_run_logger()
    dataset, device, pruning = task_dataset(store), resolve_device(config.runtime.device), config.pruning
    sweep, repeat = Sweep(config.learning_rates, config.seeds, config.seed), len(METHODS)
    base = len(sweep.rows)
    start = time.perf_counter()
    dense = _dense_round(store, sweep, dataset, device)
    logger.info("dense round: %d models, %.1f s", base, time.perf_counter() - start)
    # every round sets all its parameters (rewind below): the initialisation here only supplies the layout
    ensemble = Ensemble.init(config.model, dataset.input_shape, dataset.num_classes, sweep.stream(INIT_STREAM) * repeat,
                             device, config.runtime.precision)
    reinit = Ensemble.init(config.model, dataset.input_shape, dataset.num_classes, sweep.stream(REINIT_STREAM))
    points = {"init": {n: v[:base] for n, v in ensemble.state().items()}, "rewind": _state(dense, "rewind"),
              "reinit": reinit.state()}
    state = {n: v.repeat(repeat, *[1] * (v.dim() - 1)) for n, v in _state(dense, "state").items()}
    names = prunable_names(ensemble.template, pruning.prune_output)
    masks, spent, written = dense_masks(state, names), dense["updates"].repeat(repeat), [round_names(0)[0]]
    everything = torch.ones(repeat * base, dataset.n_train, dtype=torch.bool)
    for level in range(1, pruning.levels + 1):
        (table, weights), previous = round_names(level), round_names(level - 1)[1]
        store.remove_corrupt(table)
        saved = store.whole_tensors(weights) if store.is_complete(table, [previous]) else None
        if saved is not None:
            state, masks, spent = _state(saved, "state"), _state(saved, "mask"), saved["updates"]
            written.append(table)
            continue
        start = time.perf_counter()
        pruned = prune(state, masks, pruning.prune_fraction, level, pruning.scope)  # each chain its own weights
        masks = {n: m[mask_sources(base).to(m.device)] for n, m in pruned.items()}
        rewind(ensemble, starting_points(points, state, base), masks)
        result = train(ensemble, dataset.x_train, dataset.y_train, everything, sweep.stream(ORDER_STREAM) * repeat,
                       config.train.model_copy(update={"lr": 1.0}), masks=masks, lr_scale=sweep.lr.repeat(repeat))
        state, spent = ensemble.state(), budget(spent, result.steps, base)
        store.write_tensors(weights, {**_prefixed("state", state), **_prefixed("mask", masks), "updates": spent}, [previous])
        accuracy = evaluate(ensemble, dataset.x_test, dataset.y_test).accuracy().double()
        store.write_table(table, sweep.table(list(METHODS), density(masks).numpy(), spent.numpy(), accuracy.numpy()),
                          built_from=[previous])
        written.append(table)
        means = " ".join(f"{m} {float(accuracy[i * base:(i + 1) * base].mean()):.4f}" for i, m in enumerate(METHODS))
        logger.info("round %d: density %.4f, mean test accuracy: %s; %.1f s", level, float(density(masks).mean()),
                    means, time.perf_counter() - start)
    return written
