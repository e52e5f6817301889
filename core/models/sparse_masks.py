"""Sparse masks fixed at initialisation: how an overall density is split over layers (uniform, ERK, EPL, capped
as the DCT+Sparse authors' code or redistributed as RigL's ERK) and each model's random positions from its own seed.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

Heuristic = Literal["uniform", "erk", "epl"]
Capping = Literal["authors", "redistribute"]  # how layer_densities treats a layer that would pass density 1

def _scaled_to_budget(scores: dict[str, float], sizes: dict[str, int], budget: float) -> dict[str, float]:
    """density_l = eps * score_l with eps such that the nonzeros sum to `budget`; a layer that would pass 1 is
    dense and the others share its excess (RigL's ERK). Capping only raises eps, so a capped layer stays capped."""
    dense: set[str] = set()
    eps = 0.0
    while len(dense) < len(scores):
        free = [name for name in scores if name not in dense]
        eps = (budget - sum(sizes[name] for name in dense)) / sum(scores[name] * sizes[name] for name in free)
        over = [name for name in free if eps * scores[name] > 1]
        if not over:
            break
        dense.update(over)
    return {name: 1.0 if name in dense else min(1.0, eps * scores[name]) for name in scores}


def _capped_as_dctps(scores: dict[str, float], sizes: dict[str, int], budget: float, last_takes_rest: bool) -> dict:
    """min(1, eps * score_l), eps = budget / sum(score * size), as DCTpS's calculate_layer_densities: a capped
    layer's excess is lost, or (`last_takes_rest`, their equal_per_layer) goes to the last layer, capped."""
    eps = budget / sum(scores[name] * sizes[name] for name in scores)
    densities = {name: min(1.0, eps * scores[name]) for name in scores}
    if last_takes_rest:
        last = list(scores)[-1]
        rest = budget - sum(densities[name] * sizes[name] for name in scores)
        densities[last] = min(1.0, densities[last] + rest / sizes[last])
    return densities


def layer_densities(shapes: dict[str, tuple[int, ...]], density: float, heuristic: Heuristic,
                    capping: Capping = "authors") -> dict[str, float]:
    """Each layer's density for an overall `density` of the weights `shapes` ({name: shape}):

    uniform: every layer `density`; erk (Erdos-Renyi-Kernel, Evci et al. 2020): proportional to
    sum(shape) / prod(shape); epl: the same number of nonzeros in every layer. No layer passes 1: where one would,
    `capping` authors caps it as DCTpS does (erk: its excess is lost; epl: the last layer takes it), redistribute
    gives its excess to the others (RigL's ERK), so the nonzeros add up to `density` x all weights."""
    if not 0 < density <= 1:
        raise ValueError(f"density must lie in (0, 1], got {density}")
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    score = {"uniform": lambda shape: 1.0, "erk": lambda shape: sum(shape) / math.prod(shape),
             "epl": lambda shape: 1.0 / math.prod(shape)}
    if heuristic not in score:
        raise ValueError(f"heuristic must be one of {sorted(score)}, not {heuristic!r}")
    scores = {name: score[heuristic](shape) for name, shape in shapes.items()}
    if capping == "redistribute":
        return _scaled_to_budget(scores, sizes, density * sum(sizes.values()))
    if capping != "authors":
        raise ValueError(f"capping must be 'authors' or 'redistribute', not {capping!r}")
    return _capped_as_dctps(scores, sizes, density * sum(sizes.values()), last_takes_rest=heuristic == "epl")


def random_masks(shapes: dict[str, tuple[int, ...]], densities: dict[str, float], seeds: list[int]) -> dict[str, Tensor]:
    """Bool `[K, *shape]` per layer. Model k's mask of layer l has exactly max(1, round(densities[l] * numel_l))
    True entries (Python's round), at positions uniform at random drawn from a torch.Generator seeded `seeds[k]`
    (layers in the order of `shapes`), so each model's masks depend on its own seed only."""
    flat = {name: torch.zeros(len(seeds), math.prod(shape), dtype=torch.bool) for name, shape in shapes.items()}
    for k, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(int(seed))
        for name, mask in flat.items():
            kept = max(1, round(densities[name] * mask.shape[1]))
            mask[k, torch.randperm(mask.shape[1], generator=generator)[:kept]] = True
    return {name: mask.view(len(seeds), *shapes[name]) for name, mask in flat.items()}
