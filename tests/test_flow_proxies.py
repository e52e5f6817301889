"""The `proxies` flow end to end: proxies from the recorded shards, correlations, dynamics, detection."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from core.config import run_id
from core.data import DatasetConfig, load_dataset
from core.proxies import kernel_density_proxies, median_bandwidth
from core.store import unpack_bool_rows, unpack_float_rows
from core.training import TrainConfig
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
                               cscore_run=cscore_run.name, n_bootstrap=20)
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
    names = [c for c in proxies.columns if c not in ("example_id", "label", "is_noisy")]
    assert list(correlations.index) == names and len(names) == 13
    finite = np.isfinite(cscores["cscore"])
    expected = stats.spearmanr(proxies["aum"][finite], cscores["cscore"][finite]).statistic
    assert correlations.loc["aum", "spearman"] == pytest.approx(expected)
    detection = pd.read_parquet(folder / "noise_detection.parquet").set_index("score")
    assert list(detection.index) == ["cscore", *names] and (detection["k"] == 24).all()
    assert detection.loc["aum", "auroc"] == pytest.approx(roc_auc_score(proxies["is_noisy"], -proxies["aum"]))
    dynamics = pd.read_parquet(folder / "dynamics.parquet")
    assert len(dynamics) == 3 * 5 and dynamics.groupby("bin")["n_examples"].first().sum() == finite.sum()
    for name in ("proxy_vs_cscore.png", "dynamics.png", "noise_detection.png"):
        assert (folder / "figures" / name).is_file()


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
