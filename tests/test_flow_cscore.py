"""The `cscore` flow end to end on tiny settings, checked against naive per-example loops."""
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.config import run_id
from core.data.config import DatasetConfig
from core.findings import COLUMNS
from core.methods.cscore import MISLABELED_AT_LOW_END
from core.runs.rows import unpack_bool_rows, unpack_float_rows
from core.training.config import TrainConfig
from core.training.experiment import subset_size
from flows.cscore import CScoreFlowConfig, cscore_flow, plan_shards

pytestmark = pytest.mark.usefixtures("prefect_harness")

CONFIG = CScoreFlowConfig(
    dataset=DatasetConfig(name="digits", n_train=300, n_test=100),
    model="mlp_w16_d1",
    train=TrainConfig(epochs=3, batch_size=32, lr=0.05),
    ratios=[0.7, 0.3],  # stored sorted
    runs_per_ratio=4,
    shard_size=3,  # per ratio: shards of 3 and 1 models
)


@pytest.fixture(scope="module", params=["balanced", "independent"])
def run(request, tmp_path_factory):
    """One finished run of each holdout design, its tables and its config."""
    config = CONFIG.model_copy(update={"holdout_design": request.param})
    folder = Path(cscore_flow(config, data_root=str(tmp_path_factory.mktemp("data"))))
    tables = {name: pd.read_parquet(folder / f"{name}.parquet")
              for name in ("runs", "cscores", "cscore_by_ratio", "test_cscores", "summary", "examples")}
    return folder, tables, config


def test_plan_never_mixes_ratios_and_numbers_models_by_ratio():
    plan = plan_shards(CONFIG, 300)
    assert [(p["ratio"], p["model_ids"], p["subset_size"]) for p in plan] == [
        (0.3, [0, 1, 2], 90), (0.3, [3], 90), (0.7, [4, 5, 6], 210), (0.7, [7], 210)]
    assert CONFIG.ratios == [0.3, 0.7]
    # floor(s * N) exactly: 0.7 * 90 = 62.99999999999999 in floating point, 0.29 * 100 = 28.999999999999996
    assert [p["subset_size"] for p in plan_shards(CONFIG, 90)] == [27, 27, 63, 63]
    assert [subset_size(s, 100) for s in (0.29, 0.57, 0.999)] == [29, 57, 99]


def test_runs_table(run):
    folder, t, config = run
    runs = t["runs"]
    assert folder.name == run_id("cscore", config)
    assert runs["model_id"].tolist() == list(range(8)) and runs["run"].tolist() == [0, 1, 2, 3] * 2
    assert runs["ratio"].tolist() == [0.3] * 4 + [0.7] * 4
    np.testing.assert_array_equal(unpack_bool_rows(runs["in_subset"]).sum(1), [90] * 4 + [210] * 4)
    in_subset = unpack_bool_rows(runs["in_subset"])
    assert len({tuple(row) for row in in_subset}) == 8  # every model its own subset
    if config.holdout_design == "balanced":  # 4 runs hold each example out 2.8 times at s = 0.3, 1.2 at s = 0.7
        assert set((~in_subset[:4]).sum(0).tolist()) == {2, 3} and set((~in_subset[4:]).sum(0).tolist()) == {1, 2}


def naive_scores(runs: pd.DataFrame):
    """Per example and ratio, by explicit loops over models."""
    in_subset, correct = unpack_bool_rows(runs["in_subset"]), unpack_bool_rows(runs["train_correct"])
    n = in_subset.shape[1]
    by_ratio = {}
    for ratio in (0.3, 0.7):
        rows = np.flatnonzero(runs["ratio"].to_numpy() == ratio)
        by_ratio[ratio] = [np.mean([correct[m, i] for m in rows if not in_subset[m, i]])
                           if any(not in_subset[m, i] for m in rows) else np.nan for i in range(n)]
    ratio_of = runs["ratio"].to_numpy()
    memo = [np.nanmean([np.mean(correct[(ratio_of == r) & in_subset[:, i], i])
                        - np.mean(correct[(ratio_of == r) & ~in_subset[:, i], i]) for r in (0.3, 0.7)])
            for i in range(n)]
    return by_ratio, np.array(memo)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # naive means of empty slices: examples never held out
