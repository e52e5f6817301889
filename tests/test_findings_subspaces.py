"""The subspaces flow's findings rules (core.methods.subspaces.subspaces_findings) on hand-made summary tables of 3
seeds: each claim's per-seed differences from standard training, their mean and standard error by hand, the verdict;
under noise, early-stopped (each arm at its best validation epoch: points `<point>_best`) and at the last epoch."""
import math

import pandas as pd
import pytest

from core.findings import COLUMNS
from core.methods.subspaces import (ENDS_ENSEMBLE, MIDPOINT_ACCURACY, MIDPOINT_CALIBRATION, MIDPOINT_NOISE_ROBUSTNESS,
                                    MIDPOINT_NOISE_ROBUSTNESS_LAST_EPOCH, MIDPOINT_OVER_SWA,
                                    MIDPOINT_OVER_SWA_EARLY_STOPPED, SIMILAR_COST, subspace_cost_findings,
                                    subspaces_findings)

SCOPE = "digits, mlp_w16_d1, 2 epochs, 3 seeds"
SE_OF_STEP_001 = 0.01 / math.sqrt(3)  # standard error of three values 0.01 apart (sample std 0.01)
CLAIMS = [c.claim for c in (MIDPOINT_ACCURACY, MIDPOINT_CALIBRATION, MIDPOINT_NOISE_ROBUSTNESS,
                            MIDPOINT_NOISE_ROBUSTNESS_LAST_EPOCH, ENDS_ENSEMBLE, MIDPOINT_OVER_SWA,
                            MIDPOINT_OVER_SWA_EARLY_STOPPED)]
NO_SWA = "not testable here: methods has no swa: add swa to methods"


def summary_rows(noise: float, seed: int, model: tuple, midpoint: tuple, ensembles: tuple,
                 best: tuple | None) -> list[dict]:
    """subspace_summary rows of one (noise, seed): the standard model's and the line midpoint's (accuracy, ece), then
    the standard ensemble of 2, the line's ends' ensemble and a standard ensemble of 3 (accuracy; never compared),
    then (`best`) the accuracies of the standard model and of the midpoint at their best validation epochs."""
    def one(method, point, members, accuracy, ece=0.1):
        return {"method": method, "endpoints": 2 if method == "line" else 1, "noise": noise, "seed": seed,
                "point": point, "members": members, "accuracy": accuracy, "confidence": 0.5, "ece": ece}
    standard_two, ends, standard_three = ensembles
    return [one("line", "endpoint", 1, 0.0, 0.9), one("line", "ensemble", 2, ends),
            one("line", "midpoint", 1, *midpoint), one("standard", "ensemble", 2, standard_two),
            one("standard", "ensemble", 3, standard_three), one("standard", "model", 1, *model)] + (
        [one("standard", "model_best", 1, best[0], 0.5), one("line", "midpoint_best", 1, best[1], 0.5)] if best else [])


def summary_table(seeds=(0, 1, 2), noises=(0.0, 0.2), best=True) -> pd.DataFrame:
    """Clean labels: midpoint accuracy +0.02/+0.03/+0.04 over standard, ECE 0.02/0.03/0.04 worse, the ends' ensemble
    0.005/0.004/0.006 below two standard networks. 20% noise: at the last epoch midpoint accuracy +0.01/-0.01/+0.03;
    at the best validation epochs (`best`) standard 0.72, midpoint 0.75/0.74/0.76: +0.03/+0.02/+0.04."""
    rows = []
    for seed in seeds:
        rows += summary_rows(0.0, seed, (0.80 + 0.01 * seed, 0.10), (0.82 + 0.02 * seed, 0.12 + 0.01 * seed),
                             (0.85, (0.845, 0.846, 0.844)[seed], 0.99), (0.5, 0.5) if best else None
                             ) if 0.0 in noises else []
        rows += summary_rows(0.2, seed, (0.70, 0.20), ((0.71, 0.69, 0.73)[seed], 0.20), (0.75, 0.75, 0.99),
                             (0.72, (0.75, 0.74, 0.76)[seed]) if best else None) if 0.2 in noises else []
    return pd.DataFrame(rows)


