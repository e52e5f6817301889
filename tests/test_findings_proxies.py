"""The proxies flow's findings rules on hand-made records: 3 models (seeds), 2 epochs, 4 examples whose C-scores rank
them 1..4. With 4 examples Spearman's rho is 1 - 6 sum(d^2) / (4 (16 - 1)) = 1 - sum(d^2) / 10 for rank gaps d."""
import math

import numpy as np
import pandas as pd
import pytest

from core.findings import COLUMNS
from core.methods.proxies import (HIDDEN_BEATS_INPUT_DENSITY, PROXY_CLAIMS, REGULAR_LEARNED_FIRST,
                                  SPEED_BEATS_INPUT_DENSITY, SPEED_TRACKS_CSCORE, proxies_findings)

CSCORE = np.array([0.1, 0.2, 0.3, 0.4])
SPEED_RANKS = [[1, 2, 3, 4], [2, 1, 3, 4], [2, 1, 4, 3]]  # rho 1, 0.8 (sum d^2 = 2), 0.6 (4)
HIDDEN_RANKS = [[2, 4, 1, 3], [2, 3, 4, 1], [1, 4, 3, 2]]  # rho 0 (sum d^2 = 10), -0.2 (12), 0.2 (8)
INPUT_RANKS = [1, 2, 4, 3]  # rho 0.8
# correct[model, epoch, example]: the two highest-C-score examples (bin 1 of 2) are learned first
CORRECT = [[[0, 0, 1, 1], [0, 1, 1, 1]],  # top - bottom: epoch 1: 1 - 0, epoch 2: 1 - 0.5; mean 0.75
           [[0, 0, 1, 1], [1, 1, 1, 1]],  # 1 - 0, 1 - 1: 0.5
           [[0, 0, 0, 1], [1, 1, 1, 1]]]  # 0.5 - 0, 1 - 1: 0.25


def records(speed_ranks=SPEED_RANKS) -> dict[str, np.ndarray]:
    """[K, E, N] records: every example seen every epoch, its label probability its speed rank / 10 in both."""
    label_prob = np.repeat(np.array(speed_ranks, float)[:, None, :] / 10, 2, axis=1)
    return {"seen": np.ones((3, 2, 4), bool), "correct": np.array(CORRECT, bool), "label_prob": label_prob}


PROXIES = pd.DataFrame({"example_id": [10, 11, 12, 13], "input_label_contrast": np.array(INPUT_RANKS) / 10})


def findings(cscore=CSCORE, models=3, speed_ranks=SPEED_RANKS) -> pd.DataFrame:
    recorded = {name: values[:models] for name, values in records(speed_ranks).items()}
    frame = proxies_findings(PROXIES, recorded, np.array(HIDDEN_RANKS, float)[:models], cscore, 2, "toy")
    assert list(frame.columns) == list(COLUMNS) and (frame["scope"] == "toy").all()
    assert frame["claim"].tolist() == [claim.claim for claim in PROXY_CLAIMS]
    return frame.set_index(frame["claim"])


def test_each_rule_by_hand():
    rows = findings()
    speed = rows.loc[SPEED_TRACKS_CSCORE.claim]  # rho 1, 0.8, 0.6: mean 0.8, SD 0.2; 0.3 above 0.5 > 2 SE
    assert speed["estimate"] == pytest.approx(0.8) and speed["se"] == pytest.approx(0.2 / math.sqrt(3))
    assert speed["verdict"] == "supported" and speed["n_seeds"] == 3
    assert speed["rule"].startswith("mean rho over seeds > 0.5 (the usual cut-off of a strong correlation")
    versus_input = rows.loc[SPEED_BEATS_INPUT_DENSITY.claim]  # 1, 0.8, 0.6 minus 0.8
    assert versus_input["estimate"] == pytest.approx(0) and versus_input["se"] == pytest.approx(0.2 / math.sqrt(3))
    assert versus_input["verdict"] == "inconclusive"
    hidden = rows.loc[HIDDEN_BEATS_INPUT_DENSITY.claim]  # 0, -0.2, 0.2 minus 0.8
    assert hidden["estimate"] == pytest.approx(-0.8) and hidden["se"] == pytest.approx(0.2 / math.sqrt(3))
    assert hidden["verdict"] == "not supported"
    assert hidden["rule"].startswith("mean paired difference over seeds > 0 by more than 2 SE: supported")
    dynamics = rows.loc[REGULAR_LEARNED_FIRST.claim]  # 0.75, 0.5, 0.25: mean 0.5, SD 0.25
    assert dynamics["estimate"] == pytest.approx(0.5) and dynamics["se"] == pytest.approx(0.25 / math.sqrt(3))
    assert dynamics["verdict"] == "supported"


def test_a_weak_proxy_falls_short_of_a_strong_correlation():
    reversed_ranks = [[5 - r for r in ranks] for ranks in SPEED_RANKS]  # rho -1, -0.8, -0.6
    speed = findings(speed_ranks=reversed_ranks).loc[SPEED_TRACKS_CSCORE.claim]
    assert speed["estimate"] == pytest.approx(-0.8) and speed["se"] == pytest.approx(0.2 / math.sqrt(3))
    assert speed["verdict"] == "not supported"
    near = findings(speed_ranks=[[1, 2, 3, 4], [2, 3, 4, 1], [2, 1, 3, 4]]).loc[SPEED_TRACKS_CSCORE.claim]
    # rho 1, -0.2, 0.8: mean 1.6 / 3; deviations 0.4667, -0.7333, 0.2667, squares sum 0.8267: SD sqrt(0.4133)
    assert near["estimate"] == pytest.approx(1.6 / 3) and near["se"] == pytest.approx(math.sqrt(0.4133333 / 3))
    assert near["verdict"] == "inconclusive"  # 0.0333 above 0.5, within 2 SE = 0.742


def test_without_a_cscore_run_or_three_models_not_testable():
    for rows, why, seeds in [(findings(cscore=None), "no C-score to compare with; set cscore_run to the id of a cscore "
                              "run on the same data", 3),
                             (findings(models=1), "n_models=1 gives fewer than 3 seeds; set n_models to 3 or more", 1),
                             (findings(models=2), "n_models=2 gives fewer than 3 seeds; set n_models to 3 or more", 2)]:
        assert (rows["rule"] == f"not testable here: {why}").all() and (rows["verdict"] == "inconclusive").all()
        assert rows["estimate"].isna().all() and rows["se"].isna().all() and (rows["n_seeds"] == seeds).all()
