"""R_p on hand-built tensors, the equal-budget accounting of the four methods, and the `weight_correlation` flow
against one-model references."""
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from core.config import derive_seed
from core.data.config import DatasetConfig
from core.data.datasets import load_dataset
from core.findings import COLUMNS
from core.methods.pruning import target_kept
from core.methods.weight_correlation import (CORRELATION_FALLS, FINE_TUNE_WINS, METHODS, NO_TICKET_WELL_TRAINED,
                                             TICKET_AT_SMALL_LR, budget, correlation_names, mask_sources, method_gaps,
                                             method_rows,
                                             starting_points, top_fraction, weight_correlation)
from core.models.networks import init_model
from core.training.config import TrainConfig
from core.training.experiment import INIT_STREAM, ORDER_STREAM, REINIT_STREAM, model_seed
from flows.prune_grid import PruningConfig
from flows.weight_correlation import WeightCorrelationFlowConfig, weight_correlation_flow
from reference import train_one_by_one


# ------------------------------------------------------------------ R_p by hand
def test_top_fraction_picks_the_largest_magnitudes_lower_index_on_ties():
    values = torch.tensor([[0.1, -5.0, 2.0, -2.0, 0.3], [1.0, 1.0, 1.0, 1.0, 1.0]])
    assert top_fraction(values, 0.4).tolist() == [[False, True, True, False, False], [True, True, False, False, False]]


def test_r_p_counts_the_top_p_overlap_over_layers_by_hand():
    """Layer a: 10 weights, top 2 at init {0, 1}, after training {1, 5}: overlap 1. Layer b: 5 weights, top 1 at init
    {4}, after training {4}: overlap 1. R_0.2 = (1 + 1) / (0.2 x 15) = 2 / 3."""
    init = {"a": torch.tensor([[9.0, -8, 1, 1, 1, 1, 1, 1, 1, 1]]), "b": torch.tensor([[0.1, 0.2, 0.3, 0.4, -7.0]])}
    trained = {"a": torch.tensor([[0.0, 5, 1, 1, 1, -6, 1, 1, 1, 1]]), "b": torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]])}
    assert weight_correlation(init, trained, ["a", "b"], 0.2).tolist() == pytest.approx([2 / 3])
    assert weight_correlation(init, trained, ["b"], 0.2).tolist() == [1.0]


def test_r_p_by_the_papers_eq1_divides_by_p_times_the_weights_not_by_the_rounded_top_count():
    """p = 0.3 on the layers above: a's top round(3) = 3 at init {0, 1, 2} (the first 1 of the ties), after training
    {5, 1, 2}: overlap 2; b's top round(1.5) = 2 at init {4, 3}, after training {4, 0}: overlap 1. Eq. 1: 3 / (0.3 x
    15) = 2/3; over the top count rounded per layer: 3 / (3 + 2) = 0.6."""
    init = {"a": torch.tensor([[9.0, -8, 1, 1, 1, 1, 1, 1, 1, 1]]), "b": torch.tensor([[0.1, 0.2, 0.3, 0.4, -7.0]])}
    trained = {"a": torch.tensor([[0.0, 5, 1, 1, 1, -6, 1, 1, 1, 1]]), "b": torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]])}
    assert weight_correlation(init, trained, ["a", "b"], 0.3).tolist() == pytest.approx([2 / 3])
    assert weight_correlation(init, trained, ["a", "b"], 0.3, "prunable_rounded").tolist() == pytest.approx([0.6])


def test_eq1_counts_every_layer_the_classifier_included():
    template = init_model("mlp_w8_d2", (1, 16), 10, 0)
    every_layer = ["1.weight", "3.weight", "5.weight"]  # flatten, then Linear, ReLU, Linear, ReLU, Linear
    assert correlation_names(template, "eq1", prune_output=False) == every_layer
    assert correlation_names(template, "prunable_rounded", prune_output=False) == every_layer[:-1]
    assert correlation_names(template, "prunable_rounded", prune_output=True) == every_layer


