"""The `deq` flow: its tables' keys and exact invariants, and rows against DEQs trained alone (with the regulariser
written out in tests/reference.py)."""
from pathlib import Path

import pandas as pd
import pytest
import torch

from core.config import derive_seed
from core.data.config import DatasetConfig
from core.data.datasets import load_dataset
from core.findings import COLUMNS
from core.methods.deq import COMPARED, GROWING_ITERATIONS, GROWING_JACOBIAN
from core.models.networks import init_model
from core.training.config import TrainConfig
from core.training.experiment import DRAW_STREAM, INIT_STREAM, ORDER_STREAM, model_seed
from flows.deq import DEQFlowConfig, MonitorConfig, PenaltyConfig, SolverConfig, deq_flow
from reference import jacobian_penalty_step, train_one_by_one

CONFIG = DEQFlowConfig(dataset=DatasetConfig(name="synthetic", n_train=400, n_test=100), model="deq_w8",
                       gammas=[0.0, 1.0], seeds=[0, 1], solver=SolverConfig(tol=1e-5, max_iter=40),
                       penalty=PenaltyConfig(fraction=0.5, samples=2),
                       monitor=MonitorConfig(examples=60, samples=2, power_iters=5, caps=[1, 3]),
                       train=TrainConfig(epochs=2, batch_size=50, lr=0.1))


@pytest.fixture(scope="module")
def run(tmp_path_factory, prefect_harness):
    folder = Path(deq_flow(CONFIG, data_root=str(tmp_path_factory.mktemp("data"))))
    return folder, pd.read_parquet(folder / "deq_epochs.parquet"), pd.read_parquet(folder / "deq_inference.parquet")


def test_tables_hold_every_gamma_seed_epoch_and_cap(run):
    folder, epochs, inference = run
    solves = [f"{d}_{f}" for d in ("forward", "backward") for f in ("steps", "residual", "converged")]
    assert list(epochs.columns) == ["gamma", "seed", "epoch", "train_loss", *(f"train_{s}" for s in solves),
                                    "accuracy", *solves, "jacobian_frobenius", "spectral_radius", "epoch_seconds"]
    assert epochs[["gamma", "seed", "epoch"]].values.tolist() == [[g, s, e] for g in (0, 1) for s in (0, 1)
                                                                  for e in (1, 2)]
    assert list(inference.columns) == ["gamma", "seed", "epoch", "cap", "accuracy", "residual"]
    assert inference[["gamma", "seed", "epoch", "cap"]].values.tolist() == [
        [g, s, e, c] for g in (0, 1) for s in (0, 1) for e in (1, 2) for c in (1, 3)]
    for direction in ("forward", "backward"):  # 8 probed rows, every solve within its cap and tolerance
        assert epochs[f"{direction}_steps"].between(1, 40).all() and (epochs[f"{direction}_converged"] == 1).all()
        assert (epochs[f"{direction}_residual"] <= {"forward": 1e-5, "backward": 1e-3}[direction]).all()
    assert inference.loc[inference["cap"] == 1, "residual"].tolist() == pytest.approx([1.0] * 8)  # the zero start
    assert (epochs["epoch_seconds"] > 0).all() and (epochs["spectral_radius"] > 0).all()
    for name in ("solver_and_jacobian_by_epoch.png", "capped_inference.png"):
        assert (folder / "figures" / name).is_file()
    report = (folder / "report.md").read_text()
    assert "| gamma | seeds | epoch | accuracy | accuracy_sem |" in report
    findings = pd.read_parquet(folder / "findings.parquet")  # growth at gamma 0, then gamma 1 against 0
    assert list(findings.columns) == list(COLUMNS) and findings["n_seeds"].eq(2).all()
    assert findings["claim"].tolist() == [c.claim for c in (GROWING_ITERATIONS, GROWING_JACOBIAN,
                                                            *(claim for claim, _ in COMPARED))]
    assert findings["measure"][4].startswith("relative residual of the fixed point after 3 solver iterations")
    assert 0 <= report.index("## Findings") < report.index("## Tables")


def trained_alone(seed_index: int, gamma: float):
    """Seed `seed_index`'s DEQ trained alone with plain torch.optim.SGD (and the regulariser when gamma > 0)."""
    data = load_dataset(CONFIG.dataset)
    seed = model_seed(CONFIG.seed, seed_index)
    model = init_model(CONFIG.model, data.input_shape, data.num_classes, derive_seed(seed, INIT_STREAM))
    block = model[1]
    block.tol, block.max_iter, block.backward_tol, block.backward_max_iter = 1e-5, 40, 1e-3, 30
    step = jacobian_penalty_step(gamma, 0.5, 2, derive_seed(seed, DRAW_STREAM)) if gamma else None
    train_one_by_one(model, data.x_train, data.y_train, torch.arange(data.n_train), derive_seed(seed, ORDER_STREAM),
                     CONFIG.train, before_step=step)
    return model, data


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_a_row_equals_one_deq_trained_alone(run, gamma):
    _, epochs, inference = run
    model, data = trained_alone(1, gamma)
    x, y = data.x_test[:60], data.y_test[:60]
    with torch.no_grad():
        logits = model(x)
    row = epochs[(epochs["gamma"] == gamma) & (epochs["seed"] == 1) & (epochs["epoch"] == 2)]
    assert row["accuracy"].item() == pytest.approx((logits.argmax(1) == y).double().mean().item(), abs=0.017)
    assert row["forward_steps"].item() == pytest.approx(model[1].stats.forward.steps.double().mean().item(), abs=0.05)


def test_a_rerun_skips_every_task(run):
    folder, _, _ = run
    stamps = {p: p.stat().st_mtime_ns for p in (folder / "shards").rglob("*.parquet")}
    assert len(stamps) == 2 * 2  # epochs and inference of two gammas
    assert Path(deq_flow(CONFIG, data_root=str(folder.parents[2]))) == folder
    assert {p: p.stat().st_mtime_ns for p in (folder / "shards").rglob("*.parquet")} == stamps


def test_a_batch_larger_than_the_training_set_is_refused_before_any_work(tmp_path):
    small = CONFIG.model_copy(update={"dataset": DatasetConfig(name="synthetic", n_train=40, n_test=20)})
    with pytest.raises(ValueError, match=r"^train.batch_size=50 is larger than the training set \(40\)$"):
        deq_flow.fn(small, data_root=str(tmp_path))
    assert not (tmp_path / "runs").exists()
