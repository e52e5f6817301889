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

from dataclasses import replace

import pandas as pd
import torch
from torch import Tensor

from core.findings import Claim, findings_table, not_testable, paired_difference, ratio_below, too_few_seeds
from core.models.names import METHODS, STANDARD, SWA, Kind
from core.models.subspaces import (ENDPOINTS, SubspaceConv, SubspaceLinear, curve_coefficients, draw_pair,
                                   line_coefficients, pair_cosine_squared, sample_coefficients, set_coefficients,
                                   subspace_layers)
from core.training.ensemble import Ensemble
from core.training.hooks import TrainingHooks



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
    """The sizes of the standard ensembles the subspace methods' ends are compared with, ascending."""
    return sorted({len(end_coefficients(*METHODS[method][:2])) for method in methods if method in METHODS})


def gains_over_standard(summary: pd.DataFrame) -> pd.DataFrame:
    """Per noise and method: mean midpoint accuracy and ECE, their differences from the standard model of the same
    seed (mean and standard error over seeds), both models' mean confidence, the ends' ensemble minus a standard
    ensemble of as many members, and the midpoint's accuracy gain early-stopped (`early_stopped_gain`: each at its
    best validation epoch; NaN without the `_best` rows).
    `summary` holds subspace_summary.parquet's columns."""
    keys = ["noise", "seed"]
    standard = summary[summary["method"] == STANDARD]
    model = standard[standard["point"] == "model"].set_index(keys)[["accuracy", "confidence", "ece"]]
    model_best = standard[standard["point"] == "model_best"].set_index(keys)["accuracy"]
    ensembles = standard[standard["point"] == "ensemble"].set_index([*keys, "members"])["accuracy"]
    rows = []
    subspaces = summary[~summary["method"].isin([STANDARD, SWA])]
    for (noise, method), group in subspaces.groupby(["noise", "method"], sort=False):
        midpoint = group[group["point"] == "midpoint"].set_index(keys)[["accuracy", "confidence", "ece"]]
        ends = group[group["point"] == "ensemble"].set_index([*keys, "members"])["accuracy"]
        paired = model.reindex(midpoint.index)
        accuracy_gain, ece_change = midpoint["accuracy"] - paired["accuracy"], midpoint["ece"] - paired["ece"]
        ensemble_gain = ends - ensembles.reindex(ends.index)
        midpoint_best = group[group["point"] == "midpoint_best"].set_index(keys)["accuracy"]
        early_stopped_gain = midpoint_best - model_best.reindex(midpoint_best.index)
        rows.append({"noise": noise, "method": method, "midpoint_accuracy": midpoint["accuracy"].mean(),
                     "standard_accuracy": paired["accuracy"].mean(),
                     "accuracy_gain": accuracy_gain.mean(), "accuracy_gain_sem": accuracy_gain.sem(),
                     "midpoint_confidence": midpoint["confidence"].mean(), "standard_confidence": paired["confidence"].mean(),
                     "midpoint_ece": midpoint["ece"].mean(), "standard_ece": paired["ece"].mean(),
                     "ece_change": ece_change.mean(), "ece_change_sem": ece_change.sem(),
                     "ensemble_gain": ensemble_gain.mean(), "ensemble_gain_sem": ensemble_gain.sem(),
                     "early_stopped_gain": early_stopped_gain.mean(),
                     "early_stopped_gain_sem": early_stopped_gain.sem(),
                     "seeds": len(midpoint)})
    return pd.DataFrame(rows).sort_values(["noise", "method"], ignore_index=True)