def test_r_p_is_one_for_unmoved_weights_zero_for_reversed_and_p_for_unrelated():
    g = torch.Generator().manual_seed(0)
    init = {"w": torch.randn(3, 200, 100, generator=g)}
    ranks = init["w"].abs().flatten(1).argsort(1).argsort(1).float()  # 0 for the smallest magnitude
    assert weight_correlation(init, {"w": init["w"] * 0.5}, ["w"], 0.1).tolist() == [1.0, 1.0, 1.0]
    assert weight_correlation(init, {"w": -ranks.view(3, 200, 100)}, ["w"], 0.1).tolist() == [1.0, 1.0, 1.0]
    assert weight_correlation(init, {"w": 1 / (1 + ranks.view(3, 200, 100))}, ["w"], 0.3).tolist() == [0.0, 0.0, 0.0]
    unrelated = weight_correlation(init, {"w": torch.randn(3, 200, 100, generator=g)}, ["w"], 0.1)
    assert unrelated.tolist() == pytest.approx([0.1] * 3, abs=0.01)  # 2,000 top weights: sd of the overlap ~ 0.005


def test_r_p_refuses_a_fraction_outside_0_1():
    with pytest.raises(ValueError, match=r"p=1.5 must be a fraction in \(0, 1\]"):
        weight_correlation({"w": torch.ones(1, 4)}, {"w": torch.ones(1, 4)}, ["w"], 1.5)


# ------------------------------------------------------------------ the four methods' accounting
def test_rows_starts_and_masks_of_the_four_methods_by_hand():
    base = 2  # rows: lottery_ticket 0-1, rewind 2-3, fine_tune 4-5, random_reinit 6-7
    assert [method_rows(m, base) for m in METHODS] == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert mask_sources(base).tolist() == [0, 1, 2, 3, 4, 5, 0, 1]  # the control takes the lottery ticket's mask
    points = {p: {"w": torch.full((base, 3), value)} for p, value in [("init", 1.0), ("rewind", 2.0), ("reinit", 4.0)]}
    trained = {"w": torch.arange(8.0).view(8, 1).expand(8, 3)}
    start = starting_points(points, trained, base)["w"][:, 0].tolist()
    assert start == [1.0, 1.0, 2.0, 2.0, 4.0, 5.0, 4.0, 4.0]  # fine-tune goes on from its own rows 4 and 5


def test_every_method_has_spent_the_same_updates_after_each_round():
    """Dense: T updates. Each round, every row trains T more; the control's mask cost the lottery ticket's chain."""
    base, t = 3, 40
    spent = torch.full((len(METHODS) * base,), t)
    for level in range(1, 5):
        spent = budget(spent, torch.full_like(spent, t), base)
        assert spent.tolist() == [(level + 1) * t] * len(spent)
    uneven = budget(torch.arange(8), torch.zeros(8, dtype=torch.long), 2)
    assert uneven.tolist() == [0, 1, 2, 3, 4, 5, 0, 1]


def test_method_gaps_pair_methods_by_seed_and_round():
    rows = []
    for seed, shift in [(0, 0.0), (1, 0.1)]:
        rows.append({"lr": 0.1, "method": "dense", "density": 1.0, "seed": seed, "test_accuracy": 0.8 + shift})
        for density, accs in [(0.8, (0.7, 0.72, 0.9, 0.6)), (0.64, (0.6, 0.6, 0.8, 0.4))]:
            rows += [{"lr": 0.1, "method": m, "density": density, "seed": seed, "test_accuracy": a + shift}
                     for m, a in zip(METHODS, accs)]
    gaps = method_gaps(pd.DataFrame(rows)).iloc[0]
    assert gaps["lt_minus_random"] == pytest.approx(0.15)  # (0.1 + 0.2) / 2, the same for both seeds
    assert gaps["ft_minus_lt"] == pytest.approx(0.2) and gaps["rewind_minus_lt"] == pytest.approx(0.01)
    assert gaps["dense_accuracy"] == pytest.approx(0.85) and gaps["lt_minus_random_sem"] == pytest.approx(0.0)


