"""Pruning-grid training as the `prune_grid` flow runs it, against a plain per-model loop.

Run: .venv/bin/python -m bench.prune_grid [--config flows/configs/prune-mnist1d.yaml] [--levels 2] [--repeats 2]
For every pass of the grid, the dense run plus `--levels` pruned retrainings, two ways of grouping:
`shape` trains all data fractions and seeds of one shape together; `depth` also nests every width of
a depth in the widest. The loop trains each model alone with torch.optim.SGD, a hook masking its
pruned weights. Per-training cost does not depend on the level, so the ratios hold for the full
grid. The three sides alternate their order over `--repeats` rounds after a warm-up; medians are
reported. Prints one JSON object last.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
import yaml

from bench.plain import masking_hook, train_plain
from bench.trainer import interleaved_seconds
from core.config import derive_seed
from core.data.datasets import load_dataset
from core.methods.pruning import dense_masks, prunable_names, prune
from core.models.nested import nested_ensemble, with_support
from core.models.networks import init_model
from core.runtime import reuse_freed_memory
from core.training.experiment import INIT_STREAM, ORDER_STREAM, model_seed
from core.training.trainer import train
from flows.prune_grid import PruneGridFlowConfig, networks, passes
from tasks.prune_grid import fraction_subsets


def pass_models(config, dataset, group: list[dict]):
    """Names, init seeds, order seeds and subsets of every (network, fraction, seed) model of one pass, in the flow's order."""
    grid = [(net["network"], f, s) for net in group for f in range(len(config.data_fractions)) for s in config.seeds]
    seeds = [model_seed(config.seed, s) for _, _, s in grid]
    subsets = fraction_subsets(dataset.n_train, config.data_fractions, config.seed)[[f for _, f, _ in grid]]
    return ([name for name, _, _ in grid], [derive_seed(s, INIT_STREAM) for s in seeds],
            [derive_seed(s, ORDER_STREAM) for s in seeds], subsets)


def run_ours(config, dataset, levels: int) -> None:
    """The dense run plus `levels` pruned retrainings of every pass of the grid, vectorized."""
    for group in passes(config):
        names, init_seeds, order_seeds, subsets = pass_models(config, dataset, group)
        ensemble, support = nested_ensemble(names, dataset.input_shape, dataset.num_classes, init_seeds)
        masks = dense_masks(ensemble.params, prunable_names(ensemble.template, config.pruning.prune_output), support)
        for level in range(levels + 1):
            if level:
                masks = prune(ensemble.params, masks, config.pruning.prune_fraction, level, config.pruning.scope, support)
            train(ensemble, dataset.x_train, dataset.y_train, subsets, order_seeds, config.train,
                  masks=with_support(masks, support) if level or support else None)


def run_loop(config, dataset, levels: int) -> None:
    """The same trainings, one model at a time; a hook masks the gradients of pruned weights."""
    for net in networks(config):
        names, init_seeds, order_seeds, subsets = pass_models(config, dataset, [net])
        for name, init_seed, order_seed, subset in zip(names, init_seeds, order_seeds, subsets):
            model = init_model(name, dataset.input_shape, dataset.num_classes, init_seed)
            params = {n: p.unsqueeze(0) for n, p in model.named_parameters()}
            masks = dense_masks(params, prunable_names(model, config.pruning.prune_output))
            for level in range(levels + 1):
                if level:
                    masks = prune(params, masks, config.pruning.prune_fraction, level, config.pruning.scope)
                hooks = [p.register_post_accumulate_grad_hook(masking_hook(masks[n][0]))
                         for n, p in model.named_parameters() if n in masks]
                train_plain(model, dataset.x_train, dataset.y_train, subset.nonzero().squeeze(1), order_seed, config.train)
                for hook in hooks:
                    hook.remove()
                params = {n: p.detach().unsqueeze(0) for n, p in model.named_parameters()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="flows/configs/prune-mnist1d.yaml")
    parser.add_argument("--levels", type=int, default=2, help="pruning levels timed after the dense run")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds of each side after the warm-up")
    args = parser.parse_args()
    reuse_freed_memory()  # as a run on the CPU does (configure_runtime), for both sides
    config = PruneGridFlowConfig.model_validate(yaml.safe_load(Path(args.config).read_text()))
    dataset = load_dataset(config.dataset)
    warmup = config.model_copy(update={"train": config.train.model_copy(update={"epochs": 1})})
    grouped = {g: config.model_copy(update={"pass_grouping": g}) for g in ("shape", "depth")}
    run_ours(warmup, dataset, 0)
    run_loop(warmup.model_copy(update={"seeds": config.seeds[:1]}), dataset, 0)
    seconds = interleaved_seconds({"shape": lambda: run_ours(grouped["shape"], dataset, args.levels),
                                   "depth": lambda: run_ours(grouped["depth"], dataset, args.levels),
                                   "loop": lambda: run_loop(config, dataset, args.levels)}, args.repeats, warm_up=False)
    trainings = len(networks(config)) * len(config.data_fractions) * len(config.seeds) * (args.levels + 1)
    for side, value in seconds.items():
        print(f"{side:6s} {value:7.1f} s  ({seconds['loop'] / value:.2f}x the loop)")
    print(json.dumps({"bench": "prune_grid", "config": args.config, "trainings": trainings, "levels_timed": args.levels,
                      "repeats": args.repeats, **{f"{side}_s": round(v, 1) for side, v in seconds.items()},
                      "speedup_shape": round(seconds["loop"] / seconds["shape"], 2),
                      "speedup_depth": round(seconds["loop"] / seconds["depth"], 2),
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine()}))


if __name__ == "__main__":
    main()
