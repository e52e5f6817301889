"""The `subspaces` flow: its tables by hand and by exact invariants, and rows against one model trained alone."""
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from core.config import derive_seed
from core.data.config import DatasetConfig
from core.data.datasets import load_dataset
from core.findings import COLUMNS
from core.methods.subspace_epochs import best_epochs, validation_split
from core.methods.subspaces import (ENDS_ENSEMBLE, MIDPOINT_ACCURACY, MIDPOINT_CALIBRATION, MIDPOINT_NOISE_ROBUSTNESS,
                                    MIDPOINT_NOISE_ROBUSTNESS_LAST_EPOCH, MIDPOINT_OVER_SWA,
                                    MIDPOINT_OVER_SWA_EARLY_STOPPED, SIMILAR_COST, calibration,
                                    midpoint_coefficients, path_coefficients)
from core.models.networks import init_model
from core.models.subspaces import fix_coefficients
from core.training.config import TrainConfig
from core.training.ensemble import Ensemble, predict_probabilities
from core.training.experiment import DRAW_STREAM, INIT_STREAM, MEMBER_STREAM, ORDER_STREAM, model_seed
from core.training.recalibration import recalibrate_batchnorm
from flows.subspaces import SubspacesFlowConfig, subspaces_flow
from reference import subspace_step, train_one_by_one
from test_swa import swa_one_model

CONFIG = SubspacesFlowConfig(dataset=DatasetConfig(name="digits", n_train=400, n_test=100), model="mlp_w16_d1",
                             methods=["line", "simplex3", "swa"], label_noise=[0.0, 0.2], seeds=[0, 1], alpha_points=5,
                             train=TrainConfig(epochs=2, batch_size=50, lr=0.1), swa_start=0.25)  # both epochs averaged
BATCHNORM = SubspacesFlowConfig(dataset=DatasetConfig(name="digits", n_train=400, n_test=100), model="cnn_bn_w4_d1",
                                methods=["curve"], label_noise=[0.2], seeds=[0], alpha_points=3,
                                train=TrainConfig(epochs=2, batch_size=50, lr=0.1))


@pytest.fixture(scope="module")
def run(tmp_path_factory, prefect_harness):
    folder = Path(subspaces_flow(CONFIG, data_root=str(tmp_path_factory.mktemp("data"))))
    return folder, pd.read_parquet(folder / "subspace_alpha.parquet"), pd.read_parquet(folder / "subspace_summary.parquet")


def test_tables_hold_every_point_method_noise_and_seed(run):
    folder, alpha, summary = run
    assert list(alpha.columns) == ["method", "alpha", "noise", "seed", "accuracy", "ece"]
    assert alpha[["method", "alpha", "noise", "seed"]].values.tolist() == [
        [method, a, noise, seed] for method in ("line", "simplex3") for noise in (0.0, 0.2)
        for a in (0.0, 0.25, 0.5, 0.75, 1.0) for seed in (0, 1)]
    assert list(summary.columns) == ["method", "endpoints", "noise", "seed", "point", "members", "accuracy",
                                     "confidence", "ece"]
    kinds = summary[summary["seed"] == 0].drop_duplicates(["method", "endpoints", "point", "members"])
    assert kinds[["method", "endpoints", "point", "members"]].values.tolist() == [
        ["line", 2, "endpoint", 1], ["line", 2, "ensemble", 2], ["line", 2, "midpoint", 1],
        ["line", 2, "midpoint_best", 1], ["simplex3", 3, "endpoint", 1], ["simplex3", 3, "ensemble", 3],
        ["simplex3", 3, "midpoint", 1], ["simplex3", 3, "midpoint_best", 1], ["standard", 1, "ensemble", 2],
        ["standard", 1, "ensemble", 3], ["standard", 1, "model", 1], ["standard", 1, "model_best", 1],
        ["swa", 1, "model", 1], ["swa", 1, "model_best", 1]]
    assert len(summary) == 14 * 2 * 2  # 14 rows per (noise, seed)
    assert summary[["accuracy", "confidence", "ece"]].stack().between(0, 1).all()
    assert (summary["confidence"] >= 0.1).all()  # the top of 10 probabilities
    for name in ("accuracy_along_subspace.png", "gains_over_standard.png", "accuracy_by_epoch.png"):
        assert (folder / "figures" / name).is_file()
    findings = pd.read_parquet(folder / "findings.parquet")  # two seeds: every claim said untestable, and why
    assert list(findings.columns) == list(COLUMNS) and findings["n_seeds"].eq(2).all()
    assert findings["claim"].tolist() == [claim.claim for claim in (
        MIDPOINT_ACCURACY, MIDPOINT_CALIBRATION, MIDPOINT_NOISE_ROBUSTNESS, MIDPOINT_NOISE_ROBUSTNESS_LAST_EPOCH,
        ENDS_ENSEMBLE, MIDPOINT_OVER_SWA, MIDPOINT_OVER_SWA_EARLY_STOPPED, *[SIMILAR_COST] * 4)]
    assert findings["rule"][:7].eq("not testable here: 2 seeds, and a verdict needs a standard error over at least "
                                   "3; set seeds to at least 3 values").all()
    # the cost per (noise, method): timed, but two epochs give no verdict
    cost = findings[7:]
    assert [m.split(" model")[0] for m in cost["measure"]] == [f"training seconds of one {method}" for method in (
        "line", "simplex3", "line", "simplex3")]
    assert cost["estimate"].gt(0).all() and cost["verdict"].eq("inconclusive").all()
    assert cost["rule"].str.contains("inconclusive (and with < 3 epochs); replicates: the epochs", regex=False).all()
    report = (folder / "report.md").read_text()
    assert 0 <= report.index("## Findings") < report.index("## Tables")


