"""Task of the `prune_grid` flow: networks that share a pass (one shape, or every width of one depth),
all their seeds and data fractions, every pruning level."""
from __future__ import annotations

import time

import pandas as pd
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.config import derive_seed
from core.methods.pruning import dense_masks, density, prunable_names, prune, remaining_parameters, rewind
from core.models.nested import embed, extract, nested_ensemble, state_shapes, with_support
from core.runs.store import RunStore
from core.runtime import resolve_device
from core.training.ensemble import evaluate
from core.training.experiment import INIT_STREAM, ORDER_STREAM, masked_row_mean, model_seed, subset_mask
from core.training.trainer import train
from tasks.common import task_dataset, waiting


def level_names(network: str, level: int) -> tuple[str, str]:
    """The error table and the weights (trained parameters and masks) of one level of one network."""
    return f"shards/{network}/level-{level:02d}.parquet", f"weights/{network}/level-{level:02d}.safetensors"


def rewind_name(network: str) -> str:
    """The rewind point (parameters and buffers after `rewind_step` updates) of one network."""
    return f"weights/{network}/rewind.safetensors"


def fraction_subsets(n: int, fractions: list[float], run_seed: int) -> torch.Tensor:
    """Bool `[F, n]`: the training subset of each data fraction, shared by every shape and seed."""
    return torch.stack([subset_mask(n, max(1, round(f * n)), derive_seed(run_seed, 1000 + i)) for i, f in enumerate(fractions)])


def _errors(ensemble, masks, support, dataset, subsets, rows: dict) -> pd.DataFrame:
    """Train error (on each model's own subset), test error and loss, density, parameters left."""
    train_eval, test_eval = evaluate(ensemble, dataset.x_train, dataset.y_train), evaluate(ensemble, dataset.x_test, dataset.y_test)
    return pd.DataFrame({**rows, "density": density(masks, support).numpy(),
                         "params_remaining": remaining_parameters(ensemble.params, masks, support).numpy(),
                         "train_error": 1 - masked_row_mean(train_eval.correct, subsets), "test_error": 1 - test_eval.accuracy().numpy(),
                         "test_loss": test_eval.loss.mean(1).numpy()})