class SubspaceTraining:
    """core.training.trainer.train's hooks for a subspace ensemble: `step` draws each stepping model's coefficients and
    endpoint pair from its own generator; `regularizer` is beta cos^2 of that pair. Pass `hooks()` to train()."""

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
        weighted = [(name, module) for name, module in self.template.named_modules()
                    if isinstance(module, (SubspaceLinear, SubspaceConv))]
        self.weight_names, self.weight_layers = [f"{name}.weight" for name, _ in weighted], [m for _, m in weighted]
        for layer in self.weight_layers:  # their forward takes the Gram the regulariser reads (one pass fewer)
            layer.wants_gram = beta != 0

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
        grams = [layer.step_gram(weight) for layer, weight in zip(self.weight_layers, weights)]
        return self.beta * pair_cosine_squared(grams, self.pairs.to(weights[0].device))

    def hooks(self) -> TrainingHooks:
        """`step` and `regularizer` as train()'s hooks."""
        return TrainingHooks(step=self.step, regularizer=self.regularizer)


# Findings: the paper's claims checked on subspace_summary.parquet


SUBSPACES_PAPER = "Wortsman, Horton, Guestrin, Farhadi, Rastegari: Learning Neural Network Subspaces (ICML 2021)"
MIDPOINT_ACCURACY = Claim(SUBSPACES_PAPER, "Using the subspace midpoint boosts accuracy.",
                          "test accuracy of the {method} midpoint minus that of standard training of the same seed, "
                          "clean labels, the same epochs for both")
MIDPOINT_CALIBRATION = Claim(SUBSPACES_PAPER, "Using the subspace midpoint boosts calibration.",
                             "test ECE (20 bins) of standard training minus that of the {method} midpoint of the same "
                             "seed, clean labels (positive: the midpoint is better calibrated)")
MIDPOINT_NOISE_ROBUSTNESS = Claim(SUBSPACES_PAPER, "Using the subspace midpoint boosts robustness to label noise.",
                                  "early-stopped: test accuracy (clean test labels) of the {method} midpoint at its "
                                  "best validation epoch minus that of standard training of the same seed at its own "
                                  "best validation epoch, {noise} of the training (and validation) labels replaced by "
                                  "a wrong class")
MIDPOINT_NOISE_ROBUSTNESS_LAST_EPOCH = replace(
    MIDPOINT_NOISE_ROBUSTNESS, measure="last epoch (not early-stopped): test accuracy (clean test labels) of the "
    "{method} midpoint minus that of standard training of the same seed, both after the last epoch, {noise} of the "
    "training labels replaced by a wrong class")
ENDS_ENSEMBLE = Claim(SUBSPACES_PAPER, "These neural network subspaces contain diverse solutions that can be "
                      "ensembled, approaching the ensemble performance of independently trained networks without the "
                      "training cost.", "test accuracy of the ensemble of the {method}'s ends minus that of as many "
                      "standard networks of the same seed, clean labels")
MIDPOINT_OVER_SWA = Claim(SUBSPACES_PAPER, "The subspace midpoint boosts accuracy, calibration and robustness to "
                          "label noise, outperforming Stochastic Weight Averaging.",
                          "test accuracy (clean test labels) of the {method} midpoint minus that of SWA (standard "
                          "training, its weights averaged once an epoch from swa_start on at a constant lr, BatchNorm "
                          "recomputed) of the same seed and epochs, {noise} of the training labels replaced by a wrong "
                          "class")
MIDPOINT_OVER_SWA_EARLY_STOPPED = replace(
    MIDPOINT_OVER_SWA, measure="early-stopped: test accuracy (clean test labels) of the {method} midpoint at its best "
    "validation epoch minus that of SWA of the same seed at its own best validation epoch (its average, from swa_start "
    "on), {noise} of the training (and validation) labels replaced by a wrong class")
EARLY_STOPPED = (MIDPOINT_NOISE_ROBUSTNESS, MIDPOINT_OVER_SWA_EARLY_STOPPED)  # compare the `<point>_best` rows
UNDER_NOISE = (MIDPOINT_NOISE_ROBUSTNESS, MIDPOINT_NOISE_ROBUSTNESS_LAST_EPOCH, MIDPOINT_OVER_SWA_EARLY_STOPPED)
AGAINST_SWA = (MIDPOINT_OVER_SWA, MIDPOINT_OVER_SWA_EARLY_STOPPED)
ENSEMBLE_MARGIN = 0.01  # "approaching": within one accuracy point (ours; the paper gives no number)