def test_each_claim_is_paired_by_seed_against_standard_training():
    findings = subspaces_findings(summary_table(), SCOPE)
    assert list(findings.columns) == list(COLUMNS)
    assert findings["claim"].tolist() == CLAIMS
    assert findings["claim"].tolist()[0] == "Using the subspace midpoint boosts accuracy."
    assert findings["n_seeds"].tolist() == [3, 3, 3, 3, 3, 0, 0] and (findings["scope"] == SCOPE).all()
    accuracy, calibration, noise, noise_last_epoch, ensemble, swa, swa_early = findings.to_dict("records")
    # clean accuracy: differences 0.02, 0.03, 0.04
    assert (accuracy["estimate"], accuracy["se"]) == (pytest.approx(0.03), pytest.approx(SE_OF_STEP_001))
    assert accuracy["verdict"] == "supported"
    assert accuracy["measure"].startswith("test accuracy of the line midpoint minus that of standard training")
    # calibration, oriented standard ECE minus midpoint ECE: -0.02, -0.03, -0.04
    assert (calibration["estimate"], calibration["se"]) == (pytest.approx(-0.03), pytest.approx(SE_OF_STEP_001))
    assert calibration["verdict"] == "not supported"
    # 20% noise, early-stopped (the verdict): 0.03, 0.02, 0.04 at the best validation epochs
    assert (noise["estimate"], noise["se"]) == (pytest.approx(0.03), pytest.approx(SE_OF_STEP_001))
    assert noise["verdict"] == "supported" and "20% of the training (and validation) labels" in noise["measure"]
    assert noise["measure"].startswith("early-stopped: test accuracy (clean test labels) of the line midpoint at its")
    # 20% noise, last epoch: 0.01, -0.01, 0.03: mean 0.01, sample std 0.02
    assert (noise_last_epoch["estimate"], noise_last_epoch["se"]) == (pytest.approx(0.01),
                                                                      pytest.approx(0.02 / math.sqrt(3)))
    assert noise_last_epoch["verdict"] == "inconclusive"
    assert noise_last_epoch["measure"].startswith("last epoch (not early-stopped): test accuracy")
    # the ends' ensemble against a standard ensemble of as many (2) members: -0.005, -0.004, -0.006, inside -0.01
    assert (ensemble["estimate"], ensemble["se"]) == (pytest.approx(-0.005), pytest.approx(0.001 / math.sqrt(3)))
    assert ensemble["verdict"] == "supported" and "-0.01" in ensemble["rule"]
    for row in (swa, swa_early):
        assert row["rule"] == NO_SWA and row["verdict"] == "inconclusive" and math.isnan(row["estimate"])


def test_a_summary_without_best_epoch_rows_leaves_the_early_stopped_rows_untested():
    findings = subspaces_findings(summary_table(best=False), SCOPE)
    assert findings["claim"].tolist() == CLAIMS
    early, last_epoch = findings[findings["claim"] == MIDPOINT_NOISE_ROBUSTNESS.claim].to_dict("records")
    assert early["rule"] == ("not testable here: the summary has no best-epoch rows (a run from before the validation "
                             "split): run the flow again")
    assert early["verdict"] == "inconclusive" and early["measure"].startswith("early-stopped")
    assert last_epoch["estimate"] == pytest.approx(0.01)


def test_an_ensemble_more_than_one_point_behind_is_not_supported():
    table = summary_table(noises=(0.0,))
    table.loc[(table["method"] == "line") & (table["point"] == "ensemble"), "accuracy"] -= 0.02
    (ensemble,) = subspaces_findings(table, SCOPE).query("claim == @ENDS_ENSEMBLE.claim").to_dict("records")
    assert (ensemble["estimate"], ensemble["se"]) == (pytest.approx(-0.025), pytest.approx(0.001 / math.sqrt(3)))
    assert ensemble["verdict"] == "not supported"


def test_without_clean_labels_or_without_noise_the_claims_say_what_to_add():
    no_clean = subspaces_findings(summary_table(noises=(0.2,)), SCOPE)
    assert no_clean["claim"].tolist() == CLAIMS
    untested = no_clean[~no_clean["claim"].isin([MIDPOINT_NOISE_ROBUSTNESS.claim, MIDPOINT_OVER_SWA.claim])]
    assert (untested["rule"] == "not testable here: label_noise has no 0 (clean labels): add 0.0 to label_noise").all()
    assert untested["verdict"].eq("inconclusive").all() and untested["estimate"].isna().all()
    no_noise = subspaces_findings(summary_table(noises=(0.0,)), SCOPE)
    rows = no_noise[no_noise["claim"] == MIDPOINT_NOISE_ROBUSTNESS.claim]
    assert len(rows) == 2
    assert rows["rule"].eq("not testable here: label_noise holds only 0: add a level such as 0.2").all()


def test_one_seed_gives_no_verdict():
    findings = subspaces_findings(summary_table(seeds=(0,)), SCOPE)
    assert findings["claim"].tolist() == CLAIMS
    assert findings["verdict"].eq("inconclusive").all() and findings["se"].isna().all()
    assert findings["n_seeds"].eq(1).all()
    assert findings["rule"].eq("not testable here: 1 seed, and a verdict needs a standard error over at least 3; "
                               "set seeds to at least 3 values").all()


