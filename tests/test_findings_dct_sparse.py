"""The dct_sparse flow's findings rules (core.methods.dct_sparse) on hand-made tables of 3 seeds."""
import math

import pandas as pd
import pytest
import torch

from core.findings import COLUMNS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from core.methods.dct_sparse import (BEATS_PRUNE_AT_INIT, EXTREME_SPARSITY, IMPROVES, NO_MORE_STORAGE,
                                     dct_sparse_findings, stored_bytes)

CLAIMS = [IMPROVES.claim, EXTREME_SPARSITY.claim, BEATS_PRUNE_AT_INIT.claim, NO_MORE_STORAGE.claim]
NO_COMPETITORS = "not testable here: mask_rules has none of snip, grasp, synflow: add them to compare with " \
    "prune-at-initialisation masks"
SE_OF_0_01_STEPS = 0.01 / math.sqrt(3)  # the SE of three values 0.01 apart


def results(gain: dict[float, list[float]], extra_bytes: float = 8) -> pd.DataFrame:
    """dct_sparse rows: per density and seed, sparse at 0.3 and DCT+Sparse `gain` above it; dense at 0.9 (ignored);
    stored bytes 1,000 x density x 100 + 100 for sparse, `extra_bytes` more for DCT+Sparse."""
    rows = [{"layer_type": "dense", "density": 1.0, "seed": seed, "test_accuracy": 0.9, "stored_bytes": 1e5}
            for seed in range(3)]
    for density, gains in gain.items():
        stored = 1000 * density * 100 + 100
        for seed, g in enumerate(gains):
            rows += [{"layer_type": "sparse", "density": density, "seed": seed, "test_accuracy": 0.3,
                      "stored_bytes": stored},
                     {"layer_type": "dct_sparse", "density": density, "seed": seed, "test_accuracy": 0.3 + g,
                      "stored_bytes": stored + extra_bytes}]
    return pd.DataFrame(rows)


def test_dct_sparse_ahead_of_its_sparse_twin_is_supported():
    """Gains 0.1 each at density 0.1 and 0.30, 0.35, 0.40 at 0.01: per seed means 0.2, 0.225, 0.25."""
    findings = dct_sparse_findings(results({0.1: [0.1] * 3, 0.01: [0.3, 0.35, 0.4]}), "mnist1d")
    assert list(findings.columns) == list(COLUMNS) and list(findings["claim"]) == CLAIMS
    assert list(findings["estimate"][:2]) == pytest.approx([0.225, 0.35])
    assert list(findings["se"][:2]) == pytest.approx([2.5 * SE_OF_0_01_STEPS, 5 * SE_OF_0_01_STEPS])
    assert list(findings["verdict"]) == [SUPPORTED, SUPPORTED, INCONCLUSIVE, SUPPORTED]
    assert list(findings["n_seeds"]) == [3] * 4 and findings["rule"][2] == NO_COMPETITORS  # a table without mask_rule
    assert findings["measure"][:2].str.endswith("S starting at 0 (as the authors' DCT+Sparse runs)").all()
    plain = dct_sparse_findings(results({0.1: [0.1] * 3, 0.01: [0.3, 0.35, 0.4]}), "mnist1d", "plain")
    assert plain["measure"][:2].str.endswith("S starting from the plain layer's initial weights (the authors' runs start "
                                         "it at 0)").all()
    assert set(findings["scope"]) == {"mnist1d"} and "> 0 by more than 2 SE" in findings["rule"][0]


def test_dct_sparse_behind_its_sparse_twin_is_not_supported():
    findings = dct_sparse_findings(results({0.1: [-0.05, -0.04, -0.03], 0.01: [-0.05, -0.04, -0.03]}), "mnist1d")
    assert list(findings["estimate"][:2]) == pytest.approx([-0.04, -0.04])
    assert list(findings["se"][:2]) == pytest.approx([SE_OF_0_01_STEPS] * 2)
    assert list(findings["verdict"][:2]) == [NOT_SUPPORTED] * 2


def test_seeds_that_disagree_are_inconclusive():
    findings = dct_sparse_findings(results({0.1: [-0.01, 0.0, 0.01], 0.01: [-0.01, 0.0, 0.01]}), "mnist1d")
    assert list(findings["estimate"][:2]) == pytest.approx([0.0, 0.0], abs=1e-12)
    assert list(findings["se"][:2]) == pytest.approx([SE_OF_0_01_STEPS] * 2)
    assert list(findings["verdict"][:2]) == [INCONCLUSIVE] * 2


def test_no_sparse_twin_or_one_seed_is_not_testable():
    table = results({0.1: [0.1] * 3, 0.01: [0.3, 0.35, 0.4]})
    no_sparse = dct_sparse_findings(table[table["layer_type"] != "sparse"], "mnist1d")
    assert list(no_sparse["claim"]) == CLAIMS and no_sparse["estimate"].isna().all()
    assert set(no_sparse["verdict"]) == {INCONCLUSIVE}
    assert set(no_sparse["rule"]) == {"not testable here: no sparse networks on random masks: add sparse to "
                                      "layer_types and random to mask_rules to compare DCT+Sparse with plain sparse "
                                      "layers"}
    one_seed = dct_sparse_findings(table[table["seed"] == 0], "mnist1d")
    assert set(one_seed["rule"]) == {"not testable here: 1 seed, and a verdict needs a standard error over at least 3; "
                                     "set seeds to at least 3 values"}
    assert list(one_seed["n_seeds"]) == [1] * 4 and list(one_seed["claim"]) == CLAIMS