def test_cscores_equal_naive_loops(run):
    _, t, config = run
    by_ratio, memo = naive_scores(t["runs"])
    expected = np.nanmean(np.stack([by_ratio[0.3], by_ratio[0.7]]), axis=0)
    scores = t["cscores"]
    np.testing.assert_allclose(scores["cscore"], expected)
    np.testing.assert_allclose(scores["memorization"], memo)
    long = t["cscore_by_ratio"]
    np.testing.assert_allclose(long.loc[long.ratio == 0.3, "score"], by_ratio[0.3])
    np.testing.assert_allclose(long.loc[long.ratio == 0.7, "score"], by_ratio[0.7])
    # independent: 4 runs of 70% subsets put some examples in every subset (NaN at that ratio, not 0);
    # balanced: none
    missing = np.isnan(by_ratio[0.3]) | np.isnan(by_ratio[0.7])
    assert missing.any() == (config.holdout_design == "independent")
    assert (scores["n_missing_ratios"].to_numpy() >= 1).tolist() == missing.tolist()
    assert t["summary"]["n_missing_some_ratio"].iloc[0] == missing.sum()
    train = t["examples"][t["examples"].split == "train"]
    assert scores["example_id"].tolist() == train["example_id"].tolist()
    assert scores["label"].tolist() == train["label"].tolist()


def test_soft_scores_and_heldout_probabilities_equal_naive_loops(run):
    """Per example: the mean over ratios of the held-out models' mean label probability (margin); the held-out
    probabilities' mean over ratios of their held-out models' softmax, whose given-label entry is the soft score
    (cleanlab's self-confidence)."""
    folder, t, _ = run
    runs, scores = t["runs"], t["cscores"]
    in_subset, ratios = unpack_bool_rows(runs["in_subset"]), runs["ratio"].to_numpy()
    for score, column in (("cscore_soft", "train_label_prob"), ("cscore_margin", "train_margin")):
        values = unpack_float_rows(runs[column])
        by_ratio = [[values[(ratios == s) & ~in_subset[:, i], i].mean() if ((ratios == s) & ~in_subset[:, i]).any()
                     else np.nan for i in range(values.shape[1])] for s in (0.3, 0.7)]
        np.testing.assert_allclose(scores[score], np.nanmean(by_ratio, axis=0), rtol=1e-6, atol=1e-7)
        assert ((scores[f"{score}_se"] > 0) == np.isfinite(scores[score])).all()  # NaN where never held out
    probabilities = pd.read_parquet(folder / "heldout_probabilities.parquet")
    assert probabilities["example_id"].tolist() == scores["example_id"].tolist()
    given = np.stack(probabilities["probabilities"])[np.arange(len(scores)), scores["label"]]
    np.testing.assert_allclose(given, scores["cscore_soft"], atol=2e-3)  # label probabilities are stored as float16
    np.testing.assert_allclose(probabilities["cleanlab_holdout_label_quality"], given, rtol=1e-6)
    assert pq.read_schema(folder / "runs.parquet").field("train_margin").type.value_type == pa.float16()


def test_test_scores_count_every_model(run):
    _, t, config = run
    correct = unpack_bool_rows(t["runs"]["test_correct"])
    expected = (correct[:4].mean(0) + correct[4:].mean(0)) / 2
    np.testing.assert_allclose(t["test_cscores"]["cscore"], expected)
    assert (t["test_cscores"]["n_heldout"] == 8).all()


