"""Soft C-scores and held-out probabilities against by-hand averages on scripted outcomes; cleanlab on them equal to
cleanlab called directly."""
import numpy as np
import pyarrow as pa
import pytest

from core.methods.cscore import holdout_scores
from core.methods.soft_cscore import cleanlab_from_holdout, mean_heldout_probabilities, soft_holdout_scores
from core.runs.rows import pack_half_rows, unpack_float_rows

# 5 models x 3 examples. Ratio 0.5: models 0-2; ratio 0.9: models 3-4.
IN_SUBSET = np.array([[1, 0, 0],
                      [0, 0, 1],
                      [0, 1, 1],
                      [1, 0, 1],
                      [0, 1, 1]], bool)
VALUES = np.array([[0.9, 0.2, 0.4],
                   [0.5, 0.6, 0.0],
                   [0.7, 0.1, 0.3],
                   [0.3, 0.8, 0.2],
                   [0.1, 0.4, 0.6]])
RATIOS = np.array([0.5, 0.5, 0.5, 0.9, 0.9])


def test_soft_scores_by_hand():
    score, se = soft_holdout_scores(IN_SUBSET, VALUES, RATIOS)
    # example 0, ratio 0.5: models 1, 2 held it out -> 0.6, sample variance 0.02; ratio 0.9: model 4 -> 0.1, alone,
    # so that ratio's mean sample variance over examples stands in: example 1 at 0.9 (model 3 only) has none either,
    # example 2 is never held out at 0.9 -> no example has one: 0
    # example 1, ratio 0.5: models 0, 1 -> 0.4, variance 0.08; ratio 0.9: model 3 -> 0.8
    # example 2, ratio 0.5: model 0 -> 0.4 (the ratio's mean spread: (0.02 + 0.08) / 2 = 0.05); ratio 0.9: none
    np.testing.assert_allclose(score, [(0.6 + 0.1) / 2, (0.4 + 0.8) / 2, 0.4])
    np.testing.assert_allclose(se, [np.sqrt(0.02 / 2 + 0) / 2, np.sqrt(0.08 / 2 + 0) / 2, np.sqrt(0.05 / 1)])


def test_on_zero_one_values_the_soft_score_is_the_cscore():
    rng = np.random.default_rng(0)
    in_subset, correct = rng.random((12, 40)) < 0.5, rng.random((12, 40)) < 0.6
    ratios = np.repeat([0.3, 0.5, 0.7], 4)
    score, _ = soft_holdout_scores(in_subset, correct.astype(float), ratios)
    np.testing.assert_allclose(score, holdout_scores(in_subset, correct, ratios).cscore)


def test_never_held_out_is_nan_and_shapes_are_checked():
    score, se = soft_holdout_scores(np.ones((2, 1), bool), np.ones((2, 1)), np.array([0.5, 0.9]))
    assert np.isnan(score[0]) and np.isnan(se[0])
    with pytest.raises(ValueError, match="same models and examples"):
        soft_holdout_scores(np.ones((2, 3), bool), np.ones((2, 4)), np.array([0.5, 0.9]))


def test_half_precision_rows_keep_three_digits():
    values = np.array([[0.123456, 0.999, 1e-4], [-12.345, 3.5, 0.0]])
    packed = pack_half_rows(values)
    assert packed.type.value_type == pa.float16()
    np.testing.assert_allclose(unpack_float_rows(packed), values, rtol=1e-3, atol=1e-7)


def test_heldout_probabilities_average_within_a_ratio_then_over_ratios():
    # 3 shards, 2 examples, 2 classes. Ratio 0.5: shards 0 and 1; ratio 0.9: shard 2.
    counts = np.array([[1, 0], [1, 2], [1, 0]])
    sums = np.array([[[0.8, 0.2], [0, 0]], [[0.4, 0.6], [1.0, 1.0]], [[0.1, 0.9], [0, 0]]])
    probabilities = mean_heldout_probabilities(np.array([0.5, 0.5, 0.9]), counts, sums)
    # example 0: ratio 0.5 (0.8 + 0.4, 0.2 + 0.6) / 2 = (0.6, 0.4); ratio 0.9 (0.1, 0.9); mean (0.35, 0.65)
    # example 1: only ratio 0.5, from 2 models: (0.5, 0.5)
    np.testing.assert_allclose(probabilities, [[0.35, 0.65], [0.5, 0.5]])
    assert np.isnan(mean_heldout_probabilities(np.array([0.5]), np.zeros((1, 1)), np.zeros((1, 1, 2)))).all()


def test_cleanlab_on_heldout_probabilities_is_cleanlab_called_directly():
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(3) * 0.5, size=60)
    labels = np.r_[np.arange(3).repeat(18), rng.integers(0, 3, 6)]
    probabilities[5] = np.nan  # never held out: no score, no flag, and no part in the others
    found = cleanlab_from_holdout(labels, probabilities)
    keep = np.arange(60) != 5
    np.testing.assert_allclose(found["cleanlab_holdout_label_quality"][keep],
                               get_label_quality_scores(labels[keep], probabilities[keep]))
    np.testing.assert_array_equal(found["is_cleanlab_holdout_issue"][keep],
                                  find_label_issues(labels[keep], probabilities[keep], n_jobs=1))
    assert np.isnan(found["cleanlab_holdout_label_quality"][5]) and not found["is_cleanlab_holdout_issue"][5]

