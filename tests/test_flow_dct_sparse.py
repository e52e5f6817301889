"""The `dct_sparse` flow: its table against hand counts and against one model trained alone."""
from pathlib import Path

import pandas as pd
import pytest
import torch

from core.config import derive_seed
from core.data.config import DatasetConfig
from core.data.datasets import load_dataset
from core.findings import COLUMNS
from core.methods.dct_sparse import BEATS_PRUNE_AT_INIT, EXTREME_SPARSITY, IMPROVES, NO_MORE_STORAGE
from core.methods.prune_at_init import score_masks, scoring_batches
from core.models.dct_sparse import DCTPlusSparseConv
from core.models.sparse_masks import layer_densities, random_masks
from core.models.networks import init_model
from core.training.config import TrainConfig
from core.training.ensemble import Ensemble, evaluate
from core.training.experiment import INIT_STREAM, MASK_STREAM, ORDER_STREAM, model_seed
from flows.dct_sparse import DCTSparseFlowConfig, dct_sparse_flow
from reference import train_one_by_one
from tasks.dct_sparse import initial_ensemble, initial_masks, sparse_masks

CONFIG = DCTSparseFlowConfig(dataset=DatasetConfig(name="digits", n_train=400, n_test=100), model="mlp_w32_d1",
                             densities=[0.1, 0.01], heuristic="erk", seeds=[0, 1],
                             train=TrainConfig(epochs=2, batch_size=50, lr=0.1))
SHAPES = {"1.weight": (32, 64), "3.weight": (10, 32)}  # digits: 8 x 8 inputs, 10 classes


@pytest.fixture(scope="module")
def run(tmp_path_factory, prefect_harness):
    folder = Path(dct_sparse_flow(CONFIG, data_root=str(tmp_path_factory.mktemp("data"))))
    return folder, pd.read_parquet(folder / "dct_sparse.parquet")


def test_table_columns_rows_and_trainable_parameters_by_hand(run):
    folder, results = run
    assert list(results.columns) == ["layer_type", "mask_rule", "density", "heuristic", "trainable_params",
                                     "stored_bytes", "seed", "test_accuracy", "train_loss"]
    rules = ["grasp", "random", "snip", "synflow"]
    sweep = [[rule, d, s] for rule in rules for d in (0.1, 0.01) for s in (0, 1)]
    assert results[["layer_type", "mask_rule", "density", "seed"]].values.tolist() == (
        [["dct_sparse", *row] for row in sweep] + [["dense", "none", 1.0, 0], ["dense", "none", 1.0, 1]]
        + [["sparse", *row] for row in sweep])
    assert (results["heuristic"] == results["mask_rule"].map({"random": "erk"}).fillna("none")).all()
    biases, total = 32 + 10, 64 * 32 + 32 * 10
    for density in CONFIG.densities:
        random_kept = sum(max(1, round(d * 32 * s))
                          for d, s in zip(layer_densities(SHAPES, density, "erk").values(), [64, 10]))
        for rule in rules:
            kept = random_kept if rule == "random" else round(density * total)  # scores: over all layers at once
            rows = results[(results["density"] == density) & (results["mask_rule"] == rule)].set_index("layer_type")
            assert rows.loc["sparse", "trainable_params"].tolist() == [kept + biases] * 2
            assert rows.loc["dct_sparse", "trainable_params"].tolist() == [kept + biases + 2] * 2  # an alpha a layer
            assert rows.loc["sparse", "stored_bytes"].tolist() == [kept * 8 + biases * 4] * 2  # value + int32 index
            assert rows.loc["dct_sparse", "stored_bytes"].tolist() == [kept * 8 + biases * 4 + 2 * 4] * 2
    assert results[results["layer_type"] == "dense"]["trainable_params"].tolist() == [total + biases] * 2
    assert (folder / "figures" / "accuracy_vs_trainable_params.png").is_file()
    findings = pd.read_parquet(folder / "findings.parquet")
    assert list(findings.columns) == list(COLUMNS) and set(findings["n_seeds"]) == {2}
    assert list(findings["claim"]) == [IMPROVES.claim, EXTREME_SPARSITY.claim, BEATS_PRUNE_AT_INIT.claim,
                                       NO_MORE_STORAGE.claim]
    report = (folder / "report.md").read_text()
    assert report.index("## Findings") < report.index("## Tables") and "| sparse (synflow) |" in report


@pytest.mark.parametrize("rule", ["snip", "grasp", "synflow"])
def test_score_masks_come_from_the_plain_network_at_each_seeds_initial_weights(rule):
    """The same masks for sparse and dct_sparse: the plain network of each seed scored alone, on its own batch."""
    data = load_dataset(CONFIG.dataset)
    masks = initial_masks(CONFIG, rule, data)
    for k, s in enumerate(CONFIG.seeds):
        seed = model_seed(CONFIG.seed, s)
        plain = Ensemble.from_models([init_model("mlp_w32_d1", data.input_shape, 10, derive_seed(seed, INIT_STREAM))])
        x, y = scoring_batches(data.x_train, data.y_train, 10, [derive_seed(seed, MASK_STREAM)])
        alone = score_masks(rule, plain, x, y, CONFIG.densities)
        for i in range(len(CONFIG.densities)):
            assert all(torch.equal(masks[n][i * 2 + k], alone[n][i]) for n in SHAPES), (rule, s, i)


