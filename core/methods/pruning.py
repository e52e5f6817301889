"""Iterative magnitude pruning with rewinding (Frankle et al.; Rosenfeld et al., ICML 2021), on ensembles.

Masks are bool `[K, ...]` tensors keyed by parameter name, one mask per model; only the weights of
linear and conv layers are prunable (biases and normalisation parameters stay dense).
"""
from __future__ import annotations

from typing import Literal

import pandas as pd
import torch
from torch import Tensor, nn

from core.findings import (Claim, findings_table, not_testable, paired_difference, paired_equivalence,
                           too_few_seeds)
from core.models.networks import prunable_parameters
from core.training.ensemble import Ensemble

Scope = Literal["global", "layerwise"]


def prunable_names(template: nn.Module, prune_output: bool) -> list[str]:
    """Weights that pruning may remove; the classifier's weight only when `prune_output`."""
    names = prunable_parameters(template)
    return names if prune_output else names[:-1]


def dense_masks(params: dict[str, Tensor], names: list[str], support: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Masks of the unpruned prunable parameters: all True, or each model's `support` (its own weights)."""
    if support is not None:
        return {name: support[name].clone() for name in names}
    return {name: torch.ones_like(params[name], dtype=torch.bool) for name in names}


def target_kept(total: int | Tensor, fraction: float, level: int) -> int | Tensor:
    """Weights kept after `level` rounds of pruning `fraction` of the remainder: round((1 - f)^L * total)."""
    if isinstance(total, Tensor):
        return torch.round((1.0 - fraction) ** level * total.double()).long()
    return round((1.0 - fraction) ** level * total)


def _keep_largest(scores: Tensor, mask: Tensor, keep: Tensor | int) -> Tensor:
    """Per model (row of `[K, P]`), the `keep[k]` largest scores among the weights still in `mask`."""
    candidates = torch.where(mask, scores, torch.tensor(-torch.inf, dtype=scores.dtype, device=scores.device))
    order = torch.argsort(candidates, dim=1, descending=True, stable=True)  # ties: the lower index survives
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    keep = torch.as_tensor(keep, device=rank.device).reshape(-1, 1)
    return (rank < keep) & mask


def keep_largest_overall(scores: dict[str, Tensor], masks: dict[str, Tensor], keep: Tensor | int) -> dict[str, Tensor]:
    """Per model, the `keep` (or `keep[k]`) highest `scores` among the weights in `masks`, ranked over all the
    layers together (ties: the earlier layer, then the lower index); masks shaped as `masks`."""
    names = list(masks)
    k = next(iter(masks.values())).shape[0]
    flat_masks = [masks[n].reshape(k, -1) for n in names]
    flat_scores = [scores[n].detach().to(masks[n].device).reshape(k, -1) for n in names]
    kept = _keep_largest(torch.cat(flat_scores, 1), torch.cat(flat_masks, 1), keep)
    return {n: part.reshape(masks[n].shape) for n, part in zip(names, kept.split([m.shape[1] for m in flat_masks], 1))}


def _own_counts(flat: dict[str, Tensor], support: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """`[K]` weights of each model per layer: all of them, or those in its `support` (a narrow network
    embedded in a wider one owns only a block of each layer)."""
    k = next(iter(flat.values())).shape[0]
    if support is None:
        return {n: torch.full((k,), m.shape[1], dtype=torch.long) for n, m in flat.items()}
    return {n: support[n].reshape(k, -1).sum(1).cpu() for n in flat}


def prune(params: dict[str, Tensor], masks: dict[str, Tensor], fraction: float, level: int,
          scope: Scope = "global", support: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Masks for `level`: drop the smallest-magnitude surviving weights so that exactly
    target_kept(total, fraction, level) remain, over all prunable weights of a model (global) or
    in each layer separately (layerwise). `total` counts each model's own weights (see `_own_counts`)."""
    names = list(masks)
    k = next(iter(masks.values())).shape[0]
    # on the masks' device: a run's trained weights may have been moved to the CPU for saving
    magnitudes = {n: params[n].detach().to(masks[n].device).abs().reshape(k, -1).float() for n in names}
    flat_masks = {n: masks[n].reshape(k, -1) for n in names}
    totals = _own_counts(flat_masks, support)
    if scope == "layerwise":
        return {n: _keep_largest(magnitudes[n], flat_masks[n], target_kept(totals[n], fraction, level))
                .view_as(masks[n]) for n in names}
    return keep_largest_overall(magnitudes, masks, target_kept(sum(totals.values()), fraction, level))


def density(masks: dict[str, Tensor], support: dict[str, Tensor] | None = None) -> Tensor:
    """`[K]` fraction of each model's own prunable weights kept."""
    k = next(iter(masks.values())).shape[0]
    flat = {n: m.reshape(k, -1) for n, m in masks.items()}
    kept = sum(m.sum(1) for m in flat.values())
    return kept.double().cpu() / sum(_own_counts(flat, support).values())


def remaining_parameters(params: dict[str, Tensor], masks: dict[str, Tensor],
                         support: dict[str, Tensor] | None = None) -> Tensor:
    """`[K]` parameters left: unpruned prunable weights plus each model's own parameters that are never pruned."""
    k = next(iter(params.values())).shape[0]
    never_pruned = {n: p.reshape(k, -1) for n, p in params.items() if n not in masks}
    dense = sum(_own_counts(never_pruned, support).values()) if never_pruned else 0
    return sum(m.reshape(k, -1).sum(1).cpu() for m in masks.values()) + dense


@torch.no_grad()
def rewind(ensemble: Ensemble, snapshot: dict[str, Tensor], masks: dict[str, Tensor]) -> None:
    """Set the ensemble's parameters and buffers (in place) to the rewind-point snapshot, pruned weights zeroed."""
    for name, p in ensemble.params.items():
        value = snapshot[name].to(p.device)
        p.copy_(value * masks[name].to(p.device) if name in masks else value)
    for name, b in ensemble.buffers.items():
        b.copy_(snapshot[name].to(b.device))  # e.g. BatchNorm running statistics at the rewind point


# ------------------------------------------------------------------ findings: the paper's claims on prune_errors
PAPER = 'Rosenfeld, Frankle, Carbin, Shavit, "On the Predictability of Pruning Across Scales", ICML 2021'
PLATEAU_MARGIN = 0.1  # "similar error": the paper gives no number (see LOW_ERROR_PLATEAU's rule)
LOW_ERROR_PLATEAU = Claim(
    PAPER, "The densest pruned networks have similar error to the unpruned network: the low-error plateau.",
    "test error at the first pruning level minus the same seed's dense test error, over the curve's mean dense error, "
    "mean over networks and data fractions (curves with a dense error of 0 left out), paired by seed")
ERROR_RISES = Claim(
    PAPER, "When pruned further, error increases (the power-law region) up to a high-error plateau.",
    "test error at the sparsest level minus the same seed's dense test error (error points), mean over networks and "
    "data fractions, paired by seed; whether the rise follows the paper's form is the scaling_law flow's question")


def pruning_findings(errors: pd.DataFrame, scope: str) -> pd.DataFrame:
    """The paper's claims on the shape of each error-vs-density curve, from `prune_errors.parquet`, paired by seed."""
    seeds = errors["seed"].nunique()
    if why := too_few_seeds(seeds, "run prune_grid with at least 3 seeds"):
        return findings_table([not_testable(claim, why, scope, seeds) for claim in (LOW_ERROR_PLATEAU, ERROR_RISES)])
    curve = ["network", "data_fraction"]
    by_level = errors.pivot_table(index=[*curve, "seed"], columns="level", values="test_error")
    dense, first, sparsest = by_level[0], by_level[1], by_level[by_level.columns.max()]
    eps_np = dense.groupby(curve).transform("mean")
    positive = eps_np > 0
    relative = ((first - dense)[positive] / eps_np[positive]).groupby("seed").mean()
    plateau = paired_equivalence(LOW_ERROR_PLATEAU, relative, scope, PLATEAU_MARGIN)
    plateau["rule"] += (f" (the paper says only 'similar': ±{PLATEAU_MARGIN:g} of the dense error chosen, about "
                        "twice the seed spread of the shipped MLP grid, far below the high-error plateau's rise)")
    return findings_table([plateau, paired_difference(ERROR_RISES, (sparsest - dense).groupby("seed").mean(), scope)])
