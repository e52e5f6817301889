"""The weight_correlation flow's findings rules (core.methods.weight_correlation) on hand-made tables of 3 seeds."""
import math

import pandas as pd
import pytest

from core.findings import COLUMNS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from core.methods.weight_correlation import (CORRELATION_FALLS, FINE_TUNE_WINS, NO_TICKET_WELL_TRAINED,
                                             TICKET_AT_SMALL_LR, weight_correlation_findings)

CLAIMS = [c.claim for c in (CORRELATION_FALLS, TICKET_AT_SMALL_LR, NO_TICKET_WELL_TRAINED, FINE_TUNE_WINS)]
SE_OF_0_01_STEPS = 0.01 / math.sqrt(3)  # the SE of three values 0.01 apart
SMALL, LARGE = 0.01, 0.1


def results(lt_minus_random: dict[float, list[float]], ft_minus_lt: list[float]) -> pd.DataFrame:
    """lt_vs_pf rows, two pruned rounds: per learning rate and seed, the lottery ticket at 0.5 in round 1 and 0.4 in
    round 2, random re-init `lt_minus_random` below it in both, fine-tune `ft_minus_lt` above it at the large rate
    (0.01 above at the small one), rewind equal to it; the dense network at 0.6."""
    rows = []
    for lr, gaps in lt_minus_random.items():
        for seed, gap in enumerate(gaps):
            rows.append({"lr": lr, "method": "dense", "density": 1.0, "seed": seed, "test_accuracy": 0.6})
            for density, ticket in ((0.8, 0.5), (0.64, 0.4)):
                fine_tune = ticket + (ft_minus_lt[seed] if lr == LARGE else 0.01)
                rows += [{"lr": lr, "method": method, "density": density, "seed": seed, "test_accuracy": accuracy}
                         for method, accuracy in (("lottery_ticket", ticket), ("rewind", ticket),
                                                  ("fine_tune", fine_tune), ("random_reinit", ticket - gap))]
    return pd.DataFrame(rows)


def correlations(small: list[float], large: list[float]) -> pd.DataFrame:
    """R_p per seed at p = 0.1 as given, and at p = 0.5 0.2 higher (so the mean over p differs by the same)."""
    return pd.DataFrame([{"lr": lr, "p": p, "r_p": r + (0.2 if p == 0.5 else 0.0), "seed": seed}
                         for lr, values in ((SMALL, small), (LARGE, large)) for p in (0.1, 0.5)
                         for seed, r in enumerate(values)])


def test_the_paper_s_pattern_is_supported():
    """R_p falls by 0.40, 0.35, 0.30; the ticket's edge 0.05, 0.06, 0.07 at the small rate and 0, 0.001, 0.002 (SE
    0.001 / sqrt 3, inside ± 0.01) at the large one; fine-tuning 0.02, 0.03, 0.04 ahead at the large rate."""
    findings = weight_correlation_findings(results({SMALL: [0.05, 0.06, 0.07], LARGE: [0.0, 0.001, 0.002]},
                                                   [0.02, 0.03, 0.04]),
                                           correlations([0.6, 0.6, 0.6], [0.2, 0.25, 0.3]), "mnist1d")
    assert list(findings.columns) == list(COLUMNS) and list(findings["claim"]) == CLAIMS
    assert list(findings["estimate"]) == pytest.approx([0.35, 0.06, 0.001, 0.03])
    assert list(findings["se"]) == pytest.approx([s * SE_OF_0_01_STEPS for s in (5, 1, 0.1, 1)])
    assert list(findings["verdict"]) == [SUPPORTED] * 4 and list(findings["n_seeds"]) == [3] * 4
    assert "inside ± 0.01" in findings["rule"][2] and "> 0 by more than 2 SE" in findings["rule"][3]
    assert findings["measure"][0].endswith("paired by seed (R_p by the paper's Eq. 1: over every layer's weights, the "
                                           "classifier's included, divided by p x their number)")
    earlier = weight_correlation_findings(results({SMALL: [0.05, 0.06, 0.07], LARGE: [0.0, 0.001, 0.002]},
                                                  [0.02, 0.03, 0.04]),
                                          correlations([0.6, 0.6, 0.6], [0.2, 0.25, 0.3]), "mnist1d", "prunable_rounded")
    assert earlier["measure"][0].endswith("(R_p over the prunable layers, divided by the top-p count rounded per layer; "
                                          "the paper's Eq. 1 divides by p x all weights)")


def test_the_opposite_pattern_is_not_supported():
    """R_p rises by 0.1, 0.11, 0.12 with the rate; the ticket loses 0.05-0.07 at the small rate, wins by 0.05-0.07 at
    the large one (0.06 - 2 SE outside ± 0.01); fine-tuning trails by 0.02-0.04."""
    findings = weight_correlation_findings(results({SMALL: [-0.05, -0.06, -0.07], LARGE: [0.05, 0.06, 0.07]},
                                                   [-0.02, -0.03, -0.04]),
                                           correlations([0.2, 0.2, 0.2], [0.3, 0.31, 0.32]), "mnist1d")
    assert list(findings["estimate"]) == pytest.approx([-0.11, -0.06, 0.06, -0.03])
    assert list(findings["se"]) == pytest.approx([SE_OF_0_01_STEPS] * 4)
    assert list(findings["verdict"]) == [NOT_SUPPORTED] * 4


def test_seeds_that_disagree_are_inconclusive():
    """Each difference -0.01, 0, +0.01 over the seeds (mean 0); the large rate's ticket edge 0, 0.01, 0.02 (mean 0.01
    = the margin)."""
    findings = weight_correlation_findings(results({SMALL: [-0.01, 0.0, 0.01], LARGE: [0.0, 0.01, 0.02]},
                                                   [-0.01, 0.0, 0.01]),
                                           correlations([0.29, 0.3, 0.31], [0.3, 0.3, 0.3]), "mnist1d")
    assert list(findings["estimate"]) == pytest.approx([0.0, 0.0, 0.01, 0.0], abs=1e-12)
    assert list(findings["se"]) == pytest.approx([SE_OF_0_01_STEPS] * 4)
    assert list(findings["verdict"]) == [INCONCLUSIVE] * 4


def test_one_learning_rate_tests_only_fine_tuning_and_one_seed_nothing():
    table = results({SMALL: [0.05, 0.06, 0.07], LARGE: [0.0, 0.001, 0.002]}, [0.02, 0.03, 0.04])
    r_p = correlations([0.6, 0.6, 0.6], [0.2, 0.25, 0.3])
    one_rate = weight_correlation_findings(table[table["lr"] == LARGE], r_p[r_p["lr"] == LARGE], "mnist1d")
    assert list(one_rate["claim"]) == CLAIMS and list(one_rate["verdict"]) == [INCONCLUSIVE] * 3 + [SUPPORTED]
    assert set(one_rate["rule"][:3]) == {"not testable here: one learning rate: no small and large rate to compare; "
                                         "set learning_rates to at least two values"}
    assert one_rate["estimate"][3] == pytest.approx(0.03)
    one_seed = weight_correlation_findings(table[table["seed"] == 0], r_p[r_p["seed"] == 0], "mnist1d")
    assert list(one_seed["claim"]) == CLAIMS and one_seed["estimate"].isna().all()
    assert set(one_seed["rule"]) == {"not testable here: 1 seed, and a verdict needs a standard error over at least 3; "
                                     "set seeds to at least 3 values"}
