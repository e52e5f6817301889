"""The holdout estimator, memorization and reliability against hand-computed values."""
import numpy as np
import pytest
from scipy import stats

from core.methods.cscore import (by_ratio_table, holdout_scores, memorization, rounds_until_precise, scores_of_unseen, se_quantile,
                         split_half_reliability)
from core.training.experiment import balanced_subsets

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
    # per ratio p(1 - p)/n at p = (h + 1/2)/(n + 1): 1 of 1 or 0 of 1 right -> 0.75 * 0.25, 1 of 2 -> 0.25 / 2
    np.testing.assert_allclose(scores.cscore_se, [np.sqrt(0.375) / 2, np.sqrt(0.375) / 2,
                                                  np.sqrt(0.1875 + 0.125) / 2, np.sqrt(0.1875)])
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
    sources = np.array([f"x_train[{i}]" for i in (3, 0, 1, 2)], dtype=object)
    table = by_ratio_table(np.array([10, 11, 12, 13]), holdout_scores(IN_SUBSET, CORRECT, RATIOS), sources)
    assert table["example_id"].tolist() == [10, 11, 12, 13] * 2
    assert table["source"].tolist() == sources.tolist() * 2
    assert table["ratio"].tolist() == [0.5] * 4 + [0.9] * 4
    assert table["n_heldout"].tolist() == [1, 1, 2, 0, 1, 1, 1, 1]


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="must describe the same models and examples"):
        holdout_scores(IN_SUBSET, CORRECT[:, :3], RATIOS)


class SimulatedHoldout:
    """Holdout rounds without training: a held-out model gets example i right at ratio s with a known
    probability p[s, i], so the true C-score and the true standard error of every estimate are known."""

    ratios, n, runs_per_round = (0.2, 0.5, 0.8), 400, 8

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.p = self.rng.beta(4, 1, (len(self.ratios), self.n))
        self.rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.reads = 0

    def run_round(self, k: int):
        """Draw round k's models at every ratio; return a function that reads them."""
        runs = list(range(k * self.runs_per_round, (k + 1) * self.runs_per_round))
        drawn = []
        for i, s in enumerate(self.ratios):
            subsets = balanced_subsets(self.n, int(s * self.n), runs, seed=100 + i).numpy()
            correct = self.rng.random((len(runs), self.n)) < self.p[i]
            drawn.append((subsets, correct, np.full(len(runs), s)))
        self.rows += drawn

        def read():
            self.reads += 1
            return tuple(np.concatenate(column) for column in zip(*drawn))
        return read


def test_target_se_stops_at_the_first_round_that_meets_it():
    simulation = SimulatedHoldout()
    precision = rounds_until_precise(simulation.run_round, max_rounds=20, target_se=0.06)
    in_subset, correct, ratios = tuple(np.concatenate(column) for column in zip(*simulation.rows))
    # the 90th percentile of sqrt(sum_s p (1 - p) / n_s) / S at p = (h + 1/2) / (n + 1), recomputed here for every
    # prefix of rounds
    by_round = []
    for k in range(1, precision.rounds + 1):
        rows = slice(0, k * len(simulation.ratios) * simulation.runs_per_round)
        scores = holdout_scores(in_subset[rows], correct[rows], ratios[rows])
        counts = scores.heldout_counts
        p = (scores.by_ratio * counts + 0.5) / (counts + 1)
        se = np.sqrt((p * (1 - p) / counts).sum(0)) / len(simulation.ratios)
        by_round.append(np.sort(se)[int(np.ceil(0.9 * (len(se) - 1)))])
    assert all(se > 0.06 for se in by_round[:-1]) and by_round[-1] <= 0.06
    assert precision.met and precision.se == pytest.approx(by_round[-1]) and precision.rounds == 7
    assert len(simulation.rows) == precision.rounds * len(simulation.ratios)  # no round trained after the target
    assert simulation.reads == precision.rounds  # each round read once
    # the estimated SE is honest: the true one (known p, the same held-out counts) agrees within 3%, and the
    # C-scores miss the true ones by about that much
    scores = holdout_scores(in_subset, correct, ratios)
    true_se = np.sqrt((simulation.p * (1 - simulation.p) / scores.heldout_counts).sum(0)) / len(simulation.ratios)
    assert se_quantile(true_se) == pytest.approx(precision.se, rel=0.03)
    rms_error = np.sqrt(np.mean((scores.cscore - simulation.p.mean(0)) ** 2))
    assert rms_error == pytest.approx(np.sqrt(np.mean(true_se**2)), rel=0.1)


def test_target_se_out_of_reach_stops_at_max_rounds_and_says_so():
    simulation = SimulatedHoldout()
    precision = rounds_until_precise(simulation.run_round, max_rounds=3, target_se=0.01)
    assert (precision.rounds, precision.met) == (3, False) and precision.se > 0.05
    without_target = SimulatedHoldout()
    precision = rounds_until_precise(without_target.run_round, max_rounds=3, target_se=None)
    assert (precision.rounds, precision.met, without_target.reads) == (1, True, 0)  # one round, never read back


def test_se_quantile_counts_examples_without_a_score_as_unknown():
    assert se_quantile(np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])) == 1.0  # "higher": no interpolation
    assert se_quantile(np.r_[np.zeros(8), np.nan, np.nan]) == np.inf
    assert se_quantile(np.r_[np.zeros(9), np.nan]) == np.inf and se_quantile(np.r_[np.zeros(10), np.nan]) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_standard_error_tracks_the_true_one_from_the_first_round(seed):
    """With 4 held-out models per ratio the plain binomial error p(1 - p)/n is 22% low (agreeing models give 0)."""
    simulation = SimulatedHoldout(seed)
    scores = holdout_scores(*simulation.run_round(0)())
    true_se = np.sqrt((simulation.p * (1 - simulation.p) / scores.heldout_counts).sum(0)) / len(simulation.ratios)
    assert se_quantile(scores.cscore_se) == pytest.approx(se_quantile(true_se), rel=0.05)