def test_every_arm_has_a_row_after_every_epoch_and_its_last_is_the_summarys(run):
    """MLPs (no BatchNorm): the last epoch's rows are the summary's model and midpoint rows exactly; the summary's
    `_best` rows are best_epochs of the epochs table."""
    folder, _, summary = run
    epochs = pd.read_parquet(folder / "subspace_epochs.parquet")
    assert list(epochs.columns) == ["method", "noise", "seed", "epoch", "point", "validation_accuracy", "accuracy",
                                    "confidence", "ece", "train_seconds"]
    # one per-model figure per shard and epoch, on every seed's row
    assert epochs["train_seconds"].gt(0).all()
    assert epochs.groupby(["method", "noise", "epoch"])["train_seconds"].nunique().eq(1).all()
    assert epochs[["method", "noise", "seed", "epoch", "point"]].values.tolist() == [
        [method, noise, seed, epoch, "model" if method in ("standard", "swa") else "midpoint"]
        for method in ("line", "simplex3", "standard", "swa") for noise in (0.0, 0.2) for seed in (0, 1)
        for epoch in (1, 2)]  # swa_start 0.25 of 2 epochs: SWA's average from epoch 1 on
    last = epochs[epochs["epoch"] == 2].set_index(["method", "noise", "seed", "point"])
    final = summary[summary["point"].isin(["model", "midpoint"])].set_index(["method", "noise", "seed", "point"])
    for column in ("accuracy", "confidence", "ece"):
        assert last[column].tolist() == pytest.approx(final.loc[last.index, column].tolist(), abs=1e-12)
    best = best_epochs(epochs).assign(point=lambda t: t["point"] + "_best").set_index(["method", "noise", "seed",
                                                                                       "point"])
    rows = summary[summary["point"].str.endswith("_best")].set_index(["method", "noise", "seed", "point"])
    assert rows.loc[best.index, ["accuracy", "confidence", "ece"]].values.tolist() == best[
        ["accuracy", "confidence", "ece"]].values.tolist()


def test_a_standard_models_validation_and_test_rows_equal_one_trained_alone_on_the_rest(run):
    """The validation split is held out of training (the model trained alone never sees it) and keeps the noisy
    labels of training."""
    folder, _, _ = run
    epochs = pd.read_parquet(folder / "subspace_epochs.parquet")
    model, data = trained_alone(CONFIG, CONFIG.model, model_seed(CONFIG.seed, 1), 0.2)
    held_out = validation_split(data.n_train, CONFIG.validation_fraction, CONFIG.dataset.seed)
    with torch.no_grad():
        validation = model(data.x_train[held_out]).argmax(-1)
    accuracy, _, _ = calibration(probabilities_at(model, data), data.y_test)
    row = epochs[(epochs["method"] == "standard") & (epochs["noise"] == 0.2) & (epochs["seed"] == 1)
                 & (epochs["epoch"] == 2)]
    assert row["accuracy"].item() == pytest.approx(float(accuracy), abs=0.011)
    assert row["validation_accuracy"].item() == pytest.approx(
        (validation == data.y_train[held_out]).double().mean().item(), abs=1 / 40 + 1e-9)  # one of 40 may flip
    clean = load_dataset(CONFIG.dataset)
    assert (data.y_train[held_out] != clean.y_train[held_out]).any()  # the split's labels are the noisy ones