def with_swa(table: pd.DataFrame, accuracies: dict, best: dict | None = None) -> pd.DataFrame:
    """`table` with SWA's model rows: accuracy per (noise, seed) from `accuracies` (at the best validation epoch from
    `best`, default 0.5); ECE far from every other."""
    rows = [{"method": "swa", "endpoints": 1, "noise": noise, "seed": seed, "point": point, "members": 1,
             "accuracy": accuracy if point == "model" else (best or {}).get((noise, seed), 0.5), "confidence": 0.5,
             "ece": 0.9} for (noise, seed), accuracy in accuracies.items() for point in ("model", "model_best")]
    return pd.concat([table, pd.DataFrame(rows)], ignore_index=True)


def test_the_midpoint_against_swa_is_paired_by_seed_at_every_noise_level():
    """Line midpoints: clean 0.82/0.84/0.86, 20% noise 0.71/0.69/0.73. SWA clean 0.80/0.81/0.82 (differences
    0.02/0.03/0.04: supported), noisy 0.74/0.73/0.75 (-0.03/-0.04/-0.02: not supported). Early-stopped at 20% noise:
    midpoints 0.75/0.74/0.76, SWA 0.71/0.69/0.72 (0.04/0.05/0.04: supported)."""
    swa = {(0.0, 0): 0.80, (0.0, 1): 0.81, (0.0, 2): 0.82, (0.2, 0): 0.74, (0.2, 1): 0.73, (0.2, 2): 0.75}
    best = {(0.2, 0): 0.71, (0.2, 1): 0.69, (0.2, 2): 0.72}
    findings = subspaces_findings(with_swa(summary_table(), swa, best), SCOPE)
    assert findings["claim"].tolist() == CLAIMS[:5] + [CLAIMS[5]] * 3
    clean, noisy, early = findings[findings["claim"] == MIDPOINT_OVER_SWA.claim].to_dict("records")
    assert (early["estimate"], early["se"]) == (pytest.approx(0.13 / 3), pytest.approx(0.01 / 3))
    assert early["verdict"] == "supported" and early["measure"].startswith("early-stopped: test accuracy")
    assert "20% of the training (and validation) labels" in early["measure"]
    assert (clean["estimate"], clean["se"], clean["n_seeds"]) == (pytest.approx(0.03), pytest.approx(SE_OF_STEP_001), 3)
    assert clean["verdict"] == "supported"
    assert clean["measure"].startswith("test accuracy (clean test labels) of the line midpoint minus that of SWA")
    assert "0% of the training labels" in clean["measure"] and "20% of the training labels" in noisy["measure"]
    assert (noisy["estimate"], noisy["se"]) == (pytest.approx(-0.03), pytest.approx(SE_OF_STEP_001))
    assert noisy["verdict"] == "not supported"
    assert noisy["rule"].startswith("mean paired difference over seeds > 0 by more than 2 SE: supported")
    # the other claims still pair with standard training: SWA's rows change none of them
    assert findings.iloc[:5].equals(subspaces_findings(summary_table(), SCOPE).iloc[:5])


def test_the_midpoint_within_two_errors_of_swa_is_inconclusive():
    """20% noise: SWA 0.70 for every seed, midpoints 0.71/0.69/0.73: differences 0.01/-0.01/0.03, mean 0.01 under
    two standard errors (2 x 0.02 / sqrt 3)."""
    table = with_swa(summary_table(noises=(0.2,)), {(0.2, seed): 0.70 for seed in (0, 1, 2)})
    row, _early_stopped = subspaces_findings(table, SCOPE).query("claim == @MIDPOINT_OVER_SWA.claim").to_dict("records")
    assert (row["estimate"], row["se"]) == (pytest.approx(0.01), pytest.approx(0.02 / math.sqrt(3)))
    assert row["verdict"] == "inconclusive"


# The cost claim (core.methods.subspaces.subspace_cost_findings) on hand-made subspace_epochs tables: per (method,
# noise, epoch) one per-model train_seconds figure, repeated on every seed's row as the flow writes it.
SECONDS = {("standard", 0.0): [1.0, 2.0, 1.0, 2.0], ("line", 0.0): [1.1, 2.4, 1.2, 2.2],  # 1.1, 1.2, 1.2, 1.1
           ("simplex3", 0.0): [1.5, 3.0, 1.4, 2.8],  # 1.5, 1.5, 1.4, 1.4
           ("standard", 0.2): [1.0, 1.0, 1.0, 1.0], ("line", 0.2): [1.0, 1.6, 1.2, 1.4],  # mean 1.3: the threshold
           ("simplex3", 0.2): [1.2, 1.2, 1.2, 1.2]}  # 1.2 every epoch: SE 0
