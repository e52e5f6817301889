"""The claims of Price & Tanner (ICML 2021) checked on a `dct_sparse` run's table.

`sparse` and `dct_sparse` networks of one seed and mask rule share their masks (and, with `sparse_init: plain`,
their initial weights), so each seed pairs them. The DCT+Sparse claims are judged on random masks (the paper's); the
prune-at-initialisation masks are its competitors.
"""
from __future__ import annotations

from dataclasses import replace

import pandas as pd
import torch
from torch import Tensor

from core.findings import Claim, findings_table, not_testable, paired_difference, ratio_below, too_few_seeds

PAPER = ('Price, Tanner, "Dense for the Price of Sparse: Improved Performance of Sparsely Initialized Networks via a '
         'Subspace Offset", ICML 2021')
SETUP = "; random masks split over layers by the run's heuristic, {start}"
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


BEATS_PRUNE_AT_INIT = Claim(
    PAPER, "DCT plus Sparse layers achieve state-of-the-art accuracy for extreme sparsities using only simple "
    "heuristics, without the full unpruned network that competing prune-at-initialisation algorithms need to store "
    "and compute with (paraphrased).",
    "DCT+Sparse on random masks (the run's heuristic, {start}) minus the best prune-at-initialisation competitor on "
    "plain sparse layers (the highest mean of the run's snip, grasp and synflow masks; picking it after looking "
    "favours the competitor) in test accuracy at the run's sparsest density, paired by seed")
COMPETITORS = ("grasp", "snip", "synflow")

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


def competitor_row(results: pd.DataFrame, claim: Claim, scope: str, seeds: int) -> dict:
    """BEATS_PRUNE_AT_INIT: at the sparsest density, DCT+Sparse on random masks minus the plain sparse network on the
    competitor masks of the highest mean accuracy, paired by seed; not testable without both."""
    sparse = results[results["layer_type"] == "sparse"]
    competitors = sorted(set(sparse["mask_rule"]) & set(COMPETITORS))
    if not competitors:
        why = "mask_rules has none of snip, grasp, synflow: add them to compare with prune-at-initialisation masks"
        return not_testable(claim, why, scope, seeds)
    sparsest = results[results["density"] == results["density"].min()]
    accuracy = sparsest.pivot_table(index="seed", columns=["layer_type", "mask_rule"], values="test_accuracy")
    best = accuracy["sparse"][competitors].mean().idxmax()
    row = paired_difference(claim, accuracy[("dct_sparse", "random")] - accuracy[("sparse", best)], scope)
    return {**row, "measure": f"{row['measure']} (best competitor here: {best})"}


def dct_sparse_findings(results: pd.DataFrame, scope: str, sparse_init: str = "zeros") -> pd.DataFrame:
    """The paper's claims from `dct_sparse.parquet`, each seed's DCT+Sparse network against its sparse twin on random
    masks, and against the best prune-at-initialisation masks; the measures say where the run started S."""
    claims = [replace(c, measure=c.measure.format(start=STARTS[sparse_init]))
              for c in (IMPROVES, EXTREME_SPARSITY, BEATS_PRUNE_AT_INIT)]
    improves, extreme_sparsity, beats = claims
    if "mask_rule" not in results:  # a table written before mask rules: every mask was random
        results = results.assign(mask_rule="random")
    seeds = results["seed"].nunique()
    random = results[results["mask_rule"].isin(["random", "none"])]
    missing = [t for t in ("sparse", "dct_sparse") if t not in set(random["layer_type"])]
    if missing:
        why = (f"no {' or '.join(missing)} networks on random masks: add {' and '.join(missing)} to layer_types and "
               "random to mask_rules to compare DCT+Sparse with plain sparse layers")
        return findings_table([not_testable(claim, why, scope, seeds) for claim in (*claims, NO_MORE_STORAGE)])
    if why := too_few_seeds(seeds):
        return findings_table([not_testable(claim, why, scope, seeds) for claim in (*claims, NO_MORE_STORAGE)])
    accuracy = random.pivot_table(index=["density", "seed"], columns="layer_type", values="test_accuracy")
    gain = (accuracy["dct_sparse"] - accuracy["sparse"]).dropna()
    sparsest = gain.loc[gain.index.get_level_values("density").min()]
    return findings_table([paired_difference(improves, gain.groupby("seed").mean(), scope),
                           paired_difference(extreme_sparsity, sparsest, scope),
                           competitor_row(results, beats, scope, seeds), storage_row(random, scope)])
