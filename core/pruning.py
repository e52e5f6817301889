"""Iterative magnitude pruning with rewinding (Frankle et al.; Rosenfeld et al., ICML 2021), on ensembles.

Masks are bool `[K, ...]` tensors keyed by parameter name, one mask per model; only the weights of
linear and conv layers are prunable (biases and normalisation parameters stay dense).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from core.models import prunable_parameters

Scope = Literal["global", "layerwise"]


def prunable_names(template: nn.Module, prune_output: bool) -> list[str]:
    """Weights that pruning may remove; the classifier's weight only when `prune_output`."""
    names = prunable_parameters(template)
    return names if prune_output else names[:-1]


def dense_masks(params: dict[str, Tensor], names: list[str]) -> dict[str, Tensor]:
    """All-True masks for the prunable parameters."""
    return {name: torch.ones_like(params[name], dtype=torch.bool) for name in names}


def target_kept(total: int, fraction: float, level: int) -> int:
    """Weights kept after `level` rounds of pruning `fraction` of the remainder: round((1 - f)^L * total)."""
    return round((1.0 - fraction) ** level * total)


def _keep_largest(magnitudes: Tensor, mask: Tensor, keep: int) -> Tensor:
    """Per model (row of `[K, P]`), the `keep` largest magnitudes among the weights still in `mask`."""
    candidates = torch.where(mask, magnitudes, torch.tensor(-1.0, dtype=magnitudes.dtype, device=magnitudes.device))
    order = torch.argsort(candidates, dim=1, descending=True, stable=True)  # ties: the lower index survives
    new = torch.zeros_like(mask)
    new.scatter_(1, order[:, :keep], True)
    return new & mask


def prune(params: dict[str, Tensor], masks: dict[str, Tensor], fraction: float, level: int,
          scope: Scope = "global") -> dict[str, Tensor]:
    """Masks for `level`: drop the smallest-magnitude surviving weights so that exactly
    target_kept(total, fraction, level) remain, over all prunable weights of a model (global) or
    in each layer separately (layerwise)."""
    names = list(masks)
    k = next(iter(masks.values())).shape[0]
    # on the masks' device: a run's trained weights may have been moved to the CPU for saving
    magnitudes = {n: params[n].detach().to(masks[n].device).abs().reshape(k, -1).float() for n in names}
    flat_masks = {n: masks[n].reshape(k, -1) for n in names}
    if scope == "layerwise":
        return {n: _keep_largest(magnitudes[n], flat_masks[n], target_kept(flat_masks[n].shape[1], fraction, level))
                .view_as(masks[n]) for n in names}
    sizes = [flat_masks[n].shape[1] for n in names]
    kept = _keep_largest(torch.cat([magnitudes[n] for n in names], 1), torch.cat([flat_masks[n] for n in names], 1),
                         target_kept(sum(sizes), fraction, level))
    return {n: part.reshape(masks[n].shape) for n, part in zip(names, kept.split(sizes, dim=1))}


def density(masks: dict[str, Tensor]) -> Tensor:
    """`[K]` fraction of prunable weights kept."""
    k = next(iter(masks.values())).shape[0]
    kept = sum(m.reshape(k, -1).sum(1) for m in masks.values())
    total = sum(m[0].numel() for m in masks.values())
    return kept.double() / total


def remaining_parameters(params: dict[str, Tensor], masks: dict[str, Tensor]) -> Tensor:
    """`[K]` parameters left: unpruned prunable weights plus every parameter that is never pruned."""
    k = next(iter(params.values())).shape[0]
    dense = sum(p[0].numel() for n, p in params.items() if n not in masks)
    return sum(m.reshape(k, -1).sum(1) for m in masks.values()) + dense


@torch.no_grad()
def rewind(params: dict[str, Tensor], snapshot: dict[str, Tensor], masks: dict[str, Tensor]) -> None:
    """Set the parameters (in place) to the rewind-point snapshot, with pruned weights zeroed."""
    for name, p in params.items():
        value = snapshot[name].to(p.device)
        p.copy_(value * masks[name].to(p.device) if name in masks else value)
