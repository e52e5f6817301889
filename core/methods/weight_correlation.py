"""Lottery tickets against pruning and fine-tuning, and the weight correlation R_p behind them.

Liu et al., "Lottery Ticket Preserves Weight Correlation: Is It Desirable or Not?" (ICML 2021): winning
tickets appear where training leaves the largest weights where initialisation put them (small learning
rates); where training moves them (the standard rate), pruning and fine-tuning wins at an equal budget.

Rows of the comparison's ensemble are method-major: row `m * B + b` is method METHODS[m] of base model b
(one learning rate and seed). Every method trains the same T updates per round, from its own start.
"""
from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

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


def weight_correlation(init: dict[str, Tensor], trained: dict[str, Tensor], names: list[str], p: float) -> Tensor:
    """`[K]` R_p: per layer, the weights in the top-p fraction by magnitude both at initialisation and after
    training, summed over layers and divided by the number in the top p (p x the weights, up to rounding).
    1 when training keeps the largest weights largest; about p when it reshuffles them at random."""
    if not 0 < p <= 1:
        raise ValueError(f"p={p} must be a fraction in (0, 1]")
    k = init[names[0]].shape[0]
    both, top = torch.zeros(k, dtype=torch.long), torch.zeros(k, dtype=torch.long)
    for name in names:
        before, after = top_fraction(init[name].reshape(k, -1), p), top_fraction(trained[name].reshape(k, -1), p)
        both += (before & after).sum(1).cpu()
        top += before.sum(1).cpu()
    return both.double() / top.clamp(min=1)


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
    wide = results.pivot_table(index=["lr", "seed", "density"], columns="method", values="test_accuracy")
    dense = wide["dense"].groupby(["lr", "seed"]).max()  # one dense row per (lr, seed)
    pruned = wide.drop(columns="dense").dropna()
    per_seed = pd.DataFrame({"lt_minus_random": pruned["lottery_ticket"] - pruned["random_reinit"],
                             "ft_minus_lt": pruned["fine_tune"] - pruned["lottery_ticket"],
                             "rewind_minus_lt": pruned["rewind"] - pruned["lottery_ticket"]}).groupby(["lr", "seed"]).mean()
    per_seed["dense_accuracy"] = dense
    grouped = per_seed.groupby("lr")
    summary = grouped.mean()
    for column in ["lt_minus_random", "ft_minus_lt"]:
        summary[f"{column}_sem"] = grouped[column].sem()
    order = ["dense_accuracy", "lt_minus_random", "lt_minus_random_sem", "ft_minus_lt", "ft_minus_lt_sem", "rewind_minus_lt"]
    return summary[order].reset_index()
