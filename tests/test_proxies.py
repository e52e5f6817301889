"""Proxies against direct computations on tiny inputs."""
import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from core.methods.proxies import (area_under_margin, cumulative_accuracy, cumulative_label_probability, detection_metrics, learning_dynamics,
                          forgetting_events, kernel_density_proxies, local_outlier_factor, median_bandwidth,
                          rank_correlations)


def test_forgetting_events_by_hand():
    # one model, 4 epochs, 4 examples
    correct = np.array([[[1, 0, 1, 1], [0, 0, 1, 0], [1, 0, 1, 1], [0, 0, 1, 0]]], bool)
    seen = np.ones_like(correct)
    seen[0, 1, 3] = False  # example 3 is skipped in epoch 1: 1, -, 1, 0 -> one event, not two
    assert forgetting_events(correct, seen).tolist() == [2.0, 4.0, 0.0, 1.0]  # never learned counts E = 4


def test_forgetting_events_average_over_models():
    correct = np.array([[[1], [0]], [[1], [1]]], bool)  # model 0 forgets once, model 1 never
    assert forgetting_events(correct, np.ones_like(correct)).tolist() == [0.5]


def test_forgetting_events_skip_models_that_never_saw_the_example():
    # 2 models, 2 epochs, 2 examples; model 1 never drew example 1 (held out), example 0 it never got right
    correct = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], bool)
    seen = np.array([[[1, 1], [1, 1]], [[1, 0], [1, 0]]], bool)
    assert forgetting_events(correct, seen).tolist() == [1.5, 1.0]  # (1 + E) / 2, then model 0's one event alone
    assert np.isnan(forgetting_events(correct, np.zeros_like(seen))).all()


def test_learning_speed_and_aum_skip_unrecorded_entries():
    prob = np.array([[[0.2, 0.9], [0.6, 0.1]]])  # [K=1, E=2, N=2]
    seen = np.array([[[True, True], [True, False]]])
    np.testing.assert_allclose(cumulative_label_probability(prob, seen), [0.4, 0.9])
    np.testing.assert_allclose(cumulative_accuracy(prob > 0.5, seen), [0.5, 1.0])
    np.testing.assert_allclose(area_under_margin(np.array([[[-1.0, 2.0], [3.0, 9.0]]]), seen), [1.0, 2.0])
    assert np.isnan(cumulative_accuracy(prob > 0.5, np.zeros_like(seen))).all()


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_densities_equal_a_double_loop(device):
    rng = np.random.default_rng(1)
    x, y, h = rng.normal(size=(9, 3)), np.array([0, 1, 0, 2, 1, 0, 2, 2, 1]), 1.3
    got = kernel_density_proxies(x, y, h, chunk=4, device=device)  # three chunks
    k = lambda i, j: np.exp(-np.sum((x[i] - x[j]) ** 2) / (2 * h**2))  # noqa: E731
    for i in range(9):
        others = [j for j in range(9) if j != i]
        same = [k(i, j) for j in others if y[j] == y[i]]
        other = [k(i, j) for j in others if y[j] != y[i]]
        assert got["density"][i] == pytest.approx(np.mean([k(i, j) for j in others]), rel=1e-5)
        assert got["same_label_density"][i] == pytest.approx(np.mean(same), rel=1e-5)
        assert got["label_contrast"][i] == pytest.approx(np.mean(same) - np.mean(other), rel=1e-5, abs=1e-7)


def test_median_bandwidth_is_the_median_pairwise_distance():
    x = np.array([[0.0, 0], [3, 4], [6, 8], [0, 1]])
    distances = [np.linalg.norm(a - b) for a, b in itertools.combinations(x, 2)]
    assert median_bandwidth(x) == pytest.approx(np.median(distances))


def test_lof_ranks_the_outlier_lowest():
    x = np.vstack([np.random.default_rng(0).normal(size=(30, 2)), [[15.0, 15.0]]])
    scores = local_outlier_factor(x, n_neighbors=5)
    assert scores.argmin() == 30 and scores[30] < -3


def test_detection_metrics_by_hand():
    score = np.array([0.1, 0.4, 0.35, 0.8, np.nan])  # NaN scores are left out
    noisy = np.array([True, False, True, False, True])
    # low score = noisy; noisy scores {0.1, 0.35}, clean {0.4, 0.8}: every noisy below every clean
    result = detection_metrics(score, noisy)
    assert result == {"auroc": 1.0, "average_precision": 1.0, "precision_at_k": 1.0, "k": 2}
    score = np.array([0.1, 0.3, 0.5, 0.7])
    noisy = np.array([True, False, False, True])
    pairs = [(a < b) for a in score[noisy] for b in score[~noisy]]  # Mann-Whitney by pairs
    result = detection_metrics(score, noisy)
    assert result["auroc"] == pytest.approx(np.mean(pairs)) and result["precision_at_k"] == 0.5
    # AP over the ranking 0.1 (noisy), 0.3, 0.5, 0.7 (noisy): precisions 1/1 and 2/4
    assert result["average_precision"] == pytest.approx((1 + 0.5) / 2)
    assert np.isnan(detection_metrics(score, np.zeros(4, bool))["auroc"])


def test_rank_correlations_match_scipy_with_intervals():
    rng = np.random.default_rng(2)
    target = rng.random(200)
    proxy = target + rng.normal(scale=0.3, size=200)
    proxy[:3] = np.nan
    got = rank_correlations(proxy, target, n_bootstrap=100)
    assert got["n"] == 197
    assert got["spearman"] == pytest.approx(stats.spearmanr(proxy[3:], target[3:]).statistic)
    assert got["kendall"] == pytest.approx(stats.kendalltau(proxy[3:], target[3:]).statistic)
    assert got["spearman_low"] < got["spearman"] < got["spearman_high"]
    assert got["kendall_low"] < got["kendall"] < got["kendall_high"]


def test_learning_dynamics_by_hand():
    # 1 model, 2 epochs, 4 examples; scores put examples 1, 3 in the low bin and 0, 2 in the high bin
    correct = np.array([[[1, 0, 1, 1], [1, 1, 1, 0]]], bool)
    seen = np.ones_like(correct)
    seen[0, 1, 3] = False
    table = learning_dynamics(correct, seen, np.array([0.9, 0.1, 0.8, 0.2]), bins=2)
    low, high = table[table.bin == 0], table[table.bin == 1]
    assert low["train_accuracy"].tolist() == [0.5, 1.0]  # epoch 2: only example 1 was recorded
    assert high["train_accuracy"].tolist() == [1.0, 1.0]
    assert low["cscore_high"].iloc[0] == 0.2 and high["cscore_low"].iloc[0] == 0.8
    assert table["n_examples"].tolist() == [2, 2, 2, 2] and table["epoch"].tolist() == [1, 2, 1, 2]


def test_learning_dynamics_reports_an_empty_bin():
    correct, seen = np.ones((1, 2, 3), bool), np.ones((1, 2, 3), bool)
    table = learning_dynamics(correct, seen, np.array([0.1, np.nan, 0.9]), bins=3)  # 2 finite scores, 3 bins
    assert table.groupby("bin")["n_examples"].first().tolist() == [1, 1, 0]
    empty = table[table.bin == 2]
    assert empty[["cscore_low", "cscore_high", "train_accuracy"]].isna().all().all() and len(empty) == 2
    assert learning_dynamics(correct, seen, np.full(3, np.nan), bins=2)["n_examples"].eq(0).all()
