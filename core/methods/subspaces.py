"""Evaluating trained subspaces (Wortsman et al., ICML 2021): which points are evaluated, how well each predicts and
how well calibrated it is, and what the subspace gains over standard training.

A subspace method is a kind (line, Bezier curve, simplex), a number of endpoints m and whether coefficients are
drawn once for the network or once per layer. Along alpha in [0, 1] it is evaluated on a path from one end to the
other: the line itself; the curve itself (alpha is its Bezier parameter); for a simplex, its edge from endpoint 0 to
endpoint 1. Its midpoint is the point drawn on average: the line's and curve's alpha = 0.5, the simplex's centroid.
Its ends are the networks at the subspace's extremes: every endpoint of a line or simplex, the curve's two ends
(its control point is not a network on the curve).
"""
from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from core.models.names import METHODS, STANDARD, Kind
from core.models.subspaces import (ENDPOINTS, SubspaceConv, SubspaceLinear, curve_coefficients, draw_pair,
                                   endpoint_cosine_squared, line_coefficients, sample_coefficients, set_coefficients,
                                   subspace_layers)
from core.training.ensemble import Ensemble



def path_coefficients(kind: Kind, m: int, alphas: Tensor) -> Tensor:
    """`[P, m]` coefficients of the points `alphas` `[P]` of the path a subspace is evaluated along."""
    if kind == "line":
        return line_coefficients(alphas)
    if kind == "curve":
        return curve_coefficients(alphas)
    edge = torch.zeros(len(alphas), m)
    edge[:, :2] = line_coefficients(alphas)
    return edge


def midpoint_coefficients(kind: Kind, m: int) -> Tensor:
    """`[m]` coefficients of the subspace's midpoint: alpha = 0.5 of a line or curve, a simplex's centroid."""
    return torch.full((m,), 1 / m) if kind == "simplex" else path_coefficients(kind, m, torch.tensor([0.5]))[0]


def end_coefficients(kind: Kind, m: int) -> Tensor:
    """`[E, m]` coefficients of the subspace's ends: every endpoint, or a curve's two ends."""
    return path_coefficients(kind, m, torch.tensor([0.0, 1.0])) if kind == "curve" else torch.eye(m)


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = 20) -> Tensor:
    """`[K]` ECE of predictions `probs` `[K, N, C]`: the |accuracy - mean confidence| of each of `bins` equal-width
    confidence bins ((b/bins, (b+1)/bins]), weighted by its share of the N examples."""
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels.to(probs.device)).to(probs.dtype)
    bin_index = (confidence * bins).ceil().long().clamp(1, bins) - 1  # a confidence of 0 joins the first bin
    # |B| |acc_B - conf_B| = |sum over B of (correct - confidence)|: one scatter, no per-bin counts
    gaps = torch.zeros(probs.shape[0], bins, dtype=probs.dtype, device=probs.device)
    return gaps.scatter_add_(1, bin_index, correct - confidence).abs().sum(1) / probs.shape[1]


def calibration(probs: Tensor, labels: Tensor, bins: int = 20) -> tuple[Tensor, Tensor, Tensor]:
    """`[K]` accuracy, mean confidence (top probability; above the accuracy: over-confident) and expected calibration
    error (`bins` equal-width bins) of predictions `[K, N, C]`."""
    confidence, predicted = probs.max(-1)
    accuracy = (predicted == labels).double().mean(1)
    return accuracy, confidence.double().mean(1), expected_calibration_error(probs, labels, bins).double()


def ensemble_sizes(methods: list[str]) -> list[int]:
    """The sizes of the standard ensembles the methods' ends are compared with, ascending."""
    return sorted({len(end_coefficients(*METHODS[method][:2])) for method in methods})


