"""Masks chosen at initialisation by a score, the prune-at-initialisation competitors of DCT+Sparse layers.

  snip     |dL/dw * w| on a batch (Lee et al., ICLR 2019: connection sensitivity), in one shot;
  grasp    w * Hg, g the gradient of the loss on logits / 200 and H its Hessian (Wang et al., ICLR 2020: the paper
           removes the largest -w * Hg, so the largest w * Hg stay), in one shot;
  synflow  |dR/dw * w|, R the sum of the outputs of the network with every parameter |w| on an all-ones input
           (Tanaka et al., NeurIPS 2020), data-free, pruned over SYNFLOW_ROUNDS rounds to densities d^(r / rounds).
As the SynFlow authors' pruners (the common reference for all three): scores ranked globally over every prunable
weight of a model, the classifier's included; networks scored in eval mode; one batch of 10 examples per class.
K stacked models score at once (their losses add, so each gradient is its own model's); model k on its own batch.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from core.methods.pruning import keep_largest_overall
from core.models.networks import prunable_parameters
from core.training.ensemble import Ensemble

ScoreRule = Literal["snip", "grasp", "synflow"]
GRASP_TEMPERATURE = 200.0  # GraSP's code divides the logits by T = 200 before the loss
SYNFLOW_ROUNDS = 100  # the SynFlow paper's pruning iterations
EXAMPLES_PER_CLASS = 10  # the SynFlow authors' prune set: prune_dataset_ratio 10 x the number of classes


def _mean_losses(ensemble: Ensemble, x: Tensor, y: Tensor, temperature: float = 1.0) -> Tensor:
    """The sum over models of each model's mean cross-entropy on its own batch (x `[K, B, ...]`, y `[K, B]`)."""
    logits = ensemble(x) / temperature
    return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1).sum()


def snip_scores(ensemble: Ensemble, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """`[K, ...]` |dL/dw * w| per prunable weight, L model k's mean cross-entropy on x[k] (eval mode)."""
    names = prunable_parameters(ensemble.template)
    weights = [ensemble.params[n] for n in names]
    grads = torch.autograd.grad(_mean_losses(ensemble, x, y), weights)
    return {n: (g * w).abs().detach() for n, g, w in zip(names, grads, weights)}


def grasp_scores(ensemble: Ensemble, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """`[K, ...]` w * Hg per prunable weight: g = dL/dw, L on logits / GRASP_TEMPERATURE; Hg = d(g_stopped . g)/dw."""
    names = prunable_parameters(ensemble.template)
    weights = [ensemble.params[n] for n in names]
    stopped = torch.autograd.grad(_mean_losses(ensemble, x, y, GRASP_TEMPERATURE), weights)
    grads = torch.autograd.grad(_mean_losses(ensemble, x, y, GRASP_TEMPERATURE), weights, create_graph=True)
    hessian_grad = torch.autograd.grad(sum((s * g).sum() for s, g in zip(stopped, grads)), weights)
    return {n: (h * w).detach() for n, h, w in zip(names, hessian_grad, weights)}


def synflow_scores(ensemble: Ensemble, masks: dict[str, Tensor], input_shape: tuple[int, ...]) -> dict[str, Tensor]:
    """`[K, ...]` |dR/dw * w| of the network whose parameters and buffers are all |w| (masked weights 0), R the
    sum of its logits on an all-ones input; in float64, as products over depth under- and overflow float32."""
    params = {n: p.detach().double().abs() * (masks[n] if n in masks else 1) for n, p in ensemble.params.items()}
    linear = Ensemble(ensemble.template, params, {n: b.double().abs() for n, b in ensemble.buffers.items()})
    names = list(masks)
    ones = torch.ones(ensemble.size, 1, *input_shape, dtype=torch.float64, device=ensemble.device)
    grads = torch.autograd.grad(linear(ones).sum(), [linear.params[n] for n in names])
    return {n: (g * linear.params[n]).abs().detach() for n, g in zip(names, grads)}


def _kept(total: int, density: float) -> int:
    """Weights a model keeps at `density` of its `total` prunable ones: round(d * total), at least one."""
    return max(1, round(density * total))


def score_masks(rule: ScoreRule, ensemble: Ensemble, x: Tensor, y: Tensor, densities: list[float]) -> dict[str, Tensor]:
    """Bool masks `[len(densities) * K, ...]` (density-major, model k's rows from its own scores) keeping each
    model's round(d * prunable weights) highest-scored weights over all its layers; `x` `[K, B, ...]`, `y` `[K, B]`
    the scoring batches (synflow reads only their example shape). Scored in eval mode; the ensemble is unchanged."""
    names = prunable_parameters(ensemble.template)
    total = sum(ensemble.params[n][0].numel() for n in names)
    full = {n: torch.ones_like(ensemble.params[n], dtype=torch.bool) for n in names}
    if rule in ("snip", "grasp"):
        scores = (snip_scores if rule == "snip" else grasp_scores)(ensemble, x, y)
        parts = [keep_largest_overall(scores, full, _kept(total, d)) for d in densities]
    elif rule == "synflow":
        parts = [_synflow_rounds(ensemble, full, total, d, tuple(x.shape[2:])) for d in densities]
    else:
        raise ValueError(f"score rule must be one of snip, grasp, synflow, not {rule!r}")
    return {n: torch.cat([part[n] for part in parts]) for n in names}


def _synflow_rounds(ensemble: Ensemble, masks: dict[str, Tensor], total: int, density: float,
                    input_shape: tuple[int, ...]) -> dict[str, Tensor]:
    """SynFlow's iterative pruning to `density`: round r keeps round(density^(r / SYNFLOW_ROUNDS) * total) weights
    by the scores of the network masked by round r - 1."""
    for r in range(1, SYNFLOW_ROUNDS + 1):
        scores = synflow_scores(ensemble, masks, input_shape)
        masks = keep_largest_overall(scores, masks, _kept(total, density ** (r / SYNFLOW_ROUNDS)))
    return masks


def scoring_batches(x: Tensor, y: Tensor, num_classes: int, seeds: list[int]) -> tuple[Tensor, Tensor]:
    """Per model seed, EXAMPLES_PER_CLASS x num_classes training examples drawn without replacement by a generator
    seeded with it: `[K, B, ...]` inputs and `[K, B]` labels."""
    size = min(len(x), EXAMPLES_PER_CLASS * num_classes)
    picks = torch.stack([torch.randperm(len(x), generator=torch.Generator().manual_seed(int(s)))[:size] for s in seeds])
    return x[picks], y[picks]
