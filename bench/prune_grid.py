"""Pruning-grid training, vectorized (as the `prune_grid` flow runs it) against a plain per-model loop.

Run: .venv/bin/python -m bench.prune_grid [--config flows/configs/prune-mnist1d.yaml] [--levels 2]
For every network of the grid, `--levels` pruning levels after the dense run: ours trains all data
fractions and seeds of a shape together with their masks; the loop trains each model alone with
torch.optim.SGD, a gradient hook masking its pruned weights. Per-training cost does not depend on
the level, so the ratio holds for the full grid. Prints one JSON object last.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import yaml

from bench.plain import train_plain
from core.config import derive_seed
from core.data import load_dataset
from core.ensemble import Ensemble
from core.experiment import INIT_STREAM, ORDER_STREAM, model_seed
from core.models import init_model
from core.pruning import dense_masks, prunable_names, prune
from core.training import train
from flows.prune_grid import PruneGridFlowConfig, networks
from tasks.pruning import fraction_subsets


def grid_models(config, dataset):
    """Per network: name, init seeds, order seeds and subsets of all its (fraction, seed) models."""
    grid = [(f, s) for f in range(len(config.data_fractions)) for s in config.seeds]
    seeds = [model_seed(config.seed, s) for _, s in grid]
    subsets = fraction_subsets(dataset.n_train, config.data_fractions, config.seed)[[f for f, _ in grid]]
    for net in networks(config):
        yield net["network"], [derive_seed(s, INIT_STREAM) for s in seeds], [derive_seed(s, ORDER_STREAM) for s in seeds], subsets


def time_ours(config, dataset, levels: int) -> float:
    """Seconds for the dense run plus `levels` pruned retrainings of every network, vectorized."""
    start = time.perf_counter()
    for network, init_seeds, order_seeds, subsets in grid_models(config, dataset):
        ensemble = Ensemble.init(network, dataset.input_shape, dataset.num_classes, init_seeds)
        masks = dense_masks(ensemble.params, prunable_names(ensemble.template, config.pruning.prune_output))
        for level in range(levels + 1):
            if level:
                masks = prune(ensemble.params, masks, config.pruning.prune_fraction, level)
            train(ensemble, dataset.x_train, dataset.y_train, subsets, order_seeds, config.train, masks=masks if level else None)
    return time.perf_counter() - start


def masking_hook(mask: torch.Tensor):
    """A post-accumulate-grad hook that zeroes the gradient of pruned weights."""
    def hook(param: torch.Tensor) -> None:
        param.grad.mul_(mask)
    return hook


def time_loop(config, dataset, levels: int) -> float:
    """The same trainings, one model at a time; a hook masks the gradients of pruned weights."""
    start = time.perf_counter()
    for network, init_seeds, order_seeds, subsets in grid_models(config, dataset):
        for init_seed, order_seed, subset in zip(init_seeds, order_seeds, subsets):
            model = init_model(network, dataset.input_shape, dataset.num_classes, init_seed)
            params = {n: p.unsqueeze(0) for n, p in model.named_parameters()}
            masks = dense_masks(params, prunable_names(model, config.pruning.prune_output))
            for level in range(levels + 1):
                if level:
                    masks = prune(params, masks, config.pruning.prune_fraction, level)
                hooks = [p.register_post_accumulate_grad_hook(masking_hook(masks[n][0]))
                         for n, p in model.named_parameters() if n in masks]
                train_plain(model, dataset.x_train, dataset.y_train, subset.nonzero().squeeze(1), order_seed, config.train)
                for hook in hooks:
                    hook.remove()
                params = {n: p.detach().unsqueeze(0) for n, p in model.named_parameters()}
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="flows/configs/prune-mnist1d.yaml")
    parser.add_argument("--levels", type=int, default=2, help="pruning levels timed after the dense run")
    args = parser.parse_args()
    config = PruneGridFlowConfig.model_validate(yaml.safe_load(Path(args.config).read_text()))
    dataset = load_dataset(config.dataset)
    ours = time_ours(config, dataset, args.levels)
    loop = time_loop(config, dataset, args.levels)
    trainings = len(networks(config)) * len(config.data_fractions) * len(config.seeds) * (args.levels + 1)
    print(json.dumps({"bench": "prune_grid", "config": args.config, "trainings": trainings, "levels_timed": args.levels,
                      "ours_s": round(ours, 1), "loop_s": round(loop, 1), "speedup_vs_loop": round(loop / ours, 2),
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine()}))


if __name__ == "__main__":
    main()
