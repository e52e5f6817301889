"""Lottery tickets against pruning and fine-tuning, and the weight correlation R_p behind them.

Liu et al., "Lottery Ticket Preserves Weight Correlation: Is It Desirable or Not?" (ICML 2021): winning
tickets appear where training leaves the largest weights where initialisation put them (small learning
rates); where training moves them (the standard rate), pruning and fine-tuning wins at an equal budget.

Rows of the comparison's ensemble are method-major: row `m * B + b` is method METHODS[m] of base model b
(one learning rate and seed). Every method trains the same T updates per round, from its own start.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Literal

import pandas as pd
import torch
from torch import Tensor

from core.findings import (Claim, findings_table, not_testable, paired_difference, paired_equivalence,
                           too_few_seeds)
from core.methods.pruning import prunable_names

# where the surviving weights of each method start every round (T updates of one schedule follow)
METHODS = ("lottery_ticket", "rewind", "fine_tune", "random_reinit")
START_OF = {
    "lottery_ticket": "init",  # the dense run's initialisation (Frankle & Carbin)
    "rewind": "rewind",  # the dense run's weights after `rewind_step` updates (Frankle et al. 2020)
    "fine_tune": "trained",  # the method's own weights trained in the round before (Liu et al.'s PF)
    "random_reinit": "reinit",  # a fresh initialisation, under the lottery ticket's mask (the control)
}
MASK_FROM = {"random_reinit": "lottery_ticket"}  # the control has no chain of its own


def top_fraction(values: Tensor, p: float) -> Tensor:
    """Bool `[K, P]`: per row, the round(p * P) entries of largest magnitude (ties: the lower index)."""
    count = round(p * values.shape[1])
    order = torch.argsort(values.abs(), dim=1, descending=True, stable=True)[:, :count]
    return torch.zeros_like(values, dtype=torch.bool).scatter_(1, order, True)


CorrelationForm = Literal["eq1", "prunable_rounded"]


def weight_correlation(init: dict[str, Tensor], trained: dict[str, Tensor], names: list[str], p: float,
                       form: CorrelationForm = "eq1") -> Tensor:
    """`[K]` R_p: per layer of `names`, the weights in the top-p fraction by magnitude (round(p x its size)) both at
    initialisation and after training, summed over the layers and divided by p x their weights (`eq1`: Liu et al.'s
    Eq. 1) or by the number in the top p, rounded per layer (`prunable_rounded`: this flow's earlier form). 1 when
    training keeps the largest weights largest; about p when it reshuffles them at random."""
    if not 0 < p <= 1:
        raise ValueError(f"p={p} must be a fraction in (0, 1]")
    k = init[names[0]].shape[0]
    both, top, weights = torch.zeros(k, dtype=torch.long), torch.zeros(k, dtype=torch.long), 0
    for name in names:
        before, after = top_fraction(init[name].reshape(k, -1), p), top_fraction(trained[name].reshape(k, -1), p)
        both += (before & after).sum(1).cpu()
        top += before.sum(1).cpu()
        weights += before.shape[1]
    return both.double() / (p * weights if form == "eq1" else top.clamp(min=1))


def correlation_names(template, form: CorrelationForm, prune_output: bool) -> list[str]:
    """The weights R_p counts: every layer's, the classifier's included (`eq1`), or the prunable ones."""
    return prunable_names(template, prune_output=True if form == "eq1" else prune_output)


def method_rows(method: str, base: int) -> slice:
    """The rows of `method` in a method-major ensemble of `base` models per method."""
    m = METHODS.index(method)
    return slice(m * base, (m + 1) * base)


def mask_sources(base: int) -> Tensor:
    """`[len(METHODS) * base]` the row whose pruned mask (and mask-finding budget) each row takes."""
    return torch.cat([torch.arange(base) + METHODS.index(MASK_FROM.get(m, m)) * base for m in METHODS])


def starting_points(points: dict[str, dict[str, Tensor]], trained: dict[str, Tensor], base: int) -> dict[str, Tensor]:
    """Each method's rows of the next round's start: `points` holds the `base`-row states `init`, `rewind`
    and `reinit`; `trained` is the whole ensemble's state after the round before."""
    def rows(method: str, name: str) -> Tensor:
        start = START_OF[method]
        return trained[name][method_rows(method, base)] if start == "trained" else points[start][name].to(trained[name].device)

    return {name: torch.cat([rows(m, name) for m in METHODS]) for name in trained}


def budget(previous: Tensor, steps: Tensor, base: int) -> Tensor:
    """`[rows]` updates behind each row after a round: those that found its mask (its mask source's total
    so far) plus the round's own `steps`. Equal across methods when every round trains T updates."""
    return previous[mask_sources(base)] + steps


def method_gaps(results: pd.DataFrame) -> pd.DataFrame:
    """Per learning rate, over the pruned rounds: the mean accuracy gap lottery ticket - random reinit (a winning
    ticket's mark) and fine-tune - lottery ticket (Liu et al.'s claim), each paired by seed and round, with the
    standard error over seeds; and the dense accuracy. `results` holds lt_vs_pf.parquet's columns."""
    grouped = seed_gaps(results).groupby("lr")
    summary = grouped.mean()
    for column in ["lt_minus_random", "ft_minus_lt"]:
        summary[f"{column}_sem"] = grouped[column].sem()
    order = ["dense_accuracy", "lt_minus_random", "lt_minus_random_sem", "ft_minus_lt", "ft_minus_lt_sem", "rewind_minus_lt"]
    return summary[order].reset_index()


def seed_gaps(results: pd.DataFrame) -> pd.DataFrame:
    """Per (lr, seed): the accuracy gaps lt_minus_random, ft_minus_lt and rewind_minus_lt, each the mean over the
    pruned rounds of one seed's paired difference, and that seed's dense_accuracy (see `method_gaps`)."""
    wide = results.pivot_table(index=["lr", "seed", "density"], columns="method", values="test_accuracy")
    dense = wide["dense"].groupby(["lr", "seed"]).max()  # one dense row per (lr, seed)
    pruned = wide.drop(columns="dense").dropna()
    per_seed = pd.DataFrame({"lt_minus_random": pruned["lottery_ticket"] - pruned["random_reinit"],
                             "ft_minus_lt": pruned["fine_tune"] - pruned["lottery_ticket"],
                             "rewind_minus_lt": pruned["rewind"] - pruned["lottery_ticket"]}).groupby(["lr", "seed"]).mean()
    per_seed["dense_accuracy"] = dense
    return per_seed


# ------------------------------------------------------------------ findings: the paper's claims on the two tables
PAPER = 'Liu et al., "Lottery Ticket Preserves Weight Correlation: Is It Desirable or Not?", ICML 2021'
TIE_MARGIN = 0.01  # "unlikely to occur": a ticket's edge within one accuracy point (see NO_TICKET_WELL_TRAINED's rule)
CORRELATION_FALLS = Claim(
    PAPER, "A small learning rate preserves the correlation between initial and trained weights; a large one does not.",
    "R_p at the sweep's smallest learning rate minus R_p at its largest, mean over the fractions p, paired by seed "
    "({form})")
CORRELATION_FORMS = {"eq1": "R_p by the paper's Eq. 1: over every layer's weights, the classifier's included, divided "
                            "by p x their number",
                     "prunable_rounded": "R_p over the prunable layers, divided by the top-p count rounded per layer; "
                                         "the paper's Eq. 1 divides by p x all weights"}
TICKET_AT_SMALL_LR = Claim(
    PAPER, "With a small learning rate, the pruned network retrained from its initialisation (the winning ticket) "
    "beats a random re-initialisation of the same mask.",
    "lottery ticket minus random re-init test accuracy at the sweep's smallest learning rate, mean over the pruned "
    "rounds, paired by seed")
NO_TICKET_WELL_TRAINED = Claim(
    PAPER, "The winning property is unlikely to occur for a well-trained DNN (a large learning rate).",
    "lottery ticket minus random re-init test accuracy at the sweep's largest learning rate, mean over the pruned "
    "rounds, paired by seed")
FINE_TUNE_WINS = Claim(
    PAPER, "Pruning and fine-tuning consistently outperforms the lottery ticket at the same total epochs.",
    "fine-tune minus lottery ticket test accuracy at the sweep's largest learning rate (for the paper's standard "
    "one), mean over the pruned rounds, paired by seed; equal budgets in updates, the mask-finding rounds counted "
    "(the paper counts epochs without them)")


def weight_correlation_findings(results: pd.DataFrame, correlations: pd.DataFrame, scope: str,
                                form: CorrelationForm = "eq1") -> pd.DataFrame:
    """The paper's claims from `lt_vs_pf.parquet` (`results`) and `weight_correlation.parquet` (`correlations`, R_p
    of the run's `form`)."""
    correlation_falls = replace(CORRELATION_FALLS, measure=CORRELATION_FALLS.measure.format(
        form=CORRELATION_FORMS[form]))
    seeds, rates = results["seed"].nunique(), sorted(results["lr"].unique())
    across_rates = (correlation_falls, TICKET_AT_SMALL_LR, NO_TICKET_WELL_TRAINED)
    if why := too_few_seeds(seeds):
        return findings_table([not_testable(claim, why, scope, seeds) for claim in (*across_rates, FINE_TUNE_WINS)])
    gaps = seed_gaps(results)
    smallest, largest = gaps.loc[rates[0]], gaps.loc[rates[-1]]
    fine_tune = paired_difference(FINE_TUNE_WINS, largest["ft_minus_lt"], scope)
    if len(rates) < 2:
        why = "one learning rate: no small and large rate to compare; set learning_rates to at least two values"
        return findings_table([*(not_testable(claim, why, scope, seeds) for claim in across_rates), fine_tune])
    r_p = correlations.pivot_table(index="seed", columns=["lr", "p"], values="r_p")
    no_ticket = paired_equivalence(NO_TICKET_WELL_TRAINED, largest["lt_minus_random"], scope, TIE_MARGIN)
    no_ticket["rule"] += f" (the paper gives no number for 'unlikely': one accuracy point, {TIE_MARGIN:g}, chosen)"
    return findings_table([
        paired_difference(correlation_falls, (r_p[rates[0]] - r_p[rates[-1]]).mean(axis=1), scope),
        paired_difference(TICKET_AT_SMALL_LR, smallest["lt_minus_random"], scope), no_ticket, fine_tune])
