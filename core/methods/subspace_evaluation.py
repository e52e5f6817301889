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
from core.models.subspaces import curve_coefficients, expected_calibration_error, line_coefficients



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
