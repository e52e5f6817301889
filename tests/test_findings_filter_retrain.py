"""The filter_retrain flow's findings rules on a hand-made filtering.parquet: 3 seeds; fractions 0 (no arm), 0.05,
0.1 and 0.2 with the lowest, random and highest arms. Seed i of every arm is one paired replicate."""
import math

import numpy as np
import pandas as pd
import pytest

from core.findings import COLUMNS
from core.methods.filter_retrain import FILTERING_HELPS, LOWEST_ARE_MISLABELED, filter_retrain_findings

ACCURACY = {  # (fraction, arm): test accuracy of seeds 0, 1, 2
    (0.0, "none"): [0.90, 0.90, 0.90],
    (0.05, "lowest"): [0.90, 0.88, 0.90], (0.05, "random"): [0.89, 0.90, 0.88], (0.05, "highest"): [0.5, 0.5, 0.5],
    (0.1, "lowest"): [0.90, 0.92, 0.94], (0.1, "random"): [0.88, 0.88, 0.90], (0.1, "highest"): [0.5, 0.5, 0.5],
    (0.2, "lowest"): [0.80, 0.82, 0.84], (0.2, "random"): [0.90, 0.90, 0.90], (0.2, "highest"): [0.5, 0.5, 0.5],
}
NOISY_REMOVED = {(0.05, "lowest"): [2, 2, 2], (0.05, "random"): [1, 3, 2], (0.1, "lowest"): [3, 3, 3],
                 (0.1, "random"): [1, 0, 2], (0.2, "lowest"): [0, 0, 0], (0.2, "random"): [4, 5, 6]}


def filtering(arms=("none", "lowest", "random", "highest"), seeds=3) -> pd.DataFrame:
    rows = [{"score": "cscore", "arm": arm, "fraction_removed": fraction, "seed": seed, "test_accuracy": accuracy[seed],
             "n_noisy_removed": NOISY_REMOVED.get((fraction, arm), [0] * 3)[seed]}
            for (fraction, arm), accuracy in ACCURACY.items() if arm in arms for seed in range(seeds)]
    return pd.DataFrame(rows).sample(frac=1, random_state=0)  # the rule must not rely on row order


def test_each_verdict_by_hand_per_fraction():
    frame = filter_retrain_findings(filtering(), 10, "toy")
    assert list(frame.columns) == list(COLUMNS)
    assert frame["claim"].tolist() == [FILTERING_HELPS.claim] * 3 + [LOWEST_ARE_MISLABELED.claim] * 3
    assert frame["scope"].tolist() == [f"toy; {f} removed by cscore" for f in ("0.05", "0.1", "0.2")] * 2
    assert (frame["n_seeds"] == 3).all()
    expected = [  # lowest minus random per seed, then mean, SE, verdict
        # 0.01, -0.02, 0.02: sample variance (sum x^2 - 3 mean^2) / 2
        (1 / 300, math.sqrt((0.01 ** 2 + 0.02 ** 2 + 0.02 ** 2 - 3 * (1 / 300) ** 2) / 2 / 3), "inconclusive"),
        (0.1 / 3, 1 / 150, "supported"),  # 0.02, 0.04, 0.04: deviations -2/150, 1/150, 1/150
        (-0.08, 0.02 / math.sqrt(3), "not supported"),  # -0.1, -0.08, -0.06
        (0.0, 1 / math.sqrt(3), "inconclusive"),  # 1, -1, 0 mislabeled examples
        (2.0, 1 / math.sqrt(3), "supported"),  # 2, 3, 1
        (-5.0, 1 / math.sqrt(3), "not supported"),  # -4, -5, -6
    ]
    for (_, row), (estimate, se, verdict) in zip(frame.iterrows(), expected):
        assert row["estimate"] == pytest.approx(estimate) and row["se"] == pytest.approx(se)
        assert row["verdict"] == verdict
    assert frame["rule"].iloc[0].startswith("mean paired difference over seeds > 0 by more than 2 SE: supported")


def test_without_label_noise_only_the_mislabeled_claim_is_not_testable():
    frame = filter_retrain_findings(filtering(), 0, "toy")
    assert frame["claim"].tolist() == [FILTERING_HELPS.claim] * 3 + [LOWEST_ARE_MISLABELED.claim]
    last = frame.iloc[-1]
    assert last["rule"] == ("not testable here: no label is known to be wrong; set dataset.label_noise (e.g. 0.1) to "
                            "flip some")
    assert last["verdict"] == "inconclusive" and np.isnan(last["estimate"]) and last["n_seeds"] == 3


@pytest.mark.parametrize("arms, seeds, why", [
    (("none", "lowest", "highest"), 3, "it needs the lowest and random arms: set arms to include both"),
    (("none",), 3, "nothing is removed: add a fraction above 0 to fractions"),
    (("none", "lowest", "random"), 2, "seeds_per_arm=2 gives fewer than 3 seeds: set seeds_per_arm to 3 or more"),
])
def test_missing_arms_fractions_or_seeds_not_testable(arms, seeds, why):
    frame = filter_retrain_findings(filtering(arms, seeds), 10, "toy")
    assert frame["claim"].tolist() == [FILTERING_HELPS.claim, LOWEST_ARE_MISLABELED.claim]
    assert (frame["rule"] == f"not testable here: {why}").all() and (frame["verdict"] == "inconclusive").all()
    assert frame["estimate"].isna().all() and (frame["n_seeds"] == seeds).all()
