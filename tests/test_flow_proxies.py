"""The `proxies` flow end to end: proxies from the recorded shards, correlations, dynamics, detection."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from scipy import stats
from sklearn.metrics import roc_auc_score

from core.config import run_id
from core.data.config import DatasetConfig
from core.data.datasets import load_dataset
from core.findings import COLUMNS
from core.methods import label_quality
from core.methods.cscore import MISLABELED_AT_LOW_END
from core.methods.label_quality import fold_assignment
from core.methods.proxies import PROXY_CLAIMS, detection_metrics, kernel_density_proxies, median_bandwidth
from core.runs.files import read_provenance
from core.runs.rows import unpack_bool_rows, unpack_float_rows
from core.training.config import TrainConfig
from flows.common import upstream_table
from flows.cscore import CScoreFlowConfig, cscore_flow
from flows.proxies import ProxiesFlowConfig, proxies_flow

pytestmark = pytest.mark.usefixtures("prefect_harness")

DATA = DatasetConfig(name="digits", n_train=240, n_test=60, label_noise=0.1)
TRAIN = TrainConfig(epochs=3, batch_size=32, lr=0.05)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny C-score run, then the proxies run that refers to it."""
    root = str(tmp_path_factory.mktemp("data"))
    cscore_run = Path(cscore_flow(CScoreFlowConfig(dataset=DATA, model="mlp_w16_d1", train=TRAIN, ratios=[0.3, 0.7],
                                                   runs_per_ratio=4), data_root=root))
    config = ProxiesFlowConfig(dataset=DATA, model="mlp_w16_d1", train=TRAIN, n_models=3, shard_size=2,
                               cscore_run=cscore_run.name, n_bootstrap=20, cleanlab_folds=3)
    folder = Path(proxies_flow(config, data_root=root))
    return folder, cscore_run, config


def records(folder: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("shards/records-*.parquet"))])