def test_a_lines_midpoint_and_ends_are_its_path_at_half_and_at_zero_and_one(run):
    _, alpha, summary = run
    line = alpha[alpha["method"] == "line"].set_index(["noise", "seed", "alpha"])
    points = summary[summary["method"] == "line"].set_index(["noise", "seed", "point"])
    for noise in CONFIG.label_noise:
        for seed in CONFIG.seeds:
            assert points.loc[(noise, seed, "midpoint"), "accuracy"] == line.loc[(noise, seed, 0.5), "accuracy"]
            ends = line.loc[[(noise, seed, 0.0), (noise, seed, 1.0)], ["accuracy", "ece"]].mean()  # the line's ends
            assert points.loc[(noise, seed, "endpoint"), ["accuracy", "ece"]].tolist() == pytest.approx(
                ends.tolist(), abs=1e-12)


def trained_alone(config: SubspacesFlowConfig, name: str, seed: int, noise: float, kind: str | None = None,
                  layerwise: bool = False) -> tuple:
    """torch.optim.SGD, one model: init, batch order (and subspace draws) from `seed`'s streams, on noisy labels, on
    the training set less the validation split."""
    data = load_dataset(config.dataset.model_copy(update={"label_noise": noise}))
    step = subspace_step(kind, layerwise, derive_seed(seed, DRAW_STREAM), config.beta) if kind else None
    model, _ = train_one_by_one(init_model(name, data.input_shape, 10, derive_seed(seed, INIT_STREAM)), data.x_train,
                                data.y_train, trained_on(config, data), derive_seed(seed, ORDER_STREAM), config.train,
                                before_step=step)
    return model, data


def trained_on(config: SubspacesFlowConfig, data) -> torch.Tensor:
    """Indices of the training examples the flow trains on: all but its validation split."""
    return (~validation_split(data.n_train, config.validation_fraction, config.dataset.seed)).nonzero().flatten()


def probabilities_at(model, data, coefficients=None, config=CONFIG):
    """`[1, N, C]` test predictions of a model trained alone, at a point, BatchNorm recomputed there from the
    examples trained on."""
    ensemble = Ensemble.from_models([model])
    if coefficients is not None:
        fix_coefficients(ensemble.template, coefficients)
    recalibrate_batchnorm(ensemble, data.x_train[trained_on(config, data)], 50)
    return predict_probabilities(ensemble, data.x_test)


def test_a_path_row_equals_one_subspace_trained_alone(run):
    _, alpha, _ = run
    model, data = trained_alone(CONFIG, "subspace2_mlp_w16_d1", model_seed(CONFIG.seed, 1), 0.2, "line")
    accuracy, _, ece = calibration(probabilities_at(model, data, path_coefficients("line", 2, torch.tensor([0.25]))[0]),
                                     data.y_test)
    row = alpha[(alpha["method"] == "line") & (alpha["noise"] == 0.2) & (alpha["seed"] == 1) & (alpha["alpha"] == 0.25)]
    assert row["accuracy"].item() == pytest.approx(float(accuracy), abs=0.011)  # one test example of 100 may flip
    assert row["ece"].item() == pytest.approx(float(ece), abs=0.01)


def test_a_standard_ensemble_row_equals_its_members_trained_alone(run):
    _, _, summary = run
    seed = model_seed(CONFIG.seed, 0)
    members = [trained_alone(CONFIG, CONFIG.model, s, 0.0) for s in (seed, derive_seed(seed, MEMBER_STREAM, 1))]
    probs = torch.cat([probabilities_at(model, data) for model, data in members]).mean(0, keepdim=True)
    accuracy, _, _ = calibration(probs, members[0][1].y_test)
    row = summary[(summary["method"] == "standard") & (summary["noise"] == 0.0) & (summary["seed"] == 0)
                  & (summary["point"] == "ensemble") & (summary["members"] == 2)]
    assert row["accuracy"].item() == pytest.approx(float(accuracy), abs=0.011)


