"""The warning before a holdout run whose few runs per ratio leave examples without a score at some ratio."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.data.config import DatasetConfig
from core.methods.cscore import coverage_warning, examples_missing_ratio, runs_to_cover
from core.training.config import TrainConfig
from core.training.experiment import balanced_subsets, random_subsets
from flows.cscore import DEFAULT_RATIOS, CScoreFlowConfig, cscore_flow


def test_the_issue_case_by_hand():
    # 3,000 examples, 4 runs per ratio: held-out blocks of 3000 - floor(3000 s) examples; 4 of them cover 3,000 only
    # where that block is at least 750, so s = 0.8 (600 held out: 2400 covered) and s = 0.9 (300: 1200) fall short
    sizes = np.array([int(3000 * s + 1e-9) for s in DEFAULT_RATIOS])
    np.testing.assert_array_equal(examples_missing_ratio("balanced", 3000, sizes, 4), [0] * 7 + [600, 1800])
    assert runs_to_cover("balanced", 3000, sizes) == 10  # ceil(3000 / 300)
    message = coverage_warning("balanced", 3000, DEFAULT_RATIOS, 4, None, 256)
    first, second = message.split("\n")
    # the two ratios are drawn independently: 3000 (1 - 0.8 * 0.4) = 2040 examples miss one (the issue saw 2,033)
    assert first == ("runs_per_ratio=4 leaves examples that no model holds out (600 at ratio 0.8, 1800 at ratio 0.9, "
                     "of 3000): about 2040 will miss a ratio, their C-scores averaging the other ratios only.")
    assert second == ("10 runs per ratio hold every example out at every ratio (balanced design: "
                      "ceil(N / (N - floor(sN))) at ratio 0.9); target_se is not set: raise runs_per_ratio to 10.")
    assert coverage_warning("balanced", 3000, DEFAULT_RATIOS, 10, None, 256) is None


def test_what_target_se_would_do():
    # rounds of 4: 4, 8, 12 models per ratio; 10 cover every example
    assert coverage_warning("balanced", 3000, DEFAULT_RATIOS, 4, 0.03, 8).endswith(
        "target_se=0.03 cannot get there: max_runs_per_ratio=8 ends the rounds first; raise runs_per_ratio to 10.")
    assert coverage_warning("balanced", 3000, DEFAULT_RATIOS, 4, 0.03, 10).endswith(
        "target_se=0.03 gets there only if still unmet after round 2 (8 models per ratio): a met target stops the "
        "rounds whatever ratios examples miss; raise runs_per_ratio to 10 to be sure.")
    assert coverage_warning("balanced", 3000, DEFAULT_RATIOS, 3, 0.03, 256).endswith(
        "after round 3 (9 models per ratio): a met target stops the rounds whatever ratios examples miss; "
        "raise runs_per_ratio to 10 to be sure.")


def test_the_floor_of_the_subset_decides_not_one_minus_s():
    # n = 10, s = 0.79: models train on 7 and hold out 3, not 2.1. (1 - s) R = 0.84 < 1 at R = 4, yet 4 blocks of 3
    # hold out 12 >= 10 entries of one chain: every example. At R = 3, exactly 10 - 9 = 1 example misses.
    assert runs_to_cover("balanced", 10, [7]) == 4
    assert coverage_warning("balanced", 10, [0.79], 4, None, 256) is None
    assert coverage_warning("balanced", 10, [0.79], 3, None, 256).startswith(
        "runs_per_ratio=3 leaves examples that no model holds out (1 at ratio 0.79, of 10)")
    for seed in range(50):
        assert (~balanced_subsets(10, 7, [0, 1, 2, 3], seed)).any(0).all()
        assert (~balanced_subsets(10, 7, [0, 1, 2], seed)).any(0).sum() == 9


@pytest.mark.parametrize("n, size, runs", [(10, 7, 2), (300, 270, 4), (300, 270, 9), (300, 270, 10), (97, 50, 1)])
def test_balanced_counts_are_exact(n, size, runs):
    for seed in range(5):
        covered = (~balanced_subsets(n, size, list(range(runs)), seed)).any(0).sum()
        assert examples_missing_ratio("balanced", n, np.array([size]), runs)[0] == n - covered


def test_independent_counts_are_expected_values_and_may_need_more_runs_than_any_ratio_alone():
    # P(in all R subsets) = (size / n)^R: 200 * 0.9^10 = 69.7 expected; over 40 seeds the mean's sd is about 1.1
    missed = [(~random_subsets(200, 180, list(range(10 * k, 10 * k + 10)))).any(0).logical_not().sum().item()
              for k in range(40)]
    assert examples_missing_ratio("independent", 200, np.array([180]), 10)[0] == pytest.approx(200 * 0.9**10)
    assert np.mean(missed) == pytest.approx(200 * 0.9**10, abs=5)
    # n = 100, s = 0.5: 100 / 2^7 = 0.78 < 1 <= 1.56 = 100 / 2^6, so 7 runs alone; s = 0.45 adds 100 * 0.45^7 = 0.37,
    # a sum of 1.16 at R = 7, 0.56 at R = 8
    assert runs_to_cover("independent", 100, [50]) == 7
    assert runs_to_cover("independent", 100, [50, 45]) == 8
    message = coverage_warning("independent", 100, [0.45, 0.5], 7, None, 256)
    assert message.startswith("runs_per_ratio=7 leaves examples that no model holds out (about 0.4 at ratio 0.45, "
                              "about 0.8 at ratio 0.5, of 100): about 1 will miss a ratio")
    assert ("8 runs per ratio leave fewer than one example expected to miss a ratio (independent design: sum over "
            "ratios of N (floor(sN) / N)^R < 1; holdout_design=balanced needs 2)") in message


@pytest.mark.usefixtures("prefect_harness")
def test_a_tiny_run_warns_before_training_and_its_tables_agree(tmp_path, prefect_log):
    # 300 examples; s = 0.9 holds out 30 per model, 4 runs cover 120: 180 miss it, exactly. s = 0.3 holds out 210.
    config = CScoreFlowConfig(dataset=DatasetConfig(name="digits", n_train=300, n_test=50), model="mlp_w16_d1",
                              train=TrainConfig(epochs=1, batch_size=32, lr=0.05), ratios=[0.3, 0.9], runs_per_ratio=4)
    folder = Path(cscore_flow(config, data_root=str(tmp_path)))
    warned = [i for i, m in enumerate(prefect_log) if m.startswith("runs_per_ratio=4 leaves examples")]
    assert len(warned) == 1
    assert prefect_log[warned[0]] == (
        "runs_per_ratio=4 leaves examples that no model holds out (180 at ratio 0.9, of 300): about 180 will miss a "
        "ratio, their C-scores averaging the other ratios only.\n10 runs per ratio hold every example out at every "
        "ratio (balanced design: ceil(N / (N - floor(sN))) at ratio 0.9); target_se is not set: raise runs_per_ratio "
        "to 10.")
    trained = [i for i, m in enumerate(prefect_log) if m.startswith("shards/runs-")]  # a shard trained
    assert trained and warned[0] < min(trained)  # said before any shard ran
    overall = pd.read_parquet(folder / "summary.parquet").iloc[0]
    assert overall["n_missing_some_ratio"] == 180 and overall["n_never_heldout"] == 0
    assert any("180 missed at least one ratio (0 never held out)" in m for m in prefect_log)
