"""Outlier filtering: which examples each arm removes, and the flow end to end."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.data.config import DatasetConfig
from core.data.datasets import load_dataset
from core.findings import COLUMNS
from core.methods.filter_retrain import FILTERING_HELPS, LOWEST_ARE_MISLABELED, filtering_summary, kept_examples
from core.runs.rows import unpack_bool_rows
from core.training.config import TrainConfig
from flows.filter_retrain import FilterRetrainFlowConfig, filter_retrain_flow, plan_shards

SCORES = np.array([0.5, 0.1, np.nan, 0.9, 0.3, 0.7, 0.2, 0.8, 0.6, 0.4])


def test_lowest_and_highest_remove_by_rank_and_skip_nan():
    assert np.flatnonzero(~kept_examples(SCORES, 0.3, "lowest", 0).numpy()).tolist() == [1, 4, 6]
    assert np.flatnonzero(~kept_examples(SCORES, 0.2, "highest", 0).numpy()).tolist() == [3, 7]
    assert kept_examples(SCORES, 0.0, "lowest", 0).all()


def test_random_removes_the_same_number_seeded():
    a, b = kept_examples(SCORES, 0.3, "random", 1), kept_examples(SCORES, 0.3, "random", 1)
    assert int((~a).sum()) == 3 and np.array_equal(a, b)
    assert not np.array_equal(a, kept_examples(SCORES, 0.3, "random", 2))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="only 9 of 10 have a finite score"):
        kept_examples(SCORES, 0.99, "lowest", 0)
    with pytest.raises(ValueError, match="unknown arm 'middle'"):
        kept_examples(SCORES, 0.1, "middle", 0)


def test_summary_by_hand():
    table = pd.DataFrame({"arm": ["lowest"] * 2 + ["random"], "fraction_removed": [0.1] * 3, "test_accuracy": [0.8, 0.9, 0.7]})
    summary = filtering_summary(table)
    row = summary[summary.arm == "lowest"].iloc[0]
    assert row["mean_test_accuracy"] == pytest.approx(0.85) and row["n_models"] == 2
    assert row["se_test_accuracy"] == pytest.approx(np.std([0.8, 0.9], ddof=1) / np.sqrt(2))


DATA = DatasetConfig(name="digits", n_train=300, n_test=100, label_noise=0.1)


def config(scores: str) -> FilterRetrainFlowConfig:
    return FilterRetrainFlowConfig(dataset=DATA, model="mlp_w16_d1", train=TrainConfig(epochs=2, batch_size=32),
                                   scores=scores, score_column="s", fractions=[0.0, 0.1], seeds_per_arm=2)


def test_plan_shares_seeds_across_arms():
    plan = plan_shards(config("x.parquet"))
    assert [(p["fraction"], p["arms"]) for p in plan] == [
        (0.0, ["none", "none"]), (0.1, ["lowest", "lowest", "random", "random", "highest", "highest"])]
    assert plan[1]["seeds"][:2] == plan[1]["seeds"][2:4] == plan[1]["seeds"][4:] == plan[0]["seeds"]
    assert [i for p in plan for i in p["model_ids"]] == list(range(8))


@pytest.mark.usefixtures("prefect_harness")
def test_flow_removes_by_score_and_counts_noisy_examples(tmp_path):
    dataset = load_dataset(DATA)
    # a score that marks exactly the noisy examples as lowest
    scores = pd.DataFrame({"example_id": dataset.train_ids.numpy()[::-1], "s": (~dataset.is_noisy).numpy()[::-1] * 1.0})
    scores.to_parquet(tmp_path / "scores.parquet")
    folder = Path(filter_retrain_flow(config(str(tmp_path / "scores.parquet")), data_root=str(tmp_path)))
    table = pd.read_parquet(folder / "filtering.parquet")
    assert table["arm"].tolist() == ["none"] * 2 + ["lowest"] * 2 + ["random"] * 2 + ["highest"] * 2
    assert table["n_kept"].tolist() == [300] * 2 + [270] * 6
    assert table.loc[table.arm == "lowest", "n_noisy_removed"].tolist() == [30, 30]  # exactly the noisy ones
    assert (table.loc[table.arm == "highest", "n_noisy_removed"] == 0).all()
    kept = unpack_bool_rows(pd.read_parquet(folder / "models.parquet")["in_subset"])
    assert np.array_equal(~kept[2], dataset.is_noisy.numpy())
    assert (folder / "figures" / "filtering.png").is_file()
    findings = pd.read_parquet(folder / "findings.parquet")  # 2 seeds per arm: fewer than findings ask for
    assert list(findings.columns) == list(COLUMNS)
    assert findings["claim"].tolist() == [FILTERING_HELPS.claim, LOWEST_ARE_MISLABELED.claim]
    assert findings["n_seeds"].tolist() == [2, 2] and findings["rule"].str.contains("seeds_per_arm=2 gives").all()
    report = (folder / "report.md").read_text()
    assert report.index("## Findings") < report.index("## Tables")


def test_missing_or_mismatched_scores_are_explained(tmp_path):
    with pytest.raises(ValueError, match="scores is required"):
        filter_retrain_flow.fn(config(None), data_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"no run 'cscore-000000000000'.*runs there: none"):
        filter_retrain_flow.fn(config("cscore-000000000000"), data_root=str(tmp_path))
    pd.DataFrame({"example_id": [99999], "s": [1.0]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="scores only 0 of the 300 training examples"):
        filter_retrain_flow.fn(config(str(tmp_path / "other.parquet")), data_root=str(tmp_path))
    assert not (tmp_path / "runs").exists()
