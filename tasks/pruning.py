"""Task of the `prune_grid` flow: one network shape, all its seeds and data fractions, every pruning level."""
from __future__ import annotations

import time

import pandas as pd
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.config import derive_seed
from core.ensemble import Ensemble, evaluate, resolve_device
from core.experiment import INIT_STREAM, ORDER_STREAM, masked_row_mean, model_seed, subset_mask
from core.pruning import dense_masks, density, prunable_names, prune, remaining_parameters, rewind
from core.store import RunStore
from core.training import train
from tasks.common import task_dataset


def level_names(network: str, level: int) -> tuple[str, str]:
    """The error table and the weights (trained parameters and masks) of one level of one network."""
    return f"shards/{network}/level-{level:02d}.parquet", f"weights/{network}/level-{level:02d}.safetensors"


def fraction_subsets(n: int, fractions: list[float], run_seed: int) -> torch.Tensor:
    """Bool `[F, n]`: the training subset of each data fraction, shared by every shape and seed."""
    return torch.stack([subset_mask(n, max(1, round(f * n)), derive_seed(run_seed, 1000 + i)) for i, f in enumerate(fractions)])


def _errors(ensemble, masks, dataset, subsets, rows: dict) -> pd.DataFrame:
    """Train error (on each model's own subset), test error and loss, density, parameters left."""
    train_eval, test_eval = evaluate(ensemble, dataset.x_train, dataset.y_train), evaluate(ensemble, dataset.x_test, dataset.y_test)
    return pd.DataFrame({**rows, "density": density(masks).numpy(),
                         "params_remaining": remaining_parameters(ensemble.params, masks).numpy(),
                         "train_error": 1 - masked_row_mean(train_eval.correct, subsets), "test_error": 1 - test_eval.accuracy().numpy(),
                         "test_loss": test_eval.loss.mean(1).numpy()})


@task(cache_policy=NO_CACHE, task_run_name="prune-{network}")
def prune_network(store: RunStore, network: str, width: int, depth: int) -> list[str]:
    """Train dense, then prune, rewind and retrain level by level; each finished level is kept and skipped on re-run."""
    config, logger = store.config, get_run_logger()
    dataset = task_dataset(store)
    device = resolve_device(config.runtime.device)
    grid = [(f, s) for f in range(len(config.data_fractions)) for s in config.seeds]  # model k of the shard
    seeds = [model_seed(config.seed, s) for _, s in grid]
    subsets = fraction_subsets(dataset.n_train, config.data_fractions, config.seed)[[f for f, _ in grid]]
    ids = {"network": network, "width": width, "depth": depth,
           "data_fraction": [config.data_fractions[f] for f, _ in grid], "seed": [s for _, s in grid]}
    # one ensemble for every level: level 0 trains it from its initialisation, later levels rewind it first
    ensemble = Ensemble.init(network, dataset.input_shape, dataset.num_classes, [derive_seed(s, INIT_STREAM) for s in seeds], device)
    names = prunable_names(ensemble.template, config.pruning.prune_output)
    order_seeds = [derive_seed(s, ORDER_STREAM) for s in seeds]
    rewind_name, written = f"weights/{network}/rewind.safetensors", []
    masks = dense_masks(ensemble.params, names)
    for level in range(config.pruning.levels + 1):
        table, weights = level_names(network, level)
        if store.is_complete(table) and (store.root / weights).is_file() and (store.root / rewind_name).is_file():
            saved = store.read_tensors(weights)
            trained, masks = {n: saved[f"param/{n}"] for n in ensemble.params}, {n: saved[f"mask/{n}"] for n in names}
            written.append(table)
            continue
        start = time.perf_counter()
        if level > 0:
            masks = prune(trained, masks, config.pruning.prune_fraction, level, config.pruning.scope)
            rewind(ensemble.params, store.read_tensors(rewind_name), masks)
        result = train(ensemble, dataset.x_train, dataset.y_train, subsets, order_seeds, config.train,
                       masks=masks if level > 0 else None, snapshot_step=config.pruning.rewind_step if level == 0 else None)
        if level == 0:
            store.write_tensors(rewind_name, result.snapshot)
        trained = {n: p.detach().cpu() for n, p in ensemble.params.items()}
        store.write_tensors(weights, {**{f"param/{n}": p for n, p in trained.items()},
                                      **{f"mask/{n}": m for n, m in masks.items()}})
        rows = _errors(ensemble, {n: m.cpu() for n, m in masks.items()}, dataset, subsets, {**ids, "level": level})
        store.write_table(table, rows)
        written.append(table)
        logger.info("%s level %d: density %.4f, mean test error %.4f, %.1f s", network, level,
                    float(rows["density"].mean()), float(rows["test_error"].mean()), time.perf_counter() - start)
    return written
