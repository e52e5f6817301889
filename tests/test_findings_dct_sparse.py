"""The dct_sparse flow's findings rules (core.methods.dct_sparse) on hand-made tables of 3 seeds."""
import math

import pandas as pd
import pytest

from core.findings import COLUMNS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from core.methods.dct_sparse import EXTREME_SPARSITY, IMPROVES, dct_sparse_findings

CLAIMS = [IMPROVES.claim, EXTREME_SPARSITY.claim]
SE_OF_0_01_STEPS = 0.01 / math.sqrt(3)  # the SE of three values 0.01 apart


def results(gain: dict[float, list[float]]) -> pd.DataFrame:
    """dct_sparse rows: per density and seed, sparse at 0.3 and DCT+Sparse `gain` above it; dense at 0.9 (ignored)."""
    rows = [{"layer_type": "dense", "density": 1.0, "seed": seed, "test_accuracy": 0.9} for seed in range(3)]
    for density, gains in gain.items():
        for seed, g in enumerate(gains):
            rows += [{"layer_type": "sparse", "density": density, "seed": seed, "test_accuracy": 0.3},
                     {"layer_type": "dct_sparse", "density": density, "seed": seed, "test_accuracy": 0.3 + g}]
    return pd.DataFrame(rows)


def test_dct_sparse_ahead_of_its_sparse_twin_is_supported():
    """Gains 0.1 each at density 0.1 and 0.30, 0.35, 0.40 at 0.01: per seed means 0.2, 0.225, 0.25."""
    findings = dct_sparse_findings(results({0.1: [0.1] * 3, 0.01: [0.3, 0.35, 0.4]}), "mnist1d")
    assert list(findings.columns) == list(COLUMNS) and list(findings["claim"]) == CLAIMS
    assert list(findings["estimate"]) == pytest.approx([0.225, 0.35])
    assert list(findings["se"]) == pytest.approx([2.5 * SE_OF_0_01_STEPS, 5 * SE_OF_0_01_STEPS])
    assert list(findings["verdict"]) == [SUPPORTED] * 2 and list(findings["n_seeds"]) == [3, 3]
    assert findings["measure"].str.endswith("S starting at 0 (as the authors' DCT+Sparse runs)").all()
    plain = dct_sparse_findings(results({0.1: [0.1] * 3, 0.01: [0.3, 0.35, 0.4]}), "mnist1d", "plain")
    assert plain["measure"].str.endswith("S starting from the plain layer's initial weights (the authors' runs start "
                                         "it at 0)").all()
    assert set(findings["scope"]) == {"mnist1d"} and "> 0 by more than 2 SE" in findings["rule"][0]


def test_dct_sparse_behind_its_sparse_twin_is_not_supported():
    findings = dct_sparse_findings(results({0.1: [-0.05, -0.04, -0.03], 0.01: [-0.05, -0.04, -0.03]}), "mnist1d")
    assert list(findings["estimate"]) == pytest.approx([-0.04, -0.04])
    assert list(findings["se"]) == pytest.approx([SE_OF_0_01_STEPS] * 2)
    assert list(findings["verdict"]) == [NOT_SUPPORTED] * 2


def test_seeds_that_disagree_are_inconclusive():
    findings = dct_sparse_findings(results({0.1: [-0.01, 0.0, 0.01], 0.01: [-0.01, 0.0, 0.01]}), "mnist1d")
    assert list(findings["estimate"]) == pytest.approx([0.0, 0.0], abs=1e-12)
    assert list(findings["se"]) == pytest.approx([SE_OF_0_01_STEPS] * 2)
    assert list(findings["verdict"]) == [INCONCLUSIVE] * 2


def test_no_sparse_twin_or_one_seed_is_not_testable():
    table = results({0.1: [0.1] * 3, 0.01: [0.3, 0.35, 0.4]})
    no_sparse = dct_sparse_findings(table[table["layer_type"] != "sparse"], "mnist1d")
    assert list(no_sparse["claim"]) == CLAIMS and no_sparse["estimate"].isna().all()
    assert set(no_sparse["verdict"]) == {INCONCLUSIVE}
    assert set(no_sparse["rule"]) == {"not testable here: layer_types has no sparse: add it to compare DCT+Sparse "
                                      "with plain sparse layers"}
    one_seed = dct_sparse_findings(table[table["seed"] == 0], "mnist1d")
    assert set(one_seed["rule"]) == {"not testable here: 1 seed, and a verdict needs a standard error over at least 3; "
                                     "set seeds to at least 3 values"}
    assert list(one_seed["n_seeds"]) == [1, 1]