# ------------------------------------------------------------------ the flow, end to end
CONFIG = WeightCorrelationFlowConfig(
    dataset=DatasetConfig(name="digits", n_train=400, n_test=100), model="mlp_w16_d1",
    learning_rates=[0.01, 0.1], correlation_fractions=[0.1, 0.5], seeds=[0, 1],
    pruning=PruningConfig(levels=2, prune_fraction=0.2, rewind_step=3), train=TrainConfig(epochs=2, batch_size=50))
T = 2 * (400 // 50)  # updates of every training
PRUNABLE = 64 * 16  # the hidden layer; the classifier stays dense


@pytest.fixture(scope="module")
def run(tmp_path_factory, prefect_harness):
    folder = Path(weight_correlation_flow(CONFIG, data_root=str(tmp_path_factory.mktemp("data"))))
    return folder, pd.read_parquet(folder / "lt_vs_pf.parquet"), pd.read_parquet(folder / "weight_correlation.parquet")


def test_tables_have_the_documented_columns_and_rows(run):
    folder, results, correlations = run
    assert list(results.columns) == ["lr", "method", "density", "seed", "updates", "test_accuracy"]
    assert len(results) == 4 * (1 + 4 * 2)  # base models x (dense + 4 methods x 2 rounds)
    assert list(correlations.columns) == ["lr", "p", "r_p", "seed"] and len(correlations) == 4 * 2
    assert sorted((folder / "figures").glob("*.png")) == [folder / "figures" / "accuracy_by_method.png",
                                                           folder / "figures" / "r_p_vs_p.png"]
    findings = pd.read_parquet(folder / "findings.parquet")
    assert list(findings.columns) == list(COLUMNS) and set(findings["n_seeds"]) == {2}
    assert list(findings["claim"]) == [claim.claim for claim in (CORRELATION_FALLS, TICKET_AT_SMALL_LR,
                                                                 NO_TICKET_WELL_TRAINED, FINE_TUNE_WINS)]
    report = (folder / "report.md").read_text()
    assert report.index("## Findings") < report.index("## Tables")


def test_equal_budget_and_exact_density_in_every_round(run):
    _, results, _ = run
    for level in range(3):
        rows = results[(results["density"] - target_kept(PRUNABLE, 0.2, level) / PRUNABLE).abs() < 1e-9]
        assert len(rows) == (4 if level == 0 else 16)
        assert set(rows["updates"]) == {(level + 1) * T}


def weights(folder: Path, level: int) -> dict:
    return load_file(folder / "weights" / f"round-{level:02d}.safetensors")


def test_masks_of_the_control_and_of_round_one(run):
    folder, _, _ = run
    first, second = weights(folder, 1)["mask/1.weight"], weights(folder, 2)["mask/1.weight"]
    assert torch.equal(first[0:4], first[4:8]) and torch.equal(first[0:4], first[8:12])  # all pruned the dense run
    assert torch.equal(second[12:16], second[0:4])  # random_reinit keeps the lottery ticket's mask
    assert not torch.equal(second[8:12], second[0:4])  # fine-tune prunes its own weights
    assert not (second & ~first).any()


def one_model(lr: float, seed: int) -> tuple[int, int, int, TrainConfig]:
    s = model_seed(CONFIG.seed, seed)
    return derive_seed(s, INIT_STREAM), derive_seed(s, ORDER_STREAM), derive_seed(s, REINIT_STREAM), \
        CONFIG.train.model_copy(update={"lr": lr})


@pytest.mark.parametrize("row", [0, 3])  # base models (lr 0.01, seed 0) and (lr 0.1, seed 1)
def test_each_method_trains_as_one_model_alone_from_its_start(run, row):
    """torch.optim.SGD, one model: the dense run, its rewind point, and round 2 of every method from its own start."""
    folder, results, correlations = run
    lr, seed = [(lr, s) for lr in CONFIG.learning_rates for s in CONFIG.seeds][row]
    init_seed, order_seed, reinit_seed, config = one_model(lr, seed)
    data = load_dataset(CONFIG.dataset)
    everyone, shape = torch.arange(data.n_train), data.input_shape
    dense, _ = train_one_by_one(init_model("mlp_w16_d1", shape, 10, init_seed), data.x_train, data.y_train, everyone,
                                order_seed, config)
    rewind, _ = train_one_by_one(init_model("mlp_w16_d1", shape, 10, init_seed), data.x_train, data.y_train, everyone,
                                 order_seed, config, stop_after=CONFIG.pruning.rewind_step)
    saved = weights(folder, 0)
    torch.testing.assert_close(saved["state/1.weight"][row], dense.state_dict()["1.weight"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(saved["rewind/1.weight"][row], rewind.state_dict()["1.weight"], atol=1e-5, rtol=1e-4)
    round1, round2 = weights(folder, 1), weights(folder, 2)
    starts = {"lottery_ticket": init_model("mlp_w16_d1", shape, 10, init_seed).state_dict(),
              "rewind": rewind.state_dict(),
              "fine_tune": {n: round1[f"state/{n}"][8 + row] for n in dense.state_dict()},
              "random_reinit": init_model("mlp_w16_d1", shape, 10, reinit_seed).state_dict()}
    for m, method in enumerate(METHODS):
        k = 4 * m + row
        model = init_model("mlp_w16_d1", shape, 10, 0)
        model.load_state_dict(starts[method])
        mask = {"1.weight": round2["mask/1.weight"][k].float()}
        reference, steps = train_one_by_one(model, data.x_train, data.y_train, everyone, order_seed, config, mask=mask)
        assert steps == T
        for name, value in reference.state_dict().items():
            torch.testing.assert_close(round2[f"state/{name}"][k], value, atol=1e-5, rtol=1e-4, msg=f"{method} {name}")
    recorded = correlations[(correlations["lr"] == lr) & (correlations["seed"] == seed)]["r_p"].tolist()
    layers = ["1.weight", "3.weight"]  # R_p by Eq. 1: every layer, the classifier (not pruned here) included
    init = {n: init_model("mlp_w16_d1", shape, 10, init_seed).state_dict()[n][None] for n in layers}
    trained = {n: dense.state_dict()[n][None] for n in layers}
    expected = [float(weight_correlation(init, trained, layers, p)) for p in CONFIG.correlation_fractions]
    assert recorded == pytest.approx(expected)


def test_a_rerun_skips_every_round_and_a_removed_round_is_redone_with_those_after_it(run, tmp_path):
    folder, results, _ = run
    stamps = {p.name: p.stat().st_mtime_ns for p in (folder / "weights").iterdir()}
    again = Path(weight_correlation_flow(CONFIG, data_root=str(folder.parents[2])))
    assert again == folder
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "weights").iterdir()} == stamps
    (folder / "weights" / "round-01.safetensors").unlink()
    with pytest.warns(RuntimeWarning, match="round-02.parquet was built from weights/round-01.safetensors before"):
        weight_correlation_flow(CONFIG, data_root=str(folder.parents[2]))
    after = {p.name: p.stat().st_mtime_ns for p in (folder / "weights").iterdir()}
    assert after["round-00.safetensors"] == stamps["round-00.safetensors"]
    assert after["round-01.safetensors"] != stamps.get("round-01.safetensors")
    assert after["round-02.safetensors"] != stamps["round-02.safetensors"]
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "lt_vs_pf.parquet"), results)  # same seeds, same numbers


def test_a_rewind_step_past_training_is_refused_before_the_run(tmp_path, prefect_harness):
    late = CONFIG.model_copy(update={"pruning": PruningConfig(levels=1, rewind_step=T + 1)})
    with pytest.raises(ValueError, match=rf"pruning.rewind_step={T + 1} is after the last update \({T}\)"):
        weight_correlation_flow(late, data_root=str(tmp_path))
    assert not (tmp_path / "runs").exists()