# SWA's rows exist from its swa_start on (epoch 2 here); where it ran it is the reference
SWA_SECONDS = {("swa", 0.0): [None, 2.0, 1.0, 2.0],  # line: 1.2, 1.2, 1.1; simplex3: 1.5, 1.4, 1.4
               ("swa", 0.2): [None, 0.5, 0.5, 0.5]}  # line: 3.2, 2.4, 2.8; simplex3: 2.4 every epoch


def epochs_table(seconds: dict, seeds=(0, 1, 2)) -> pd.DataFrame:
    """subspace_epochs rows (the columns the rule reads, and the point) from `seconds`."""
    return pd.DataFrame([{"method": method, "noise": noise, "seed": seed, "epoch": epoch,
                          "point": "model" if method in ("standard", "swa") else "midpoint", "train_seconds": t}
                         for (method, noise), per_epoch in seconds.items() for epoch, t in enumerate(per_epoch, 1)
                         if t is not None for seed in seeds])


def check_cost_rows(findings: pd.DataFrame, expected: list, reference: str) -> None:
    """Each row's estimate, SE and verdict, and that its measure names the method, reference and noise."""
    assert list(findings.columns) == list(COLUMNS) and findings["claim"].eq(SIMILAR_COST.claim).all()
    assert len(findings) == len(expected) and findings["n_seeds"].eq(3).all() and findings["scope"].eq(SCOPE).all()
    for row, (method, noise, estimate, se, verdict) in zip(findings.to_dict("records"), expected):
        assert (row["estimate"], row["se"], row["verdict"]) == (pytest.approx(estimate), pytest.approx(se), verdict)
        assert row["measure"].startswith(f"training seconds of one {method} model in an epoch")
        assert f"over those of one {reference}" in row["measure"]
        assert row["measure"].endswith(f"{noise:.0%} of the training labels replaced by a wrong class")


def test_the_cost_of_each_method_over_standard_training_paired_by_epoch():
    se_of_pairs = math.sqrt(4 * 0.05 ** 2 / 3) / 2  # four ratios 0.05 either side of their mean
    check_cost_rows(subspace_cost_findings(epochs_table(SECONDS), SCOPE), [
        ("line", 0.0, 1.15, se_of_pairs, "supported"), ("simplex3", 0.0, 1.45, se_of_pairs, "not supported"),
        ("line", 0.2, 1.3, math.sqrt((0.09 + 0.01 + 0.01 + 0.09) / 3) / 2, "inconclusive"),
        ("simplex3", 0.2, 1.2, 0.0, "supported")], "standard model (its shard trains seeds x the largest ensemble's")
    rule = subspace_cost_findings(epochs_table(SECONDS), SCOPE)["rule"][0]
    assert rule.startswith("mean ratio over epochs < 1.3 by more than 2 SE: supported; > 1.3 by more than 2 SE")
    for said in ("replicates: the epochs the reference was trained in", "n_seeds: the seeds trained",
                 "the threshold 1.3 is ours", "on the run's own machine"):
        assert said in rule


def test_where_swa_ran_its_epochs_are_the_reference_of_as_many_models():
    se_of_three = 0.1 / math.sqrt(3) / math.sqrt(3)  # sample std of (a, a, a - 0.1) is 0.1 / sqrt(3)
    check_cost_rows(subspace_cost_findings(epochs_table(SECONDS | SWA_SECONDS), SCOPE), [
        ("line", 0.0, 3.5 / 3, se_of_three, "supported"), ("simplex3", 0.0, 4.3 / 3, se_of_three, "not supported"),
        ("line", 0.2, 2.8, 0.4 / math.sqrt(3), "not supported"), ("simplex3", 0.2, 2.4, 0.0, "not supported")],
        "SWA model (standard training of as many models in one pass, its running mean included)")


def test_a_run_from_before_training_was_timed_says_so_in_one_row():
    findings = subspace_cost_findings(epochs_table(SECONDS).drop(columns="train_seconds"), SCOPE)
    assert len(findings) == 1 and findings["verdict"][0] == "inconclusive" and math.isnan(findings["estimate"][0])
    assert findings["rule"][0] == ("not testable here: this run predates the timing of training (subspace_epochs."
                                   "parquet has no train_seconds column): to time it, delete the run's shards/epochs/ "
                                   "folder and run the same command again (its shards train again)")
    assert findings["n_seeds"][0] == 3
