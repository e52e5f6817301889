"""The holdout estimator, memorization and reliability against hand-computed values."""
import numpy as np
import pytest
from scipy import stats

from core.cscore import by_ratio_table, holdout_scores, memorization, scores_of_unseen, split_half_reliability

# 4 models x 4 examples. Ratios 0.5 (models 0, 1) and 0.9 (models 2, 3).
IN_SUBSET = np.array([[1, 0, 0, 1],
                      [0, 1, 0, 1],
                      [1, 1, 0, 0],
                      [0, 0, 1, 1]], bool)
CORRECT = np.array([[1, 1, 0, 1],
                    [0, 1, 1, 0],
                    [1, 1, 1, 1],
                    [1, 0, 1, 1]], bool)
RATIOS = np.array([0.5, 0.5, 0.9, 0.9])


def test_scores_by_hand_including_a_never_held_out_example():
    scores = holdout_scores(IN_SUBSET, CORRECT, RATIOS)
    assert scores.ratios.tolist() == [0.5, 0.9]
    # example 3 is in both subsets at ratio 0.5: never held out there -> NaN, skipped by the mean
    np.testing.assert_array_equal(scores.heldout_counts, [[1, 1, 2, 0], [1, 1, 1, 1]])
    np.testing.assert_allclose(scores.by_ratio, [[0, 1, 0.5, np.nan], [1, 0, 1, 1]])
    np.testing.assert_allclose(scores.cscore, [0.5, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(scores.cscore_se, [0, 0, np.sqrt(0.5 * 0.5 / 2) / 2, 0])
    np.testing.assert_array_equal(scores.n_heldout, [2, 2, 3, 1])


def test_an_example_never_held_out_anywhere_is_nan_not_zero():
    scores = holdout_scores(np.ones((2, 1), bool), np.ones((2, 1), bool), np.array([0.5, 0.9]))
    assert np.isnan(scores.cscore[0]) and np.isnan(scores.cscore_se[0]) and scores.n_heldout[0] == 0


def test_memorization_by_hand():
    # per ratio, then averaged. Example 0: ratio 0.5 in model 0 (right) vs out model 1 (wrong) -> 1; ratio 0.9
    # both right -> 0; mean 0.5. Example 2: no model of ratio 0.5 trained on it -> only ratio 0.9 counts: 1 - 1.
    # Example 3: never held out at ratio 0.5 -> ratio 0.9 only: 1 - 1.
    np.testing.assert_allclose(memorization(IN_SUBSET, CORRECT, RATIOS), [0.5, 0.5, 0.0, 0.0])
    assert np.isnan(memorization(np.ones((2, 1), bool), np.ones((2, 1), bool), np.array([0.5, 0.9]))[0])


def test_memorization_is_not_fooled_by_larger_subsets_being_more_accurate():
    # models at ratio 0.2 get everything wrong, at 0.8 everything right, whatever they trained on: nothing is
    # memorised. Pooled over ratios, P(correct | trained) would be high only because 0.8-subsets hold more examples.
    rng = np.random.default_rng(0)
    ratios = np.repeat([0.2, 0.8], 50)
    in_subset = rng.random((100, 30)) < ratios[:, None]
    correct = np.repeat(ratios[:, None] == 0.8, 30, axis=1)
    np.testing.assert_array_equal(memorization(in_subset, correct, ratios), np.zeros(30))
    pooled = [correct[in_subset[:, i], i].mean() - correct[~in_subset[:, i], i].mean() for i in range(30)]
    assert np.mean(pooled) > 0.4  # the trap is real: pooling over ratios reads this as memorisation


def test_test_examples_count_every_model():
    scores = scores_of_unseen(CORRECT, RATIOS)
    np.testing.assert_allclose(scores.cscore, [(0.5 + 1) / 2, (1 + 0.5) / 2, (0.5 + 1) / 2, (0.5 + 1) / 2])
    assert scores.n_heldout.tolist() == [4, 4, 4, 4]


def test_split_half_reliability_matches_scipy_on_the_halves():
    rng = np.random.default_rng(0)
    difficulty = rng.random(50)
    in_subset = rng.random((40, 50)) < 0.5
    correct = rng.random((40, 50)) < difficulty
    ratios = np.repeat([0.3, 0.7], 20)
    half = np.arange(40) % 2 == 0
    first = holdout_scores(in_subset[half], correct[half], ratios[half]).cscore
    second = holdout_scores(in_subset[~half], correct[~half], ratios[~half]).cscore
    expected = stats.spearmanr(first, second).statistic
    assert split_half_reliability(in_subset, correct, ratios, half) == pytest.approx(expected)
    assert expected > 0.5  # both halves see the same per-example difficulty


def test_long_table_keeps_example_order():
    table = by_ratio_table(np.array([10, 11, 12, 13]), holdout_scores(IN_SUBSET, CORRECT, RATIOS))
    assert table["example_id"].tolist() == [10, 11, 12, 13] * 2
    assert table["ratio"].tolist() == [0.5] * 4 + [0.9] * 4
    assert table["n_heldout"].tolist() == [1, 1, 2, 0, 1, 1, 1, 1]


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="must describe the same models and examples"):
        holdout_scores(IN_SUBSET, CORRECT[:, :3], RATIOS)
