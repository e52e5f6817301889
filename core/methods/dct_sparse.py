"""The claims of Price & Tanner (ICML 2021) checked on a `dct_sparse` run's table.

`sparse` and `dct_sparse` networks of one seed share their masks (and, with `sparse_init: plain`, their initial
weights), so each seed pairs them.
"""
from __future__ import annotations

from dataclasses import replace

import pandas as pd
import torch
from torch import Tensor

from core.findings import Claim, findings_table, not_testable, paired_difference, ratio_below, too_few_seeds

PAPER = ('Price, Tanner, "Dense for the Price of Sparse: Improved Performance of Sparsely Initialized Networks via a '
         'Subspace Offset", ICML 2021')
SETUP = ("; random masks only, split over layers by the run's heuristic (the paper also compares prune-at-"
         "initialisation masks), {start}")
STARTS = {"zeros": "S starting at 0 (as the authors' DCT+Sparse runs)",
          "plain": "S starting from the plain layer's initial weights (the authors' runs start it at 0)"}
IMPROVES = Claim(
    PAPER, "Adding a frozen DCT offset to a sparse layer improves the performance of sparsely initialised networks.",
    "DCT+Sparse minus plain sparse test accuracy on the same masks, mean over the run's densities, paired by seed"
    + SETUP)
EXTREME_SPARSITY = Claim(
    PAPER, "DCT plus Sparse layers keep a network trainable at extreme sparsities, where plain sparse networks "
    "collapse.",
    "DCT+Sparse minus plain sparse test accuracy on the same masks at the run's sparsest density, paired by seed"
    + SETUP)


NO_MORE_STORAGE = Claim(
    PAPER, "DCT plus Sparse layers do not increase the storage footprint (paraphrased).",
    "bytes to store the DCT+Sparse network (S's nonzeros with their int32 positions, biases, one alpha per layer; D "
    "regenerated from its size) over those of the plain sparse network on the same masks, at the run's sparsest "
    "density (where the alphas weigh most), per seed")
STORAGE_MARGIN = 1.01  # "does not increase": under 1% more bytes (ours: the paper gives no number)
INDEX_BYTES = 4  # a stored nonzero's flat position, int32 (COO), beside its value


def stored_bytes(params: dict[str, Tensor], masks: dict[str, Tensor]) -> Tensor:
    """`[K]` bytes to store each model sparse: a masked weight's nonzeros (value and INDEX_BYTES position each), every
    other parameter whole. A DCT+Sparse layer's D is regenerated from its size, never stored."""
    total = torch.zeros(next(iter(params.values())).shape[0], dtype=torch.long)
    for name, value in params.items():
        if name in masks:
            total += masks[name].flatten(1).sum(1).cpu() * (value.element_size() + INDEX_BYTES)
        else:
            total += value[0].numel() * value.element_size()
    return total


def storage_row(results: pd.DataFrame, scope: str) -> dict:
    """NO_MORE_STORAGE from `stored_bytes` at the sparsest density, each seed's DCT+Sparse network over its twin."""
    sparsest = results[results["density"] == results.loc[results["layer_type"] == "sparse", "density"].min()]
    stored = sparsest.pivot_table(index="seed", columns="layer_type", values="stored_bytes")
    row = ratio_below(NO_MORE_STORAGE, stored["dct_sparse"] / stored["sparse"], scope, STORAGE_MARGIN)
    return {**row, "rule": f"{row['rule']}; the threshold {STORAGE_MARGIN:g} is ours (the paper gives no number)"}


def dct_sparse_findings(results: pd.DataFrame, scope: str, sparse_init: str = "zeros") -> pd.DataFrame:
    """The paper's claims from `dct_sparse.parquet`, each seed's DCT+Sparse network against its sparse twin; the
    measures say where the run started S (`sparse_init`)."""
    claims = [replace(c, measure=c.measure.format(start=STARTS[sparse_init])) for c in (IMPROVES, EXTREME_SPARSITY)]
    improves, extreme_sparsity = claims
    seeds = results["seed"].nunique()
    missing = [t for t in ("sparse", "dct_sparse") if t not in set(results["layer_type"])]
    if missing:
        why = f"layer_types has no {' or '.join(missing)}: add it to compare DCT+Sparse with plain sparse layers"
        return findings_table([not_testable(claim, why, scope, seeds) for claim in (*claims, NO_MORE_STORAGE)])
    if why := too_few_seeds(seeds):
        return findings_table([not_testable(claim, why, scope, seeds) for claim in (*claims, NO_MORE_STORAGE)])
    accuracy = results.pivot_table(index=["density", "seed"], columns="layer_type", values="test_accuracy")
    gain = (accuracy["dct_sparse"] - accuracy["sparse"]).dropna()
    sparsest = gain.loc[gain.index.get_level_values("density").min()]
    return findings_table([paired_difference(improves, gain.groupby("seed").mean(), scope),
                           paired_difference(extreme_sparsity, sparsest, scope), storage_row(results, scope)])