def test_sparse_and_dct_sparse_of_one_seed_share_their_masks_and_draw_per_layer_counts():
    seeds = [derive_seed(model_seed(0, s), MASK_STREAM) for s in (0, 1)]
    masks = sparse_masks(SHAPES, [0.1, 0.01], "erk", seeds)
    assert masks["1.weight"].shape == (4, 32, 64)
    for i, density in enumerate([0.1, 0.01]):
        expected = random_masks(SHAPES, layer_densities(SHAPES, density, "erk"), seeds)
        for name in SHAPES:
            assert torch.equal(masks[name][2 * i:2 * i + 2], expected[name])
    assert not torch.equal(masks["1.weight"][0], masks["1.weight"][1])  # each seed its own positions


@pytest.mark.parametrize("layer_type,row", [("dct_sparse", 6), ("sparse", 24)])  # random masks, density 0.01, seed 0
def test_a_row_equals_one_model_trained_alone(run, layer_type, row):
    """torch.optim.SGD, one model: init from the seed (a DCT+Sparse layer's S at 0, as DCTpS's --init zeros: every
    layer's weight), the seed's mask of density 0.01, the seed's batch order."""
    _, results = run
    data = load_dataset(CONFIG.dataset)
    seed = model_seed(CONFIG.seed, 0)
    name = "dct_mlp_w32_d1" if layer_type == "dct_sparse" else "mlp_w32_d1"
    mask = random_masks(SHAPES, layer_densities(SHAPES, 0.01, "erk"), [derive_seed(seed, MASK_STREAM)])
    model = init_model(name, data.input_shape, 10, derive_seed(seed, INIT_STREAM))
    if layer_type == "dct_sparse":  # sparse_init zeros (the default): S starts at 0, biases and alpha as initialised
        for layer in (model[1], model[3]):
            torch.nn.init.zeros_(layer.weight)
    model, _ = train_one_by_one(model, data.x_train,
                                data.y_train, torch.arange(data.n_train), derive_seed(seed, ORDER_STREAM), CONFIG.train,
                                mask={n: m[0].float() for n, m in mask.items()})
    alone = float(evaluate(Ensemble.from_models([model]), data.x_test, data.y_test).accuracy()[0])
    assert results.loc[row, ["layer_type", "mask_rule", "density", "seed"]].tolist() == [layer_type, "random", 0.01, 0]
    assert results.loc[row, "test_accuracy"] == pytest.approx(alone, abs=0.011)  # one test example of 100 may flip


@pytest.mark.parametrize("sparse_init", ["zeros", "plain"])
def test_dct_sparse_s_starts_at_zero_or_at_the_plain_init_and_the_rest_as_initialised(sparse_init):
    config, data = CONFIG.model_copy(update={"sparse_init": sparse_init}), load_dataset(CONFIG.dataset)
    seeds = [model_seed(config.seed, s) for s in config.seeds]
    plain = {layer_type: initial_ensemble(config, layer_type, seeds, data).state() for layer_type in ("sparse", "dense")}
    ensemble = initial_ensemble(config, "dct_sparse", seeds, data).state()
    for k, seed in enumerate(seeds):
        reference = init_model("dct_mlp_w32_d1", data.input_shape, 10, derive_seed(seed, INIT_STREAM)).state_dict()
        for name, value in reference.items():
            expected = torch.zeros_like(value) if sparse_init == "zeros" and name in SHAPES else value
            assert torch.equal(ensemble[name][k], expected), name
            if name in SHAPES:  # the plain networks keep their initial weights, whatever sparse_init says
                assert torch.equal(plain["sparse"][name][k], value) and torch.equal(plain["dense"][name][k], value)


@pytest.mark.parametrize("patch_order", ["authors", "torch"])
def test_every_dct_sparse_conv_gets_the_configs_patch_order(patch_order):
    config = CONFIG.model_copy(update={"model": "cnn_w4_d2", "patch_order": patch_order})
    template = initial_ensemble(config, "dct_sparse", [1, 2], load_dataset(CONFIG.dataset)).template
    convs = [m for m in template.modules() if isinstance(m, DCTPlusSparseConv)]
    assert len(convs) == 2 and all(conv.patch_order == patch_order for conv in convs)


def test_a_rerun_skips_every_layer_type(run):
    folder, results = run
    stamps = {p.name: p.stat().st_mtime_ns for p in (folder / "shards").iterdir()}
    assert Path(dct_sparse_flow(CONFIG, data_root=str(folder.parents[2]))) == folder
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "shards").iterdir()} == stamps


@pytest.mark.parametrize("model,message", [
    ("dct_mlp_w8_d1", "'dct_mlp_w8_d1' is not a plain network of mlp, mlp_h, lenet_300_100, cnn1d, cnn"),
    ("resnet18", "'resnet18' is not a plain network"),
    ("subspace2_mlp_w8_d1", "'subspace2_mlp_w8_d1' is not a plain network")])
def test_a_dct_or_unstackable_model_name_is_refused(model, message):
    with pytest.raises(ValueError, match=message):
        DCTSparseFlowConfig(model=model)