def test_an_swa_row_equals_torch_swa_utils_on_one_model_trained_alone(run):
    """The flow's SWA: standard training's init and batch order of the seed, the lr held at swa_lr from epoch
    floor(0.25 * 2) = 0 on, both epochs averaged; torch's AveragedModel and SWALR on one model."""
    _, _, summary = run
    seed, noise = model_seed(CONFIG.seed, 1), 0.2
    data = load_dataset(CONFIG.dataset.model_copy(update={"label_noise": noise}))
    assert CONFIG.swa_train().swa_start == 0
    model = swa_one_model(CONFIG.model, data.x_train, data.y_train, trained_on(CONFIG, data),
                          derive_seed(seed, INIT_STREAM), derive_seed(seed, ORDER_STREAM), CONFIG.swa_train(), 10)
    accuracy, _, ece = calibration(probabilities_at(model, data), data.y_test)
    rows = summary[(summary["method"] == "swa") & (summary["noise"] == noise) & (summary["seed"] == 1)]
    assert sorted(rows["point"]) == ["model", "model_best"] and rows["endpoints"].eq(1).all()
    row = rows[rows["point"] == "model"]
    assert row["accuracy"].item() == pytest.approx(float(accuracy), abs=0.011)  # one test example of 100 may flip
    assert row["ece"].item() == pytest.approx(float(ece), abs=0.01)
    standard = summary[(summary["method"] == "standard") & (summary["noise"] == noise) & (summary["seed"] == 1)
                       & (summary["point"] == "model")]
    assert row["ece"].item() != standard["ece"].item()  # not the standard model under another name


def test_a_batchnorm_curves_midpoint_equals_one_trained_alone_with_statistics_recomputed(tmp_path, prefect_harness):
    folder = Path(subspaces_flow(BATCHNORM, data_root=str(tmp_path)))
    summary = pd.read_parquet(folder / "subspace_summary.parquet")
    model, data = trained_alone(BATCHNORM, "subspace3_cnn_bn_w4_d1", model_seed(BATCHNORM.seed, 0), 0.2, "curve")
    accuracy, _, ece = calibration(probabilities_at(model, data, midpoint_coefficients("curve", 3), BATCHNORM),
                                   data.y_test)
    row = summary[(summary["method"] == "curve") & (summary["point"] == "midpoint")]
    assert row["accuracy"].item() == pytest.approx(float(accuracy), abs=0.011)
    assert row["ece"].item() == pytest.approx(float(ece), abs=0.01)


def test_a_rerun_skips_every_task(run):
    folder, _, _ = run
    stamps = {p: p.stat().st_mtime_ns for p in (folder / "shards").rglob("*.parquet")}
    assert len(stamps) == 2 * 2 + 4 * 2 * 2  # alpha rows of two methods, epochs and summaries of four, two noises
    assert Path(subspaces_flow(CONFIG, data_root=str(folder.parents[2]))) == folder
    assert {p: p.stat().st_mtime_ns for p in (folder / "shards").rglob("*.parquet")} == stamps


def test_the_default_methods_in_another_order_are_the_same_config():
    default = SubspacesFlowConfig()
    assert default.methods == ["curve", "layerwise_line", "line", "simplex3", "simplex4", "swa"]
    assert SubspacesFlowConfig(methods=["swa", "simplex4", "line", "curve", "layerwise_line", "simplex3"]) == default


@pytest.mark.parametrize("update,message", [
    ({"dataset": {"name": "digits", "label_noise": 0.1}}, "dataset.label_noise=0.1: this flow sweeps label noise itself"),
    ({"model": "subspace2_mlp_w8_d1"}, "'subspace2_mlp_w8_d1' is not a plain network of mlp, mlp_h"),
    ({"label_noise": [0.2, 1.0]}, "label_noise\n  Value error, must be distinct fractions in [0, 1); got [0.2, 1.0]"),
    ({"methods": ["line", "line"]}, "must be distinct methods"),
    ({"methods": ["plane"]}, "Input should be 'line', 'layerwise_line', 'curve'"),
    ({"methods": ["swa"]}, "methods=['swa']: swa is a baseline; list at least one subspace (line, layerwise_line, "),
    ({"swa_start": 1.0}, "swa_start\n  Input should be less than 1"),
    ({"validation_fraction": 0}, "validation_fraction\n  Input should be greater than 0"),
])
def test_bad_configs_are_refused_with_the_reason(update, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SubspacesFlowConfig.model_validate(update)
