"""The `prune_grid` flow: exact pruning invariants on the stored weights, rewinding, resumption."""
import itertools
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from core.config import derive_seed
from core.data.config import DatasetConfig
from core.data.datasets import load_dataset
from core.findings import COLUMNS
from core.methods.pruning import ERROR_RISES, LOW_ERROR_PLATEAU, target_kept
from core.models.networks import init_model
from core.training.config import TrainConfig
from core.training.experiment import INIT_STREAM, ORDER_STREAM, model_seed
from flows.prune_grid import PruneGridFlowConfig, PruningConfig, prune_grid_flow
from reference import train_one_by_one
from tasks.prune_grid import fraction_subsets

pytestmark = pytest.mark.usefixtures("prefect_harness")

CONFIG = PruneGridFlowConfig(
    dataset=DatasetConfig(name="digits", n_train=400, n_test=100),
    widths=[8, 16], depths=[1], data_fractions=[0.5, 1.0], seeds=[0, 1],
    pruning=PruningConfig(levels=3, prune_fraction=0.2, rewind_step=5),  # in epoch 1 of the 0.5 fraction (4 steps each)
    train=TrainConfig(epochs=2, batch_size=50, lr=0.05),
    pass_grouping="depth",  # both widths in one pass: mlp_w8_d1 trains nested in mlp_w16_d1
)
PRUNABLE = {"mlp_w8_d1": 64 * 8, "mlp_w16_d1": 64 * 16}  # the hidden layer; the classifier stays dense


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = Path(prune_grid_flow(CONFIG, data_root=str(tmp_path_factory.mktemp("data"))))
    return folder, pd.read_parquet(folder / "prune_errors.parquet")


def weights(folder: Path, network: str, level: int) -> dict:
    return load_file(folder / "weights" / network / f"level-{level:02d}.safetensors")


def test_error_table_covers_the_grid(run):
    _, errors = run
    assert len(errors) == 2 * 2 * 2 * 4  # widths x fractions x seeds x (dense + 3 levels)
    assert list(errors.columns) == ["network", "width", "depth", "data_fraction", "seed", "level", "density",
                                    "params_remaining", "train_error", "test_error", "test_loss"]
    assert errors.groupby("network")["width"].first().to_dict() == {"mlp_w16_d1": 16, "mlp_w8_d1": 8}
    folder, _ = run
    findings = pd.read_parquet(folder / "findings.parquet")
    assert list(findings.columns) == list(COLUMNS)
    assert list(findings["claim"]) == [LOW_ERROR_PLATEAU.claim, ERROR_RISES.claim] and set(findings["n_seeds"]) == {2}
    report = (folder / "report.md").read_text()
    assert report.index("## Findings") < report.index("## Tables")


def test_density_is_exactly_0_8_to_the_level(run):
    folder, errors = run
    for network, total in PRUNABLE.items():
        for level in range(4):
            kept = weights(folder, network, level)["mask/1.weight"].flatten(1).sum(1)
            assert kept.tolist() == [target_kept(total, 0.2, level)] * 4
            rows = errors[(errors.network == network) & (errors.level == level)]
            assert (rows["density"] * total).round().tolist() == [target_kept(total, 0.2, level)] * 4
    dense_params = sum(p.numel() for p in init_model("mlp_w8_d1", (1, 8, 8), 10, 0).parameters())
    assert errors[(errors.network == "mlp_w8_d1") & (errors.level == 3)]["params_remaining"].tolist() == \
        [dense_params - (512 - target_kept(512, 0.2, 3))] * 4


def test_pruned_weights_stay_zero_and_masks_only_shrink(run):
    folder, _ = run
    previous = None
    for level in range(4):
        saved = weights(folder, "mlp_w16_d1", level)
        mask, trained = saved["mask/1.weight"], saved["param/1.weight"]
        assert torch.count_nonzero(trained[~mask]) == 0
        if previous is not None:
            assert not (mask & ~previous).any()
        previous = mask