class NetworkRows:
    """Which rows of the shared pass belong to each network, and each network's own parameter and buffer shapes."""

    def __init__(self, networks: list[str], models_per_network: int, input_shape, num_classes: int):
        self.rows = {n: slice(i * models_per_network, (i + 1) * models_per_network) for i, n in enumerate(networks)}
        self.shapes = {n: state_shapes(n, input_shape, num_classes) for n in networks}

    def split(self, state: dict[str, torch.Tensor], network: str) -> dict[str, torch.Tensor]:
        """`network`'s rows of `state` (parameters, masks or buffers by name), each cut to its own shape."""
        shapes = self.shapes[network]
        return {n: extract(v[self.rows[network]].cpu(), shapes[n]) for n, v in state.items()}

    def join(self, parts: dict[str, dict[str, torch.Tensor]], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-network states embedded back into the shared pass's `[K, ...]` tensors shaped as `like`."""
        return {n: torch.cat([embed(parts[net][n], v.shape[1:]) for net in self.rows]).to(v.device) for n, v in like.items()}


@task(cache_policy=NO_CACHE, task_run_name="prune-{label}")
def prune_networks(store: RunStore, networks: list[dict], label: str) -> list[str]:
    """Train dense, then prune, rewind and retrain level by level, all `networks` in one pass; each
    finished level is kept per network and skipped on re-run. Under the claim on the pass, so a second
    process running the same config waits for it instead of training it again."""
    with store.claim(f"prune-pass-{label}", on_wait=waiting(label)):
        return _prune_pass(store, networks, label)


def _prune_pass(store: RunStore, networks: list[dict], label: str) -> list[str]:
    """The body of `prune_networks`."""
    config, logger = store.config, get_run_logger()
    dataset, device, pruning = task_dataset(store), resolve_device(store.config.runtime.device), store.config.pruning
    grid = [(net, f, s) for net in networks for f in range(len(config.data_fractions)) for s in config.seeds]
    seeds = [model_seed(config.seed, s) for _, _, s in grid]
    subsets = fraction_subsets(dataset.n_train, config.data_fractions, config.seed)[[f for _, f, _ in grid]]
    ids = {key: [net[key] for net, _, _ in grid] for key in ("network", "width", "depth")}
    ids.update(data_fraction=[config.data_fractions[f] for _, f, _ in grid], seed=[s for _, _, s in grid])
    # one ensemble for every level: level 0 trains it from its initialisation, later levels rewind it first
    ensemble, support = nested_ensemble(ids["network"], dataset.input_shape, dataset.num_classes,
                                        [derive_seed(s, INIT_STREAM) for s in seeds], device, config.runtime.precision)
    layout = NetworkRows([net["network"] for net in networks], len(grid) // len(networks), dataset.input_shape, dataset.num_classes)
    names = prunable_names(ensemble.template, pruning.prune_output)
    order_seeds = [derive_seed(s, ORDER_STREAM) for s in seeds]
    masks, written, snapshot = dense_masks(ensemble.params, names, support), [], None
    rewinds = {n: store.whole_tensors(rewind_name(n)) for n in layout.rows}  # read and checked once per pass
    for level in range(pruning.levels + 1):
        files = {n: level_names(n, level) for n in layout.rows}
        # a level is made from the level before and the rewind point: when they were rewritten, it is redone
        sources = {n: [level_names(n, level - 1)[1], rewind_name(n)] if level else [] for n in layout.rows}
        store.remove_corrupt(*(table for table, _ in files.values()))
        saved = {n: store.whole_tensors(weights) for n, (table, weights) in files.items()
                 if store.is_complete(table, sources[n])}
        if len(saved) == len(files) and all(v is not None for v in [*saved.values(), *rewinds.values()]):
            trained = layout.join({n: {p: s[f"param/{p}"] for p in ensemble.params} for n, s in saved.items()}, ensemble.params)
            masks = layout.join({n: {p: s[f"mask/{p}"] for p in names} for n, s in saved.items()}, masks)
            written += [table for table, _ in files.values()]
            continue
        start = time.perf_counter()
        if level > 0:
            masks = prune(trained, masks, pruning.prune_fraction, level, pruning.scope, support)
            snapshot = snapshot or layout.join(rewinds, ensemble.state())
            rewind(ensemble, snapshot, masks)
        result = train(ensemble, dataset.x_train, dataset.y_train, subsets, order_seeds, config.train,
                       masks=with_support(masks, support) if level > 0 or support else None,
                       snapshot_step=pruning.rewind_step if level == 0 else None,
                       start_step=pruning.rewind_step if level > 0 else 0)  # levels go on from the rewind point
        if level == 0:
            snapshot = result.snapshot
            for n in layout.rows:
                rewinds[n] = layout.split(snapshot, n)
                store.write_tensors(rewind_name(n), rewinds[n])
        trained = {n: p.detach() for n, p in ensemble.params.items()}
        rows = _errors(ensemble, masks, support, dataset, subsets, {**ids, "level": level})
        for n, (table, weights) in files.items():
            store.write_tensors(weights, {**{f"param/{p}": v for p, v in layout.split(trained, n).items()},
                                          **{f"mask/{p}": m for p, m in layout.split(masks, n).items()}}, sources[n])
            store.write_table(table, rows[rows["network"] == n].reset_index(drop=True), built_from=sources[n])
            written.append(table)
        logger.info("%s level %d: density %.4f, mean test error %.4f, %.1f s", label, level,
                    float(rows["density"].mean()), float(rows["test_error"].mean()), time.perf_counter() - start)
    return written