def test_summary_rows(run):
    _, t, config = run
    summary, scores = t["summary"], t["cscores"]
    overall = summary.iloc[0]
    assert overall["class_name"] == "all" and overall["n_examples"] == 300
    assert summary["n_examples"].iloc[1:].sum() == 300 and len(summary) == 11
    assert overall["mean_cscore"] == pytest.approx(scores["cscore"].mean())
    assert -1 <= overall["split_half_spearman"] <= 1


def test_figures_are_written(run):
    folder, _, _ = run
    for name in ("cscore_histograms.png", "extremes.png", "heldout_by_ratio.png"):
        assert (folder / "figures" / name).stat().st_size > 1000
    findings = pd.read_parquet(folder / "findings.parquet")  # no label noise: the one claim is not testable
    assert list(findings.columns) == list(COLUMNS) and findings["claim"].tolist() == [MISLABELED_AT_LOW_END.claim] * 2
    assert findings["rule"].iloc[0].startswith("not testable here: no label is known to be wrong")
    assert findings["rule"].iloc[1].startswith("not testable here: no foreign examples")
    report = (folder / "report.md").read_text()
    assert report.index("## Findings") < report.index("## Tables")


def test_rerun_skips_everything(run):
    """Tables and figures alike; only the report is written again (each run publishes it)."""
    folder, t, config = run
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != "report.md"}
    assert {p.name for p in before} >= {"cscores.parquet", "cscore_histograms.png", "drawn_from.json"}
    assert Path(cscore_flow(config, data_root=str(folder.parents[2]))) == folder
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != "report.md"} == before


@pytest.mark.parametrize("ratios,message", [
    ([0.5, 1.0], r"every ratio must lie strictly between 0 and 1; got \[1.0\]"),
    ([0.5, 0.5], r"ratios must be distinct"),
    ([], r"ratios\n.*at least 1 item"),
])
def test_bad_ratios_name_the_field(ratios, message):
    with pytest.raises(ValueError, match=message):
        CScoreFlowConfig(ratios=ratios)


def test_smallest_subset_below_a_batch_fails_before_writing(tmp_path):
    config = CONFIG.model_copy(update={"ratios": [0.1, 0.5]})
    with pytest.raises(ValueError, match=r"ratios=0.1 gives 30 of 300 examples per model, fewer than train.batch_size=32"):
        cscore_flow(config, data_root=str(tmp_path))
    assert not (tmp_path / "runs").exists()


def test_target_se_trains_rounds_until_met_or_at_most_max_runs(tmp_path):
    out_of_reach = CONFIG.model_copy(update={"runs_per_ratio": 2, "target_se": 0.001, "max_runs_per_ratio": 3})
    plan = plan_shards(out_of_reach, 300, rounds=2)
    assert [(p["round_index"], p["ratio"], p["runs"], p["model_ids"]) for p in plan] == [
        (0, 0.3, [0, 1], [0, 1]), (0, 0.7, [0, 1], [3, 4]), (1, 0.3, [2], [2]), (1, 0.7, [2], [5])]
    folder = Path(cscore_flow(out_of_reach, data_root=str(tmp_path)))
    runs, summary = pd.read_parquet(folder / "runs.parquet"), pd.read_parquet(folder / "summary.parquet")
    assert runs["model_id"].tolist() == list(range(6)) and runs["run"].tolist() == [0, 1, 2] * 2
    assert summary["runs_per_ratio"].eq(3).all() and summary["models"].eq(6).all()
    assert summary["cscore_se_p90"].iloc[0] == pytest.approx(
        np.quantile(pd.read_parquet(folder / "cscores.parquet")["cscore_se"], 0.9, method="higher"))
    assert "2 ratios x 3 runs of mlp_w16_d1; 90th percentile of the per-example SE" in (folder / "report.md").read_text()
    assert "(target 0.001: not met)" in (folder / "report.md").read_text()
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*.parquet")}
    assert Path(cscore_flow(out_of_reach, data_root=str(tmp_path))) == folder  # resumes: every round is found
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.parquet")} == before

    within_reach = out_of_reach.model_copy(update={"target_se": 0.45})
    runs = pd.read_parquet(Path(cscore_flow(within_reach, data_root=str(tmp_path))) / "runs.parquet")
    assert runs["run"].tolist() == [0, 1] * 2 and runs["model_id"].tolist() == [0, 1, 3, 4]


