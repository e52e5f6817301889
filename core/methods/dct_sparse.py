"""The claims of Price & Tanner (ICML 2021) checked on a `dct_sparse` run's table.

`sparse` and `dct_sparse` networks of one seed share their masks (and, with `sparse_init: plain`, their initial
weights), so each seed pairs them.
"""
from __future__ import annotations

from dataclasses import replace

import pandas as pd

from core.findings import Claim, findings_table, not_testable, paired_difference, too_few_seeds

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


def dct_sparse_findings(results: pd.DataFrame, scope: str, sparse_init: str = "zeros") -> pd.DataFrame:
    """The paper's claims from `dct_sparse.parquet`, each seed's DCT+Sparse network against its sparse twin; the
    measures say where the run started S (`sparse_init`)."""
    claims = [replace(c, measure=c.measure.format(start=STARTS[sparse_init])) for c in (IMPROVES, EXTREME_SPARSITY)]
    improves, extreme_sparsity = claims
    seeds = results["seed"].nunique()
    missing = [t for t in ("sparse", "dct_sparse") if t not in set(results["layer_type"])]
    if missing:
        why = f"layer_types has no {' or '.join(missing)}: add it to compare DCT+Sparse with plain sparse layers"
        return findings_table([not_testable(claim, why, scope, seeds) for claim in claims])
    if why := too_few_seeds(seeds):
        return findings_table([not_testable(claim, why, scope, seeds) for claim in claims])
    accuracy = results.pivot_table(index=["density", "seed"], columns="layer_type", values="test_accuracy")
    gain = (accuracy["dct_sparse"] - accuracy["sparse"]).dropna()
    sparsest = gain.loc[gain.index.get_level_values("density").min()]
    return findings_table([paired_difference(improves, gain.groupby("seed").mean(), scope),
                           paired_difference(extreme_sparsity, sparsest, scope)])