def gains_over_standard(summary: pd.DataFrame) -> pd.DataFrame:
    """Per noise and method: mean midpoint accuracy and ECE, their differences from the standard model of the same
    seed (mean and standard error over seeds), both models' mean confidence, and the ends' ensemble minus a standard
    ensemble of as many members.
    `summary` holds subspace_summary.parquet's columns."""
    keys = ["noise", "seed"]
    standard = summary[summary["method"] == STANDARD]
    model = standard[standard["point"] == "model"].set_index(keys)[["accuracy", "confidence", "ece"]]
    ensembles = standard[standard["point"] == "ensemble"].set_index([*keys, "members"])["accuracy"]
    rows = []
    for (noise, method), group in summary[summary["method"] != STANDARD].groupby(["noise", "method"], sort=False):
        midpoint = group[group["point"] == "midpoint"].set_index(keys)[["accuracy", "confidence", "ece"]]
        ends = group[group["point"] == "ensemble"].set_index([*keys, "members"])["accuracy"]
        paired = model.reindex(midpoint.index)
        accuracy_gain, ece_change = midpoint["accuracy"] - paired["accuracy"], midpoint["ece"] - paired["ece"]
        ensemble_gain = ends - ensembles.reindex(ends.index)
        rows.append({"noise": noise, "method": method, "midpoint_accuracy": midpoint["accuracy"].mean(),
                     "standard_accuracy": paired["accuracy"].mean(),
                     "accuracy_gain": accuracy_gain.mean(), "accuracy_gain_sem": accuracy_gain.sem(),
                     "midpoint_confidence": midpoint["confidence"].mean(), "standard_confidence": paired["confidence"].mean(),
                     "midpoint_ece": midpoint["ece"].mean(), "standard_ece": paired["ece"].mean(),
                     "ece_change": ece_change.mean(), "ece_change_sem": ece_change.sem(),
                     "ensemble_gain": ensemble_gain.mean(), "ensemble_gain_sem": ensemble_gain.sem(),
                     "seeds": len(midpoint)})
    return pd.DataFrame(rows).sort_values(["noise", "method"], ignore_index=True)


class SubspaceTraining:
    """core.training.trainer.train's hooks for a subspace ensemble: `step` draws each stepping model's coefficients and
    endpoint pair from its own generator; `regularizer` is beta cos^2 of that pair. Pass both to train()."""

    def __init__(self, ensemble: Ensemble, kind: Kind, seeds: list[int], layerwise: bool = False, beta: float = 1.0):
        self.template, self.layers = ensemble.template, subspace_layers(ensemble.template)
        if not self.layers or len(seeds) != ensemble.size:
            raise ValueError(f"need a subspace network and one seed per model ({ensemble.size}); got {len(seeds)} "
                             f"seeds and {len(self.layers)} subspace layers")
        self.m = self.layers[0].endpoints
        if kind not in ("line", "curve", "simplex") or ENDPOINTS.get(kind, self.m) != self.m:
            raise ValueError(f"a {kind!r} subspace needs {ENDPOINTS.get(kind, 'two or more')} endpoints; the network "
                             f"has {self.m}")
        self.kind, self.layerwise, self.beta = kind, layerwise, beta
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.coefficients = torch.zeros(ensemble.size, len(self.layers), self.m)
        self.pairs = torch.tensor([[0, 1]]).repeat(ensemble.size, 1)  # until a model first steps
        # linear and conv weights, not BatchNorm's (core.models.subspaces says why)
        self.weight_names = [f"{name}.weight" for name, module in self.template.named_modules()
                             if isinstance(module, (SubspaceLinear, SubspaceConv))]

    def step(self, takes: Tensor) -> None:
        """Draw coefficients, then a pair, for each model with `takes[k]` (bool `[K]`); set them on the template."""
        takes = takes.cpu()
        sample_coefficients(self.kind, self.generators, takes, len(self.layers), self.m, self.layerwise,
                            self.coefficients)
        for k in takes.nonzero().flatten().tolist():  # each generator is one model's: it draws c, then the pair
            self.pairs[k] = draw_pair(self.generators[k], self.m)
        set_coefficients(self.template, self.coefficients)

    def regularizer(self, params: dict[str, Tensor]) -> Tensor:
        """`[K]` beta cos^2 between each model's two drawn endpoints (linear and conv weights only: biases and
        BatchNorm's affine parameters left out)."""
        weights = [params[name] for name in self.weight_names]
        return self.beta * endpoint_cosine_squared(weights, self.pairs.to(weights[0].device))
