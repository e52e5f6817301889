"""The data card's join and cartography coordinates, by hand."""
import numpy as np
import pandas as pd
import pytest

from core.methods.card import cartography, data_card

CSCORES = pd.DataFrame({"example_id": [10, 11, 12], "source": ["a:0", "a:1", "a:2"], "label": [0, 1, 1],
                        "true_label": [0, 0, 1], "is_noisy": [False, True, False], "cscore": [0.9, 0.0, 0.5],
                        "cscore_soft": [0.8, 0.1, 0.45], "cscore_margin": [2.0, -3.0, 0.1]})
HELDOUT = pd.DataFrame({"example_id": [12, 10, 11], "label": [1, 0, 1], "predicted_label": [1, 0, 0],
                        "cleanlab_holdout_label_quality": [0.45, 0.8, 0.1],
                        "is_cleanlab_holdout_issue": [False, False, True]})
PROXIES = pd.DataFrame({"example_id": [11, 12, 10], "aum": [-2.0, 0.5, 3.0], "neg_forgetting": [-3.0, -1.0, 0.0],
                        "cleanlab_label_quality": [0.2, 0.5, 0.9], "cleanlab_issue": [True, False, False]})


def test_cartography_by_hand():
    # 2 models, 3 epochs, 2 examples; model 1 did not record example 1 in epoch 3
    label_prob = np.array([[[0.2, 0.9], [0.6, 0.9], [1.0, 0.9]], [[0.5, 0.1], [0.5, 0.3], [0.5, 7.0]]])
    correct = label_prob > 0.55
    seen = np.ones_like(correct)
    seen[1, 2, 1] = False
    coordinates = cartography(label_prob, correct, seen)
    # example 0: model 0 mean 0.6, std sqrt((0.16 + 0 + 0.16) / 3), correct 2/3; model 1 mean 0.5, std 0, correct 0
    # example 1: model 0 mean 0.9, std 0, correct 1; model 1 over epochs 1-2 only: mean 0.2, std 0.1, correct 0
    np.testing.assert_allclose(coordinates["confidence"], [0.55, 0.55])
    np.testing.assert_allclose(coordinates["variability"], [np.sqrt(0.32 / 3) / 2, 0.05])
    np.testing.assert_allclose(coordinates["correctness"], [1 / 3, 0.5])
    assert np.isnan(cartography(label_prob, correct, np.zeros_like(seen))["confidence"]).all()


def test_card_joins_every_example_once_in_the_cscore_runs_order():
    coordinates = {"confidence": np.array([0.1, 0.6, 0.95]), "variability": np.array([0.05, 0.3, 0.02]),
                   "correctness": np.array([0.0, 0.5, 1.0])}  # in the order of PROXIES: ids 11, 12, 10
    card = data_card(CSCORES, HELDOUT, PROXIES, coordinates)
    assert card["example_id"].tolist() == [10, 11, 12]
    assert card.loc[1].to_dict() == {
        "example_id": 11, "source": "a:1", "given_label": 1, "predicted_label": 0, "true_label": 0, "is_noisy": True,
        "is_foreign": False, "cscore_score": 0.0, "cscore_soft_score": 0.1, "cscore_margin_score": -3.0,
        "cleanlab_holdout_score": 0.1, "is_cleanlab_holdout_issue": True, "aum_score": -2.0, "forgetting_score": -3.0,
        "cleanlab_score": 0.2, "is_cleanlab_issue": True, "confidence": 0.1, "variability": 0.05, "correctness": 0.0}
    assert card.loc[0, ["predicted_label", "aum_score", "confidence", "is_cleanlab_issue"]].tolist() == [0, 3.0, 0.95, False]
    assert card.loc[2, ["predicted_label", "cscore_soft_score", "correctness", "is_cleanlab_holdout_issue"]].tolist() == [
        1, 0.45, 0.5, False]


def test_card_of_a_cscore_run_alone_and_runs_on_other_examples():
    card = data_card(CSCORES)
    assert card.columns.tolist() == ["example_id", "source", "given_label", "predicted_label", "true_label",
                                     "is_noisy", "is_foreign", "cscore_score", "cscore_soft_score", "cscore_margin_score"]
    assert card["predicted_label"].tolist() == [-1] * 3
    with pytest.raises(ValueError, match=r"proxies.parquet scores 3 examples \(1 not in the C-score run\), the C-score "
                                         r"run 3 \(1 missing there\): the runs must be on the same dataset settings"):
        data_card(CSCORES, proxies=PROXIES.assign(example_id=[11, 12, 99]))