def subspaces_findings(summary: pd.DataFrame, scope: str) -> pd.DataFrame:
    """Each claim per method of `summary` (subspace_summary.parquet's columns), paired by seed against standard
    training: the midpoint's accuracy and ECE on clean labels, its accuracy at each label-noise level (early-stopped,
    each at its best validation epoch; then at the last epoch), and the ends' ensemble against as many standard
    networks (not worse by more than ENSEMBLE_MARGIN); then the midpoint's accuracy against SWA of the same seed at
    every noise level (last epoch), and early-stopped under noise."""
    methods = sorted(set(summary["method"]) - {STANDARD, SWA})
    noises = sorted(set(summary["noise"]))
    seeds = summary["seed"].nunique()
    claims = [MIDPOINT_ACCURACY, MIDPOINT_CALIBRATION, MIDPOINT_NOISE_ROBUSTNESS, MIDPOINT_NOISE_ROBUSTNESS_LAST_EPOCH,
              ENDS_ENSEMBLE, MIDPOINT_OVER_SWA, MIDPOINT_OVER_SWA_EARLY_STOPPED]
    if why := too_few_seeds(seeds):
        return findings_table([not_testable(subspace_claim(c, "subspace"), why, scope, seeds) for c in claims])
    rows = []
    for claim in claims:
        levels = [n for n in noises if n > 0] if claim in UNDER_NOISE else [n for n in noises if n == 0]
        if claim in AGAINST_SWA and SWA not in set(summary["method"]):
            why = "methods has no swa: add swa to methods"
            rows.append(not_testable(subspace_claim(claim, "subspace"), why, scope))
            continue
        if claim is MIDPOINT_OVER_SWA:
            levels = noises
        if not levels:
            why = ("label_noise holds only 0: add a level such as 0.2" if claim in UNDER_NOISE else
                   "label_noise has no 0 (clean labels): add 0.0 to label_noise")
            rows.append(not_testable(subspace_claim(claim, "subspace"), why, scope))
        for noise in levels:
            for method in methods:
                rows.append(subspace_row(claim, summary, method, noise, scope))
    return findings_table(rows)


def subspace_claim(claim: Claim, method: str, noise: float | None = None, **names: str) -> Claim:
    """`claim` with its measure naming the method (and the label noise, and any other `names` it has a field for)."""
    noise_text = "some" if noise is None else f"{noise:.0%}"
    return replace(claim, measure=claim.measure.format(method=method, noise=noise_text, **names))


def subspace_row(claim: Claim, summary: pd.DataFrame, method: str, noise: float, scope: str) -> dict:
    """One method's row of `claim` at one noise level: the per-seed differences from standard training (from SWA for
    the claims AGAINST_SWA), each at its best validation epoch for the EARLY_STOPPED claims."""
    rows = summary[summary["noise"] == noise]
    mine, standard = rows[rows["method"] == method], rows[rows["method"] == STANDARD]
    if claim is ENDS_ENSEMBLE:
        ends = mine[mine["point"] == "ensemble"].set_index(["seed", "members"])["accuracy"]
        others = standard[standard["point"] == "ensemble"].set_index(["seed", "members"])["accuracy"]
        differences = ends - others.reindex(ends.index)
        row = paired_difference(subspace_claim(claim, method, noise), differences, scope, -ENSEMBLE_MARGIN)
        return {**row, "rule": f"{row['rule']}; the threshold -{ENSEMBLE_MARGIN:g} reads 'approaching' as within one "
                               "accuracy point (our margin: the paper gives none)"}
    best = "_best" if claim in EARLY_STOPPED else ""
    midpoint = mine[mine["point"] == "midpoint" + best].set_index("seed")
    if midpoint.empty:
        return not_testable(subspace_claim(claim, method, noise), "the summary has no best-epoch rows (a run from "
                            "before the validation split): run the flow again", scope)
    baseline = rows[rows["method"] == SWA] if claim in AGAINST_SWA else standard
    model = baseline[baseline["point"] == "model" + best].set_index("seed").reindex(midpoint.index)
    if claim is MIDPOINT_CALIBRATION:
        differences = model["ece"] - midpoint["ece"]
    else:
        differences = midpoint["accuracy"] - model["accuracy"]
    return paired_difference(subspace_claim(claim, method, noise), differences, scope)