def test_records_hold_every_model_and_epoch(run):
    folder, _, config = run
    table = records(folder)
    assert sorted(zip(table["model_id"], table["epoch"])) == [(m, e) for m in range(3) for e in (1, 2, 3)]
    assert (unpack_bool_rows(table["seen"]).sum(1) == (240 // 32) * 32).all()  # full data, partial batch dropped


def test_learning_speed_proxies_equal_direct_means_of_the_records(run):
    folder, _, _ = run
    table, proxies = records(folder), pd.read_parquet(folder / "proxies.parquet")
    seen = unpack_bool_rows(table["seen"])
    prob = np.where(seen, unpack_float_rows(table["label_prob"]), np.nan)
    np.testing.assert_allclose(proxies["cum_label_prob"], np.nanmean(prob, axis=0), rtol=1e-5)
    margin = np.where(seen, unpack_float_rows(table["margin"]), np.nan)
    np.testing.assert_allclose(proxies["aum"], np.nanmean(margin, axis=0), rtol=1e-4, atol=1e-6)
    second = (table["epoch"] == 2).to_numpy()
    el2n = np.where(seen[second], unpack_float_rows(table["el2n"])[second], np.nan)
    np.testing.assert_allclose(proxies["neg_el2n"], -np.nanmean(el2n, axis=0), rtol=1e-5)


def test_input_densities_use_the_median_heuristic(run):
    folder, _, _ = run
    dataset = load_dataset(DATA)
    x = dataset.x_train.flatten(1).numpy()
    expected = kernel_density_proxies(x, dataset.y_train.numpy(), median_bandwidth(x))
    proxies = pd.read_parquet(folder / "proxies.parquet")
    np.testing.assert_allclose(proxies["input_label_contrast"], expected["label_contrast"], rtol=1e-5)
    assert proxies["example_id"].tolist() == dataset.train_ids.tolist()


def test_correlations_detection_and_dynamics(run):
    folder, cscore_run, _ = run
    proxies = pd.read_parquet(folder / "proxies.parquet")
    cscores = proxies[["example_id"]].merge(pd.read_parquet(cscore_run / "cscores.parquet"), on="example_id")
    correlations = pd.read_parquet(folder / "proxy_correlations.parquet").set_index("proxy")
    not_scores = ("example_id", "source", "label", "is_noisy", "is_foreign", "cleanlab_issue")
    names = [c for c in proxies.columns if c not in not_scores]
    assert list(correlations.index) == names and len(names) == 14
    finite = np.isfinite(cscores["cscore"])
    expected = stats.spearmanr(proxies["aum"][finite], cscores["cscore"][finite]).statistic
    assert correlations.loc["aum", "spearman"] == pytest.approx(expected)
    detection = pd.read_parquet(folder / "noise_detection.parquet").set_index("score")
    assert list(detection.index) == ["cscore", *names, "cleanlab_issue"] and (detection["k"] == 24).all()
    assert detection.loc["aum", "auroc"] == pytest.approx(roc_auc_score(proxies["is_noisy"], -proxies["aum"]))
    dynamics = pd.read_parquet(folder / "dynamics.parquet")
    assert len(dynamics) == 3 * 5 and dynamics.groupby("bin")["n_examples"].first().sum() == finite.sum()
    for name in ("proxy_vs_cscore.png", "dynamics.png", "noise_detection.png"):
        assert (folder / "figures" / name).is_file()
    findings = pd.read_parquet(folder / "findings.parquet")  # 3 models: every claim tested over 3 seeds
    assert list(findings.columns) == list(COLUMNS) and findings["claim"].tolist() == [c.claim for c in PROXY_CLAIMS]
    assert (findings["n_seeds"] == 3).all() and findings["estimate"].notna().all()
    upstream = pd.read_parquet(cscore_run / "findings.parquet")  # 4 runs per ratio: 2 groups, too few to judge by
    assert upstream["claim"].tolist() == [MISLABELED_AT_LOW_END.claim] * 2 and upstream["n_seeds"].tolist() == [2, 0]
    assert upstream["rule"].iloc[0].startswith("not testable here: 4 runs per ratio make 2 group(s)")
    report = (folder / "report.md").read_text()
    assert report.index("## Findings") < report.index("## Tables")


def test_out_of_sample_probabilities_come_from_the_model_of_each_examples_fold(run):
    folder, _, config = run
    table = pd.read_parquet(folder / "out_of_sample.parquet")
    assert table["example_id"].tolist() == load_dataset(DATA).train_ids.tolist()
    assert np.array_equal(table["fold"], fold_assignment(240, 3, config.seed))
    probabilities = unpack_float_rows(table["probabilities"])
    assert probabilities.shape == (240, 10)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    provenance = read_provenance(folder / "out_of_sample.parquet")
    assert provenance["models"] == "3" and float(provenance["train_seconds"]) > 0


def test_cleanlab_rows_equal_cleanlab_called_directly_on_the_same_probabilities(run):
    folder, _, _ = run
    table, proxies = pd.read_parquet(folder / "out_of_sample.parquet"), pd.read_parquet(folder / "proxies.parquet")
    labels, probabilities = table["label"].to_numpy(), unpack_float_rows(table["probabilities"])
    quality, issues = get_label_quality_scores(labels, probabilities), find_label_issues(labels, probabilities)
    np.testing.assert_array_equal(proxies["cleanlab_label_quality"], quality)
    np.testing.assert_array_equal(proxies["cleanlab_issue"], issues)
    detection = pd.read_parquet(folder / "noise_detection.parquet").set_index("score")
    noisy = proxies["is_noisy"].to_numpy()
    assert detection.loc["cleanlab_label_quality"].to_dict() == pytest.approx(detection_metrics(quality, noisy))
    flag = detection.loc["cleanlab_issue"]
    assert flag["auroc"] == pytest.approx(roc_auc_score(noisy, issues))  # a flag ranks its examples first


def test_cleanlab_installed_later_adds_its_columns_and_keeps_the_models(tmp_path, monkeypatch):
    """Without cleanlab the flow warns and skips it; installed later, a rerun trains only the fold models."""
    config = ProxiesFlowConfig(dataset=DATA, model="mlp_w16_d1", train=TRAIN, n_models=2, n_bootstrap=0,
                               cleanlab_folds=2)
    monkeypatch.setattr(label_quality, "cleanlab_installed", lambda: False)  # the flow looks it up when it runs
    folder = Path(proxies_flow(config, data_root=str(tmp_path)))
    assert not (folder / "out_of_sample.parquet").exists()
    assert "cleanlab_label_quality" not in pd.read_parquet(folder / "proxies.parquet").columns
    records = {p: p.stat().st_mtime_ns for p in folder.glob("shards/*.parquet")}
    monkeypatch.undo()
    proxies_flow(config, data_root=str(tmp_path))
    assert {"cleanlab_label_quality", "cleanlab_issue"} <= set(pd.read_parquet(folder / "proxies.parquet").columns)
    assert "cleanlab_issue" in pd.read_parquet(folder / "noise_detection.parquet")["score"].tolist()
    assert {p: p.stat().st_mtime_ns for p in folder.glob("shards/*.parquet")} == records


def test_cleanlab_folds_must_leave_examples_out_and_fit_the_data(tmp_path):
    with pytest.raises(ValueError, match=r"cleanlab_folds=1 leaves no example out of sample"):
        ProxiesFlowConfig(cleanlab_folds=1)
    small = ProxiesFlowConfig(dataset=DATA.model_copy(update={"n_train": 40}), train=TRAIN, n_models=1)
    with pytest.raises(ValueError, match=r"cleanlab_folds=41 is more folds than the 40 training examples"):
        proxies_flow.fn(small.model_copy(update={"cleanlab_folds": 41}), data_root=str(tmp_path))
    message = (r"cleanlab_folds=2 gives 20 of 40 examples per model, fewer than train.batch_size=32; "
               r"raise cleanlab_folds or lower train.batch_size")
    with pytest.raises(ValueError, match=message):
        proxies_flow.fn(small.model_copy(update={"cleanlab_folds": 2}), data_root=str(tmp_path))
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_rerun_skips_finished_work(run):
    folder, _, config = run
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*.parquet")}
    proxies_flow(config, data_root=str(folder.parents[2]))
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.parquet")} == before


def test_el2n_epoch_must_lie_within_training():
    with pytest.raises(ValueError, match=r"el2n_epoch=5 is after the last epoch \(train.epochs=3\)"):
        ProxiesFlowConfig(train=TRAIN, el2n_epoch=5)


def test_the_cscore_run_is_checked_before_any_work(run):
    folder, cscore_run, config = run
    root = folder.parents[2]
    clean = config.model_copy(update={"dataset": DATA.model_copy(update={"label_noise": 0.0})})
    message = rf"cscore_run='{cscore_run.name}' used another dataset \(dataset.label_noise: 0.1 there, 0.0 here\)"
    with pytest.raises(ValueError, match=message):
        proxies_flow.fn(clean, data_root=str(root))
    assert not (root / "runs" / "proxies" / run_id("proxies", clean)).exists()
    with pytest.raises(ValueError, match=rf"cscore_run='{folder.name}' is a proxies run; give the id of a cscore run"):
        proxies_flow.fn(config.model_copy(update={"cscore_run": folder.name}), data_root=str(root))


def test_an_unfinished_upstream_run_is_named(tmp_path):
    unfinished = tmp_path / "runs" / "cscore" / "cscore-0123456789ab"
    unfinished.mkdir(parents=True)
    (unfinished / "config.json").write_text(json.dumps({"flow": "cscore", "config": {}}))
    (unfinished / "cscores.parquet").write_bytes(b"PAR1 cut short")  # a killed writer never leaves this, but a copy might
    with pytest.raises(ValueError, match=r"cscore_run='cscore-0123456789ab' has no readable cscores.parquet yet"):
        upstream_table("cscore_run", "cscore-0123456789ab", {"cscore": "cscores.parquet"}, str(tmp_path))


def test_foreign_examples_get_their_own_detection_table_beside_the_mislabeled_ones(tmp_path):
    """Noise mixed into the noisy digits: ood_detection.parquet scores every proxy for the foreign examples, by the
    same metrics as noise_detection.parquet (checked for two scores by sklearn), and the figure is drawn."""
    data = DATA.model_copy(update={"foreign": "noise", "foreign_fraction": 0.1})
    config = ProxiesFlowConfig(dataset=data, model="mlp_w16_d1", train=TRAIN, n_models=2, shard_size=2,
                               n_bootstrap=5, cleanlab_folds=0)
    folder = Path(proxies_flow(config, data_root=str(tmp_path)))
    proxies = pd.read_parquet(folder / "proxies.parquet")
    assert proxies["is_foreign"].tolist() == [False] * 240 + [True] * 24 and not proxies["is_noisy"][240:].any()
    ood = pd.read_parquet(folder / "ood_detection.parquet").set_index("score")
    noise = pd.read_parquet(folder / "noise_detection.parquet").set_index("score")
    assert list(ood.index) == list(noise.index) and (ood["k"] == 24).all()
    for score in ("aum", "input_density"):
        assert ood.loc[score, "auroc"] == pytest.approx(roc_auc_score(proxies["is_foreign"], -proxies[score]))
    assert (folder / "figures" / "ood_detection.png").is_file()


def test_the_card_joins_both_runs_once_per_example(run):
    """The card flow on the two runs: every training example once, in the C-score run's order; three examples'
    columns equal the runs' own tables and the cartography of their records; the data map drawn; a rerun writes
    nothing."""
    from flows.card import CardFlowConfig, card_flow

    folder, cscore_run, _ = run
    config = CardFlowConfig(cscore_run=cscore_run.name, proxies_run=folder.name)
    card_folder = Path(card_flow(config, data_root=str(folder.parents[2])))
    card = pd.read_parquet(card_folder / "examples.parquet")
    cscores, proxies = pd.read_parquet(cscore_run / "cscores.parquet"), pd.read_parquet(folder / "proxies.parquet")
    heldout = pd.read_parquet(cscore_run / "heldout_probabilities.parquet")
    assert card["example_id"].tolist() == cscores["example_id"].tolist() and card["example_id"].is_unique
    recorded = records(folder).sort_values(["model_id", "epoch"])
    label_prob = unpack_float_rows(recorded["label_prob"]).reshape(3, 3, -1)  # 3 models x 3 epochs
    seen = unpack_bool_rows(recorded["seen"]).reshape(3, 3, -1)
    correct = unpack_bool_rows(recorded["correct"]).reshape(3, 3, -1)
    for i in (0, 7, 131):
        example = card.iloc[i]
        j = int(np.flatnonzero(proxies["example_id"] == example["example_id"])[0])
        assert example["given_label"] == cscores["label"][i] and example["cscore_score"] == cscores["cscore"][i]
        assert example["cscore_soft_score"] == cscores["cscore_soft"][i]
        assert example["predicted_label"] == int(np.argmax(heldout["probabilities"][i]))
        assert example["is_cleanlab_holdout_issue"] == heldout["is_cleanlab_holdout_issue"][i]
        assert example["aum_score"] == proxies["aum"][j] and example["is_cleanlab_issue"] == proxies["cleanlab_issue"][j]
        assert example["is_noisy"] == cscores["is_noisy"][i]
        models = [k for k in range(3) if seen[k, :, j].any()]
        probs = [label_prob[k, seen[k, :, j], j] for k in models]
        assert example["confidence"] == pytest.approx(np.mean([p.mean() for p in probs]))
        assert example["variability"] == pytest.approx(np.mean([p.std() for p in probs]))
        assert example["correctness"] == pytest.approx(np.mean([correct[k, seen[k, :, j], j].mean() for k in models]))
    assert (card_folder / "figures" / "data_map.png").stat().st_size > 10_000
    assert (card_folder / "figures" / "cscore_soft_histograms.png").is_file()
    before = {p: p.stat().st_mtime_ns for p in card_folder.rglob("*.p*") if p.name != "report.md"}
    assert Path(card_flow(config, data_root=str(folder.parents[2]))) == card_folder
    assert {p: p.stat().st_mtime_ns for p in card_folder.rglob("*.p*") if p.name != "report.md"} == before


def test_the_card_refuses_runs_on_other_data_before_any_work(run, tmp_path):
    from flows.card import CardFlowConfig, card_flow

    folder, _, _ = run
    other = Path(cscore_flow(CScoreFlowConfig(dataset=DATA.model_copy(update={"n_train": 200}), model="mlp_w16_d1",
                                              train=TRAIN, ratios=[0.5], runs_per_ratio=2), data_root=str(folder.parents[2])))
    config = CardFlowConfig(cscore_run=other.name, proxies_run=folder.name)
    with pytest.raises(ValueError, match=r"proxies_run=.* used another dataset \(dataset.n_train: 240 there, 200 here\)"):
        card_flow(config, data_root=str(folder.parents[2]))
    assert not (folder.parents[1] / "card" / run_id("card", config)).exists()