@pytest.mark.parametrize("network", ["mlp_w8_d1", "mlp_w16_d1"])  # the narrow one trains nested in the wide one's pass
def test_each_level_goes_on_from_the_rewind_point_like_one_model_alone(run, network):
    """Independent reference, one model at a time with torch.optim.SGD: k updates from the init give W_k; from
    W_k ⊙ (the stored level-2 mask), updates k..T give exactly the stored level-2 weights."""
    folder, _ = run
    dataset, k = load_dataset(CONFIG.dataset), CONFIG.pruning.rewind_step
    subsets = fraction_subsets(dataset.n_train, [0.5, 1.0], 0)
    snapshot, stored = load_file(folder / "weights" / network / "rewind.safetensors"), weights(folder, network, 2)
    for m, (fraction, seed_index) in enumerate(itertools.product((0, 1), CONFIG.seeds)):  # the grid's row order
        seed, members = model_seed(0, seed_index), subsets[fraction].nonzero().squeeze(1)
        model = init_model(network, dataset.input_shape, 10, derive_seed(seed, INIT_STREAM))
        w_k, _ = train_one_by_one(model, dataset.x_train, dataset.y_train, members, derive_seed(seed, ORDER_STREAM),
                                  CONFIG.train, stop_after=k)
        for name, value in w_k.state_dict().items():
            torch.testing.assert_close(snapshot[name][m], value, atol=1e-6, rtol=1e-5)
        mask = {"1.weight": stored["mask/1.weight"][m].float()}
        reference, updates = train_one_by_one(w_k, dataset.x_train, dataset.y_train, members,
                                              derive_seed(seed, ORDER_STREAM), CONFIG.train, mask=mask, start=k)
        assert updates == CONFIG.train.epochs * (len(members) // CONFIG.train.batch_size) - k  # T - k: 8 - 5 or 16 - 5
        for name, value in reference.state_dict().items():
            torch.testing.assert_close(stored[f"param/{name}"][m], value, atol=1e-5, rtol=1e-4)


def test_a_lost_level_is_recomputed_with_the_levels_made_from_it(run):
    """Level 2 of one network is lost: levels 0-1 are kept, levels 2-3 of the pass are trained again (level 3 was
    made from level 2's weights, so it is out of date once they are rewritten), and the errors are the same."""
    folder, errors = run
    files = sorted(p for p in [*folder.glob("shards/*/*.parquet"), *folder.glob("weights/*/*.safetensors")])
    before = {p: p.stat().st_mtime_ns for p in files}
    (folder / "shards" / "mlp_w8_d1" / "level-02.parquet").unlink()
    with pytest.warns(RuntimeWarning, match=r"level-03.parquet was built from weights/mlp_w16_d1/level-02.safetensors"
                                            r" before they were rewritten \(or removed\); rebuilding it"):
        prune_grid_flow(CONFIG, data_root=str(folder.parents[2]))
    redone = sorted(p.relative_to(folder).as_posix() for p in files if before[p] != p.stat().st_mtime_ns)
    assert redone == [f"{kind}/{net}/level-{level:02d}.{ext}" for kind, ext in (("shards", "parquet"), ("weights", "safetensors"))
                      for net in ("mlp_w16_d1", "mlp_w8_d1") for level in (2, 3)]
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "prune_errors.parquet"), errors)


def test_a_damaged_weights_file_is_detected_and_recomputed(run):
    """One flipped bit in the stored tensors: the level is trained again, to the same weights and errors."""
    folder, errors = run
    path = folder / "weights" / "mlp_w8_d1" / "level-03.safetensors"
    before = {name: value.clone() for name, value in weights(folder, "mlp_w8_d1", 3).items()}  # not the file's pages
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    (folder / "prune_errors.parquet").unlink()
    untouched = (folder / "weights" / "mlp_w8_d1" / "level-02.safetensors").stat().st_mtime_ns
    with pytest.warns(RuntimeWarning, match="do not match their checksum; deleting it, it will be recomputed"):
        prune_grid_flow(CONFIG, data_root=str(folder.parents[2]))
    assert (folder / "weights" / "mlp_w8_d1" / "level-02.safetensors").stat().st_mtime_ns == untouched
    after = weights(folder, "mlp_w8_d1", 3)
    assert all(torch.equal(after[name], value) for name, value in before.items())
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "prune_errors.parquet"), errors)


def test_rewind_step_past_training_is_refused(tmp_path):
    config = CONFIG.model_copy(update={"pruning": PruningConfig(rewind_step=10)})
    with pytest.raises(ValueError, match=r"pruning.rewind_step=10 is after the last update of the smallest data fraction \(8 updates\)"):
        prune_grid_flow(config, data_root=str(tmp_path))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("field,values,message", [
    ("seeds", [-1], r"seeds\n.*must be distinct non-negative integers \(a repeated seed repeats rows\); got \[-1\]"),
    ("seeds", [0, 0], r"must be distinct non-negative integers .*got \[0, 0\]"),
    ("widths", [8, 0], r"widths\n.*must be distinct positive integers; got \[8, 0\]"),
    ("data_fractions", [0.5, 1.5], r"must be distinct fractions in \(0, 1\]; got \[0.5, 1.5\]"),
])
def test_grid_lists_are_validated(field, values, message):
    with pytest.raises(ValueError, match=message):
        PruneGridFlowConfig(**{field: values})
    assert PruneGridFlowConfig(seeds=[2, 0]).seeds == [0, 2]  # stored sorted: the same grid, the same run id


def test_defaults_are_the_shipped_mnist1d_grid():
    """The `prune_grid/mnist1d` deployment runs the defaults: the grid whose fit docs/scaling_law.md reports."""
    shipped = yaml.safe_load((Path(__file__).parents[1] / "flows" / "configs" / "prune-mnist1d.yaml").read_text())
    assert PruneGridFlowConfig() == PruneGridFlowConfig.model_validate(shipped)