# The cost claim, checked on subspace_epochs.parquet's train_seconds


SIMILAR_COST = Claim(SUBSPACES_PAPER, "With a similar computational cost as training one model, we learn lines, "
                     "curves, and simplexes of high-accuracy neural networks.",
                     "training seconds of one {method} model in an epoch (its shard's seconds over the models it "
                     "trains together) over those of one {reference} in the same epoch, {noise} of the training labels "
                     "replaced by a wrong class")
COST_THRESHOLD = 1.3  # "similar": under 1.3x standard training (ours: the cost goal; the paper gives none)
UNTIMED = ("this run predates the timing of training (subspace_epochs.parquet has no train_seconds column): to time "
           "it, delete the run's shards/epochs/ folder and run the same command again (its shards train again)")
# the reference: the SWA arm's epochs where it has any (from swa_start on: standard training of one model per seed,
# so its shard stacks as many models as a method's, plus a running mean once an epoch); else standard training, whose
# shard stacks seeds x its largest ensemble's members, and a stacked model's seconds fall as more train together
REFERENCES = {SWA: "SWA model (standard training of as many models in one pass, its running mean included)",
              STANDARD: "standard model (its shard trains seeds x the largest ensemble's members in one pass: more "
                        "models than a method's, so cheaper per model)"}

COST_RULE = ("replicates: the epochs the reference was trained in, each method's seconds over the reference's in the "
             "same epoch (a shard trains all its seeds in one pass, so one seed's time is not separable; n_seeds: the "
             f"seeds trained); the threshold {COST_THRESHOLD:g} is ours (the issue's cost goal: the paper gives no "
             "number); wall-clock seconds of the training steps alone (not the per-epoch evaluation) on the run's own "
             "machine, with other shards possibly running beside them: noisy")


def subspace_cost_findings(epochs: pd.DataFrame, scope: str) -> pd.DataFrame:
    """Per noise level and subspace method of `epochs` (subspace_epochs.parquet's columns), its per-model training
    seconds over the reference arm's (SWA where it ran, else standard training), paired by epoch (`ratio_below`
    COST_THRESHOLD)."""
    seeds = epochs["seed"].nunique()
    if "train_seconds" not in epochs.columns:
        return findings_table([not_testable(subspace_claim(SIMILAR_COST, "subspace", reference="standard model"),
                                            UNTIMED, scope, seeds)])
    keys = ["method", "noise", "epoch"]
    seconds = epochs.drop_duplicates(keys).set_index(keys)["train_seconds"]  # one figure per shard and epoch
    reference = SWA if SWA in set(epochs["method"]) else STANDARD
    rows = []
    for noise in sorted(set(epochs["noise"])):
        baseline = seconds.xs((reference, noise), level=["method", "noise"])
        for method in sorted(set(epochs["method"]) - {STANDARD, SWA}):
            mine = seconds.xs((method, noise), level=["method", "noise"])
            ratios = (mine / baseline.reindex(mine.index)).dropna()
            claim = subspace_claim(SIMILAR_COST, method, noise, reference=REFERENCES[reference])
            row = ratio_below(claim, ratios, scope, COST_THRESHOLD, "epochs", seeds)
            rows.append({**row, "rule": f"{row['rule']}; {COST_RULE}"})
    return findings_table(rows)

