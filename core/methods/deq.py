"""Training and watching DEQs (core.models.deq's blocks): Bai et al.'s Jacobian regulariser as core.training.trainer.train hooks,
per-epoch probes of the solver and the Jacobian at z*, accuracy under capped inference, and the run's summary.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.findings import Claim, findings_table, not_testable, paired_difference, too_few_seeds
from core.models.deq import DEQBlock, hutchinson, spectral_radius
from core.models.names import parse_model_name
from core.training.hooks import TrainingHooks


def deq_layers(model: nn.Module) -> list[DEQBlock]:
    """The DEQ blocks of `model` (an ensemble's template), in module order."""
    return [module for module in model.modules() if isinstance(module, DEQBlock)]


@contextmanager
def solver_settings(layers: list[DEQBlock], **settings):
    """Set attributes (tol, max_iter, log, ...) of every layer for the duration of a `with` block."""
    saved = [{name: getattr(layer, name) for name in settings} for layer in layers]
    try:
        for layer in layers:
            for name, value in settings.items():
                setattr(layer, name, value)
        yield
    finally:
        for layer, values in zip(layers, saved):
            for name, value in values.items():
                setattr(layer, name, value)


class JacobianRegularization:
    """core.training.trainer.train's hooks for Bai et al.'s regulariser: `step` decides from each stepping model's own
    generator whether this step is penalised (with probability `fraction`); `regularizer` then draws that model's
    `samples` Gaussian probes from the same generator and gives gamma ||eps^T J_f(z*)||^2 / D (mean over probes
    and examples, summed over DEQ blocks) at the fixed points the step's forward found, 0 for a model not
    penalised. Pass `hooks()` to train()."""

    def __init__(self, ensemble, gamma: float, seeds: list[int], fraction: float = 1.0, samples: int = 1):
        self.layers = deq_layers(ensemble.template)
        if not self.layers or len(seeds) != ensemble.size:
            raise ValueError(f"need a network with a DEQ block and one seed per model ({ensemble.size}); got "
                             f"{len(seeds)} seeds and {len(self.layers)} DEQ blocks")
        if not 0 < fraction <= 1 or samples < 1 or gamma < 0:
            raise ValueError(f"need gamma >= 0, 0 < fraction <= 1 and samples >= 1; got gamma={gamma}, "
                             f"fraction={fraction}, samples={samples}")
        self.gamma, self.fraction, self.samples = gamma, fraction, samples
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.penalised = torch.zeros(ensemble.size, dtype=torch.bool)

    def step(self, takes: Tensor) -> None:
        """Draw, for each model with `takes[k]` (bool `[K]`), whether its step is penalised."""
        self.penalised[:] = False
        for k in takes.cpu().nonzero().flatten().tolist():
            self.penalised[k] = bool(torch.rand((), generator=self.generators[k]) < self.fraction)

    def regularizer(self, params: dict[str, Tensor]) -> Tensor:
        """`[K]` gamma ||eps^T J||^2 / D of the penalised models at this step's fixed points (0 elsewhere)."""
        total = next(iter(params.values())).new_zeros(len(self.penalised))
        if not self.penalised.any() or self.gamma == 0:
            return total
        for layer in self.layers:
            fz, z = layer.stats.at_fixed_point()  # a graph apart from the implicit backward's, which frees its own
            probes = torch.zeros((self.samples, *z.shape), dtype=z.dtype)
            for k in self.penalised.nonzero().flatten().tolist():
                probes[:, k] = torch.randn((self.samples, *z.shape[1:]), generator=self.generators[k], dtype=z.dtype)
            total = total + hutchinson(fz, z, probes.to(z.device))
        return self.gamma * total

    def hooks(self, epoch: Callable[[int], None] | None = None) -> TrainingHooks:
        """`step` and `regularizer` as train()'s hooks, with `epoch` (e.g. per-epoch probes) when given."""
        return TrainingHooks(step=self.step, regularizer=self.regularizer, epoch=epoch)


def probe(ensemble, x: Tensor, y: Tensor, samples: int = 8, power_iters: int = 30,
          generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """`[K]` figures of a one-block DEQ ensemble at its own solver settings on examples (x, y), all means over the
    examples: accuracy; forward and backward solver steps, relative residual and converged fraction (the backward of
    the cross-entropy); ||J_f(z*)||_F^2 / D (Hutchinson, `samples` probes); the spectral radius of J_f(z*)."""
    (layer,) = deq_layers(ensemble.template)
    with solver_settings([layer], log=None), torch.enable_grad():
        logits = ensemble(x, shared=True)
        labels = y.expand(ensemble.size, -1).to(logits.device)
        loss = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(1).sum()  # the trainer's loss
        torch.autograd.grad(loss, list(ensemble.params.values()))  # runs the implicit backward's solve
        stats = layer.stats
        fz, z = stats.at_fixed_point()
        probes = torch.randn((samples, *z.shape), generator=generator, dtype=z.dtype).to(z.device)
        figures = {"jacobian_frobenius": hutchinson(fz, z, probes).detach(),
                   "spectral_radius": spectral_radius(fz, z, power_iters, generator).mean(-1)}
    figures.update(accuracy=_accuracy(logits, y), **stats.forward.means("forward"), **stats.backward.means("backward"))
    return {name: value.detach().double().cpu() for name, value in figures.items()}


def _accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """`[K]` float64 fraction of examples whose top logit is the label."""
    return (logits.argmax(-1) == y.to(logits.device)).double().mean(-1)


@torch.no_grad()
def capped_inference(ensemble, x: Tensor, y: Tensor, caps: list[int]) -> tuple[Tensor, Tensor]:
    """`[len(caps), K]` accuracy and mean relative residual of a one-block DEQ ensemble on (x, y) when its solver
    runs exactly `cap` iterations (no tolerance: a model stops early only at an exact fixed point) and each example
    keeps its lowest-residual iterate among them, as the solver returns it."""
    (layer,) = deq_layers(ensemble.template)
    accuracy, residual = [], []
    for cap in caps:
        with solver_settings([layer], tol=0.0, max_iter=cap, log=None):
            logits = ensemble(x, shared=True)
        accuracy.append(_accuracy(logits, y).cpu())
        residual.append(layer.stats.forward.residual.double().mean(-1).cpu())
    return torch.stack(accuracy), torch.stack(residual)


def deq_summary(epochs: pd.DataFrame, inference: pd.DataFrame) -> pd.DataFrame:
    """One row per gamma at the last epoch: the mean over seeds (and its standard error, `_sem`) of accuracy, the
    training and probe solver steps, the forward residual, ||J_f||_F^2 / D, the spectral radius, the seconds per
    epoch, and the residual of capped inference at each cap (`residual_cap<c>`)."""
    last = epochs[epochs["epoch"] == epochs["epoch"].max()]
    capped = inference[inference["epoch"] == inference["epoch"].max()].pivot_table(
        index=["gamma", "seed"], columns="cap", values="residual")
    capped.columns = [f"residual_cap{c}" for c in capped.columns]
    per_seed = last.set_index(["gamma", "seed"])[SUMMARY_FIGURES].join(capped)
    grouped = per_seed.astype(float).groupby("gamma")
    means, errors = grouped.mean(), grouped[SUMMARY_ERRORS].sem().add_suffix("_sem")
    columns = [c for figure in means.columns for c in (figure, f"{figure}_sem") if c in means or c in errors]
    summary = means.join(errors)[columns].reset_index()
    summary.insert(1, "seeds", grouped.size().to_numpy())
    summary.insert(2, "epoch", int(last["epoch"].max()))
    return summary


SUMMARY_FIGURES = ["accuracy", "train_forward_steps", "train_backward_steps", "forward_steps", "backward_steps",
                   "forward_residual", "forward_converged", "jacobian_frobenius", "spectral_radius", "epoch_seconds"]
SUMMARY_ERRORS = ["accuracy", "train_forward_steps", "forward_steps", "jacobian_frobenius", "epoch_seconds"]


# Findings: the paper's claims checked on deq_epochs.parquet and deq_inference.parquet.


DEQ_PAPER = "Bai, Koltun, Kolter: Stabilizing Equilibrium Models by Jacobian Regularization (ICML 2021)"
INSTABILITY = "DEQs introduce potential instability to the model."
STABILIZES = ("The regularization significantly stabilizes the fixed-point convergence in both forward and backward "
              "passes.")
GROWING_ITERATIONS = Claim(DEQ_PAPER, INSTABILITY, "without the regulariser (gamma 0): forward solver iterations per "
                           "example in training, last epoch minus first")
GROWING_JACOBIAN = Claim(DEQ_PAPER, INSTABILITY, "without the regulariser (gamma 0): ||J_f(z*)||_F^2 / d on the probed "
                         "test examples, after the last epoch minus after the first")
FEWER_FORWARD_ITERATIONS = Claim(DEQ_PAPER, STABILIZES, "forward solver iterations per example in the last epoch's "
                                 "training, without the regulariser minus with it (gamma {gamma})")
FEWER_BACKWARD_ITERATIONS = Claim(DEQ_PAPER, STABILIZES, "backward (implicit gradient) solver iterations per example "
                                  "in the last epoch's training, without the regulariser minus with it (gamma {gamma})")
SMALLER_CAPPED_RESIDUAL = Claim(DEQ_PAPER, STABILIZES, "lowest relative residual of the fixed point within {cap} "
                                "solver iterations on the probed test examples after the last epoch, without the "
                                "regulariser minus with it (gamma {gamma})")
SMALLER_JACOBIAN = Claim(DEQ_PAPER, "The regularization explicitly regularizes the Jacobian of the fixed-point update "
                         "equations to stabilize the learning of equilibrium models.", "||J_f(z*)||_F^2 / d on the "
                         "probed test examples after the last epoch, without the regulariser minus with it "
                         "(gamma {gamma})")
SAME_PERFORMANCE = Claim(DEQ_PAPER, "With the regularization, DEQs run at approximately the same level of performance.",
                         "test accuracy after the last epoch, with the regulariser (gamma {gamma}) minus without it")
ACCURACY_MARGIN = 0.01  # "approximately the same": not worse by more than one accuracy point (ours)
COMPARED = [(FEWER_FORWARD_ITERATIONS, "train_forward_steps"), (FEWER_BACKWARD_ITERATIONS, "train_backward_steps"),
            (SMALLER_CAPPED_RESIDUAL, "residual"), (SMALLER_JACOBIAN, "jacobian_frobenius"),
            (SAME_PERFORMANCE, "accuracy")]


def deq_findings(epochs: pd.DataFrame, inference: pd.DataFrame, scope: str) -> pd.DataFrame:
    """The unregularised DEQ's growth from the first epoch to the last, then each gamma > 0 against gamma 0 after the
    last epoch, paired by seed. `epochs` and `inference` hold deq_epochs.parquet's and deq_inference.parquet's
    columns."""
    gammas, seeds, cap = sorted(set(epochs["gamma"])), epochs["seed"].nunique(), int(inference["cap"].max())
    first, last = epochs["epoch"].min(), epochs["epoch"].max()
    claims = [GROWING_ITERATIONS, GROWING_JACOBIAN, *(claim for claim, _ in COMPARED)]
    if why := too_few_seeds(seeds):
        return findings_table([not_testable(deq_claim(c, "> 0", cap), why, scope, seeds) for c in claims])
    no_baseline = "gammas has no 0: add 0.0 (the unregularised DEQ) to gammas"
    rows = []
    unregularised = epochs[epochs["gamma"] == 0].set_index(["epoch", "seed"])
    for claim, column in ((GROWING_ITERATIONS, "train_forward_steps"), (GROWING_JACOBIAN, "jacobian_frobenius")):
        if 0 not in gammas or first == last:
            why = no_baseline if 0 not in gammas else "one epoch: growth in training needs train.epochs of 2 or more"
            rows.append(not_testable(claim, why, scope, seeds))
        else:
            rows.append(paired_difference(claim, unregularised.loc[last, column] - unregularised.loc[first, column],
                                          scope))
    at_last = epochs[epochs["epoch"] == last].set_index(["gamma", "seed"])
    capped = inference[(inference["epoch"] == inference["epoch"].max()) & (inference["cap"] == cap)]
    capped = capped.set_index(["gamma", "seed"])
    regularised = [g for g in gammas if g > 0]
    for claim, column in COMPARED:
        why = no_baseline if 0 not in gammas else "gammas holds only 0: add a positive gamma such as 2.0"
        if claim is SMALLER_CAPPED_RESIDUAL and cap == 1:
            why = "monitor.caps holds only 1 (one iteration's residual is always 1): add larger caps such as 8"
        if 0 not in gammas or not regularised or (claim is SMALLER_CAPPED_RESIDUAL and cap == 1):
            rows.append(not_testable(deq_claim(claim, "> 0", cap), why, scope, seeds))
            continue
        table = capped if claim is SMALLER_CAPPED_RESIDUAL else at_last
        for gamma in regularised:
            unregularised_minus_regularised = table.loc[0.0, column] - table.loc[gamma, column]
            if claim is SAME_PERFORMANCE:
                row = paired_difference(deq_claim(claim, f"{gamma:g}", cap), -unregularised_minus_regularised, scope,
                                        -ACCURACY_MARGIN)
                row["rule"] += (f"; the threshold -{ACCURACY_MARGIN:g} reads 'approximately the same' as not worse by "
                                "more than one accuracy point (our margin: the paper gives none)")
            else:
                row = paired_difference(deq_claim(claim, f"{gamma:g}", cap), unregularised_minus_regularised, scope)
            rows.append(row)
    return findings_table(rows)


def deq_claim(claim: Claim, gamma: str, cap: int) -> Claim:
    """`claim` with its measure naming the regularisation strength and the iteration cap."""
    return replace(claim, measure=claim.measure.format(gamma=gamma, cap=cap))


# Findings against the explicit baselines (deq_baselines.parquet, deq_costs.parquet; tasks.deq writes both).


AS_CONVENTIONAL = "DEQs run with approximately the same level of performance as conventional deep networks."
CONSTANT_MEMORY = "DEQs maintain the constant memory footprint."
SAME_AS_EXPLICIT = Claim(DEQ_PAPER, AS_CONVENTIONAL, "test accuracy after the last epoch, the DEQ (gamma {gamma}) "
                         "minus the best explicit baseline ({best}, by mean accuracy over seeds)")
LESS_MEMORY = Claim(DEQ_PAPER, CONSTANT_MEMORY, "1 - the DEQ's (gamma {gamma}) memory of one training step over the "
                    "unrolled network's of depth {depth} ({method}): positive = the DEQ's is smaller")


def no_baselines(model: str) -> str:
    """Why a run of the DEQ `model` has no explicit baseline to compare with, and what to change (if anything)."""
    if parse_model_name(model).family == "deq_conv":
        return (f"no explicit baseline exists for the convolutional cell of {model}: the explicit networks "
                "unroll deq_w<width>'s tanh cell, so the flow trains none beside a conv DEQ (baselines.depths: [])")
    return "baselines.depths is empty: add the depths of the explicit networks, e.g. [2, 4, 8, 16]"


def explicit_baseline_findings(epochs: pd.DataFrame, baselines: pd.DataFrame | None, costs: pd.DataFrame,
                               scope: str, model: str) -> pd.DataFrame:
    """Each regularised DEQ (gamma > 0) against the explicit baselines, paired by seed: its accuracy after the last
    epoch minus the best baseline's, and its memory of one training step against the deepest tied unrolled
    network's. `epochs`, `baselines` and `costs` hold deq_epochs, deq_baselines (None: none trained) and deq_costs;
    `model` is the DEQ's registry name."""
    seeds, regularised = epochs["seed"].nunique(), sorted(g for g in set(epochs["gamma"]) if g > 0)
    claims = [baseline_claim(c, "> 0", best="the best", depth="the largest", method="as measured")
              for c in (SAME_AS_EXPLICIT, LESS_MEMORY)]
    why = too_few_seeds(seeds)
    if why is None and (baselines is None or baselines.empty):
        why = no_baselines(model)
    if why is None and not regularised:
        why = "gammas holds no positive gamma: add one such as 2.0"
    if why is not None:
        return findings_table([not_testable(claim, why, scope, seeds) for claim in claims])
    last = baselines[baselines["epoch"] == baselines["epoch"].max()]
    last = last.set_index(["network", "depth", "seed"]).sort_index()
    best_network, best_depth = last["accuracy"].groupby(["network", "depth"]).mean().idxmax()
    best = last.loc[(best_network, best_depth), "accuracy"]
    deq = epochs[epochs["epoch"] == epochs["epoch"].max()].set_index(["gamma", "seed"])["accuracy"]
    unrolled = costs[costs["network"] == "unrolled"]
    deepest = int(unrolled["depth"].max())
    unrolled_memory = unrolled[unrolled["depth"] == deepest].set_index("seed")["step_memory_bytes"]
    method = " and ".join(sorted(set(costs["memory_method"])))
    rows = []
    for gamma in regularised:
        claim = baseline_claim(SAME_AS_EXPLICIT, f"{gamma:g}", best=f"{best_network}{best_depth}")
        row = paired_difference(claim, deq.loc[gamma] - best, scope, -ACCURACY_MARGIN)
        row["rule"] += (f"; the threshold -{ACCURACY_MARGIN:g} reads 'approximately the same' as not worse by more "
                        "than one accuracy point (our margin: the paper gives none)")
        rows.append(row)
        deq_memory = costs[(costs["network"] == "deq") & (costs["gamma"] == gamma)].set_index("seed")
        ratio = deq_memory["step_memory_bytes"] / unrolled_memory
        rows.append(paired_difference(baseline_claim(LESS_MEMORY, f"{gamma:g}", depth=deepest, method=method),
                                      1 - ratio, scope))
    return findings_table(rows)


def baseline_claim(claim: Claim, gamma: str, **names) -> Claim:
    """`claim` with its measure naming the regularisation strength and the baselines' `names` (best, depth, method)."""
    return replace(claim, measure=claim.measure.format(gamma=gamma, **{"best": "", "depth": "", "method": "", **names}))
