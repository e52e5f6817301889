"""Task of the `dct_sparse` flow: one layer type, all its densities and seeds trained together from sparse masks
fixed at initialisation."""
from __future__ import annotations

import time

import pandas as pd
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.config import derive_seed
from core.methods.dct_sparse import stored_bytes
from core.methods.prune_at_init import score_masks, scoring_batches
from core.methods.pruning import remaining_parameters
from core.models.dct_sparse import DCTPlusSparseConv, sparse_weight_names
from core.models.sparse_masks import layer_densities, random_masks
from core.models.networks import prunable_parameters
from core.runs.store import RunStore
from core.runtime import resolve_device
from core.training.ensemble import Ensemble, evaluate
from core.training.experiment import INIT_STREAM, MASK_STREAM, ORDER_STREAM, model_seed
from core.training.trainer import train
from tasks.common import compute_once, task_dataset


def shard_name(layer_type: str, mask_rule: str) -> str:
    """The table of one layer type's models with masks by `mask_rule` (dense networks have none)."""
    return "shards/dense.parquet" if layer_type == "dense" else f"shards/{layer_type}-{mask_rule}.parquet"


def model_name(base: str, layer_type: str) -> str:
    """The registry name of `base` built with `layer_type` layers (a sparse network is the plain one, masked)."""
    return f"dct_{base}" if layer_type == "dct_sparse" else base


def sparse_masks(shapes: dict[str, tuple[int, ...]], densities: list[float], heuristic: str,
                 seeds: list[int], capping: str = "authors") -> dict[str, torch.Tensor]:
    """Masks `[len(densities) * len(seeds), ...]`, density-major: each density's per-layer split by `heuristic`
    (a layer that would pass 1 capped as `capping` says), each model's positions from its own seed (so `sparse` and
    `dct_sparse` of one seed share their masks)."""
    parts = [random_masks(shapes, layer_densities(shapes, d, heuristic, capping), seeds) for d in densities]
    return {name: torch.cat([part[name] for part in parts]) for name in shapes}


@task(cache_policy=NO_CACHE, task_run_name="sparse-init-{layer_type}-{mask_rule}")
def train_layer_type(store: RunStore, layer_type: str, mask_rule: str) -> str:
    """Train every (density, seed) of `layer_type` on masks by `mask_rule` (one seed per model for `dense`) in one
    pass; skipped when done."""
    name = shard_name(layer_type, mask_rule)
    compute_once(store, [name], lambda: _train(store, layer_type, mask_rule, name))
    return name


def initial_ensemble(config, layer_type: str, seeds: list[int], dataset) -> Ensemble:
    """The models of `layer_type` at initialisation, one per model seed; a DCT+Sparse layer's S at 0 when the
    config's sparse_init is zeros, its conv D in the config's patch_order."""
    ensemble = Ensemble.init(model_name(config.model, layer_type), dataset.input_shape, dataset.num_classes,
                             [derive_seed(s, INIT_STREAM) for s in seeds], resolve_device(config.runtime.device),
                             config.runtime.precision)
    for layer in ensemble.template.modules():
        if isinstance(layer, DCTPlusSparseConv):
            layer.patch_order = config.patch_order
    if layer_type == "dct_sparse" and config.sparse_init == "zeros":
        with torch.no_grad():
            for weight in sparse_weight_names(ensemble.template):
                ensemble.params[weight].zero_()
    return ensemble


def initial_masks(config, mask_rule: str, dataset) -> dict[str, torch.Tensor]:
    """Masks `[len(densities) * len(seeds), ...]` (density-major) by `mask_rule`: random (per-layer densities by the
    config's heuristic) or a score of the plain network at each seed's initial weights, on a batch drawn by the
    seed's mask stream; `sparse` and `dct_sparse` of one seed get the same masks either way."""
    mask_seeds = [derive_seed(model_seed(config.seed, s), MASK_STREAM) for s in config.seeds]
    plain = initial_ensemble(config, "sparse", [model_seed(config.seed, s) for s in config.seeds], dataset)
    if mask_rule == "random":
        shapes = {n: tuple(plain.params[n].shape[1:]) for n in prunable_parameters(plain.template)}
        return sparse_masks(shapes, config.densities, config.heuristic, mask_seeds, config.capping)
    x, y = scoring_batches(dataset.x_train, dataset.y_train, dataset.num_classes, mask_seeds)
    return score_masks(mask_rule, plain, x.to(plain.device), y.to(plain.device), config.densities)


def _train(store: RunStore, layer_type: str, mask_rule: str, name: str) -> None:
    """The body of `train_layer_type`."""
    config, start, dataset = store.config, time.perf_counter(), task_dataset(store)
    densities = [1.0] if layer_type == "dense" else config.densities
    rows = [(d, s) for d in densities for s in config.seeds]
    seeds = [model_seed(config.seed, s) for _, s in rows]
    ensemble = initial_ensemble(config, layer_type, seeds, dataset)
    masks = None if layer_type == "dense" else initial_masks(config, mask_rule, dataset)
    everything = torch.ones(len(rows), dataset.n_train, dtype=torch.bool)
    result = train(ensemble, dataset.x_train, dataset.y_train, everything, [derive_seed(s, ORDER_STREAM) for s in seeds],
                   config.train, masks=masks)
    accuracy = evaluate(ensemble, dataset.x_test, dataset.y_test).accuracy()
    trainable = remaining_parameters(ensemble.params, masks or {})  # dense: no masks, every parameter
    store.write_table(name, pd.DataFrame({
        "layer_type": layer_type, "mask_rule": "none" if masks is None else mask_rule, "density": [d for d, _ in rows],
        "heuristic": config.heuristic if mask_rule == "random" and masks is not None else "none",
        "trainable_params": trainable.numpy(), "stored_bytes": stored_bytes(ensemble.params, masks or {}).numpy(),
        "seed": [s for _, s in rows], "test_accuracy": accuracy.double().numpy(),
        "train_loss": result.losses[:, -1].double().numpy()}))
    get_run_logger().info("%s (%s masks): %d models, test accuracy by density %s, %.1f s", layer_type,
                          "no" if masks is None else mask_rule, len(rows),
                          " ".join(f"{d:g}: {float(accuracy[i * len(config.seeds):(i + 1) * len(config.seeds)].mean()):.3f}"
                                   for i, d in enumerate(densities)), time.perf_counter() - start)