def with_competitors(dct_random: list[float], competitors: dict[str, list[float]]) -> pd.DataFrame:
    """Densities 0.1 and 0.01: sparse random at 0.3 everywhere; at 0.01, DCT+Sparse random at `dct_random` per seed
    and plain sparse on each competitor's masks at its accuracies (at 0.1 everything at 0.5: never compared)."""
    table = results({0.1: [0.1] * 3, 0.01: [d - 0.3 for d in dct_random]}).assign(mask_rule="random")
    table.loc[table["layer_type"] == "dense", "mask_rule"] = "none"
    rows = [{"layer_type": t, "mask_rule": rule, "density": density, "seed": seed, "stored_bytes": 1.0,
             "test_accuracy": accuracy[seed] if density == 0.01 else 0.5}
            for rule, accuracy in competitors.items() for t in ("sparse", "dct_sparse") for density in (0.1, 0.01)
            for seed in range(3)]
    return pd.concat([table, pd.DataFrame(rows)], ignore_index=True)


@pytest.mark.parametrize("dct_random, verdict", [([0.45, 0.46, 0.47], SUPPORTED), ([0.30, 0.31, 0.32], NOT_SUPPORTED),
                                                 ([0.39, 0.40, 0.41], INCONCLUSIVE)])
def test_random_dct_sparse_against_the_best_competitor_at_the_sparsest_density(dct_random, verdict):
    """snip means 0.40, synflow 0.38, grasp 0.10 (and its DCT+Sparse rows 0.9: ignored): snip is the best; paired
    differences dct_random - (0.39, 0.40, 0.41)."""
    competitors = {"snip": [0.39, 0.40, 0.41], "synflow": [0.40, 0.37, 0.37], "grasp": [0.1] * 3}
    table = with_competitors(dct_random, competitors)
    table.loc[(table["mask_rule"] == "grasp") & (table["layer_type"] == "dct_sparse"), "test_accuracy"] = 0.9
    row = dct_sparse_findings(table, "mnist1d").set_index("claim").loc[BEATS_PRUNE_AT_INIT.claim]
    differences = [d - c for d, c in zip(dct_random, competitors["snip"])]
    assert row["estimate"] == pytest.approx(sum(differences) / 3)
    assert row["se"] == pytest.approx(torch.tensor(differences).std().item() / math.sqrt(3), abs=1e-12)
    assert row["verdict"] == verdict and row["measure"].endswith("(best competitor here: snip)")
    assert "S starting at 0" in row["measure"] and "> 0 by more than 2 SE" in row["rule"]


def test_competitor_rows_leave_the_random_mask_claims_as_they_were():
    plain = dct_sparse_findings(with_competitors([0.45, 0.46, 0.47], {}), "mnist1d")
    mixed = dct_sparse_findings(with_competitors([0.45, 0.46, 0.47], {"synflow": [0.9, 0.8, 0.7]}), "mnist1d")
    for column in ("estimate", "se", "verdict"):
        assert plain[column][[0, 1, 3]].tolist() == mixed[column][[0, 1, 3]].tolist()
    assert plain["rule"][2] == NO_COMPETITORS and mixed["verdict"][2] == NOT_SUPPORTED


@pytest.mark.parametrize("extra_bytes, verdict", [(8, SUPPORTED), (20, NOT_SUPPORTED)])
def test_storage_at_the_sparsest_density_against_one_percent(extra_bytes, verdict):
    """At density 0.01 both store 1,100 bytes plus DCT+Sparse's extra: 8 more is 1.0073x, 20 more 1.018x (SE 0)."""
    findings = dct_sparse_findings(results({0.1: [0.1] * 3, 0.01: [0.3, 0.35, 0.4]}, extra_bytes), "mnist1d")
    row = findings.set_index("claim").loc[NO_MORE_STORAGE.claim]
    assert (row["estimate"], row["se"], row["verdict"]) == (pytest.approx(1 + extra_bytes / 1100), 0.0, verdict)
    assert row["rule"].endswith("the threshold 1.01 is ours (the paper gives no number)")


def test_stored_bytes_by_hand_and_as_safetensors_saves_them():
    """Model 0 keeps 5 of its 12 weights, model 1 seven: 5 x (4 + 4) + 3 biases x 4 + 1 alpha x 4 = 56, and 72; a
    float64 weight stores 8 + 4 bytes a nonzero. The same count is the payload of a safetensors file of model 0's
    nonzeros (float32 values, int32 positions), bias and alpha."""
    from safetensors.torch import save
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[0].view(-1)[:5], mask[1].view(-1)[3:10] = True, True
    params = {"w": torch.randn(2, 3, 4), "b": torch.zeros(2, 3), "alpha": torch.ones(2)}
    assert stored_bytes(params, {"w": mask}).tolist() == [56, 72]
    assert stored_bytes({**params, "w": params["w"].double()}, {"w": mask}).tolist() == [5 * 12 + 16, 7 * 12 + 16]
    flat = mask[0].flatten()
    blob = save({"w.values": params["w"][0].flatten()[flat], "w.positions": flat.nonzero().flatten().int(),
                 "b": params["b"][0], "alpha": params["alpha"][0:1]})
    header = int.from_bytes(blob[:8], "little")
    assert len(blob) - 8 - header == 56