def test_a_round_larger_than_the_cap_is_refused():
    with pytest.raises(ValueError, match="max_runs_per_ratio=4 is below runs_per_ratio=8, the size of one round"):
        CScoreFlowConfig(runs_per_ratio=8, target_se=0.03, max_runs_per_ratio=4)
    assert CScoreFlowConfig(runs_per_ratio=8, max_runs_per_ratio=4).max_runs() == 8  # the cap applies only with a target


def test_foreign_examples_get_their_column_detection_table_and_findings_row(tmp_path):
    """Noise images mixed into digits (dataset.foreign): 30 more training examples, marked in cscores.parquet, scored
    by ood_detection.parquet and the findings' second row (6 runs per ratio: 3 groups)."""
    config = CONFIG.model_copy(update={"dataset": CONFIG.dataset.model_copy(update={"foreign": "noise",
                                                                                     "foreign_fraction": 0.1}),
                                       "runs_per_ratio": 6, "ratios": [0.5]})
    folder = Path(cscore_flow(config, data_root=str(tmp_path)))
    scores = pd.read_parquet(folder / "cscores.parquet")
    assert len(scores) == 330 and scores["is_foreign"].tolist() == [False] * 300 + [True] * 30
    assert (scores.loc[scores["is_foreign"], "example_id"] >= 1_000_000_000).all()
    detection = pd.read_parquet(folder / "ood_detection.parquet")
    from core.methods.proxies import detection_metrics
    expected = detection_metrics(scores["cscore"], scores["is_foreign"])
    assert detection.iloc[0]["auroc"] == pytest.approx(expected["auroc"]) and detection.iloc[0]["k"] == 30
    assert (folder / "figures" / "ood_detection.png").is_file() and not (folder / "noise_detection.parquet").exists()
    findings = pd.read_parquet(folder / "findings.parquet")
    assert findings["n_seeds"].tolist() == [0, 3] and findings["rule"][1].startswith("replicate: each of 3 disjoint")


def test_shards_of_older_code_keep_their_models_and_leave_the_soft_scores_out(tmp_path, caplog):
    """A run resumed over shards written before the soft columns and held-out sums existed (one shard rewritten
    without them): nothing is retrained or lost; the C-scores are as before, the soft ones and
    heldout_probabilities.parquet are left out, and the log says how to get them."""
    from core.runs.store import RunStore

    config = CONFIG.model_copy(update={"ratios": [0.5], "runs_per_ratio": 4})
    folder = Path(cscore_flow(config, data_root=str(tmp_path)))
    before = pd.read_parquet(folder / "cscores.parquet")
    store = RunStore.open("cscore", config, str(tmp_path))
    old = pq.read_table(folder / "shards/runs-00001.parquet").drop_columns(["train_label_prob", "train_margin"])
    store.write_table("shards/runs-00001.parquet", old.replace_schema_metadata(None), {"models": "1"})
    (folder / "shards/heldout-probabilities-00001.parquet").unlink()
    (folder / "heldout_probabilities.parquet").unlink()
    trained = {p: p.stat().st_mtime_ns for p in folder.glob("shards/runs-*.parquet")}
    cscore_flow(config, data_root=str(tmp_path))
    assert {p: p.stat().st_mtime_ns for p in folder.glob("shards/runs-*.parquet")} == trained
    after = pd.read_parquet(folder / "cscores.parquet")
    np.testing.assert_array_equal(after["cscore"], before["cscore"])
    assert "cscore_soft" not in after and not (folder / "heldout_probabilities.parquet").exists()
    assert "run again with --recompute outdated" in caplog.text
