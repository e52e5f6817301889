"""Early stopping in the subspaces flow (core.methods.subspace_epochs): the validation split, the best-epoch selection
by hand on a scripted table, and the per-epoch evaluation hook, which must leave training exactly as it was and
report what an evaluation after training reports."""
import re

import pandas as pd
import pytest
import torch

from core.data.config import DatasetConfig
from core.data.datasets import load_dataset
from core.methods.subspace_epochs import EpochEvaluation, best_epochs, evaluated_point, validation_split
from core.methods.subspaces import SubspaceTraining, calibration, midpoint_coefficients
from core.models.subspaces import fix_coefficients
from core.training.averaging import StackedWeightAveraging
from core.training.config import TrainConfig
from core.training.ensemble import Ensemble, predict_probabilities
from core.training.hooks import TrainingHooks
from core.training.recalibration import recalibrate_batchnorm
from core.training.trainer import train

TRAIN = TrainConfig(epochs=3, batch_size=50, lr=0.1)


def test_the_validation_split_is_a_fixed_share_drawn_from_the_dataset_seed_alone():
    split = validation_split(400, 0.1, dataset_seed=0)
    assert split.dtype == torch.bool and int(split.sum()) == 40
    assert torch.equal(split, validation_split(400, 0.1, dataset_seed=0))  # every arm, seed and noise level
    assert not torch.equal(split, validation_split(400, 0.1, dataset_seed=1))
    assert int(validation_split(10, 0.25, 0).sum()) == 2  # round(2.5) = 2, Python's rounding
    with pytest.raises(ValueError, match=re.escape("validation_fraction=0.01 of 10 training examples holds out 0; it "
                                                   "must hold out at least one")):
        validation_split(10, 0.01, 0)


def test_the_best_epoch_is_the_highest_validation_accuracy_and_the_earliest_of_a_tie():
    """Seed 0: validation 0.5, 0.7, 0.7, 0.6 (a tie at epochs 2 and 3: epoch 2). Seed 1: 0.4, 0.3, 0.4, 0.9 (epoch 4).
    Rows given out of order, and a second point whose best is its first epoch."""
    rows = [("line", 0.2, 0, epoch, "midpoint", validation, 0.1 * epoch)
            for epoch, validation in zip((3, 1, 4, 2), (0.7, 0.5, 0.6, 0.7))]
    rows += [("line", 0.2, 1, epoch, "midpoint", validation, 0.2 * epoch)
             for epoch, validation in zip((1, 2, 3, 4), (0.4, 0.3, 0.4, 0.9))]
    rows += [("standard", 0.2, 0, epoch, "model", validation, 0.5) for epoch, validation in ((2, 0.1), (1, 0.8))]
    table = pd.DataFrame(rows, columns=["method", "noise", "seed", "epoch", "point", "validation_accuracy", "accuracy"])
    best = best_epochs(table)
    assert best[["method", "seed", "point", "epoch", "validation_accuracy"]].values.tolist() == [
        ["line", 0, "midpoint", 2, 0.7], ["line", 1, "midpoint", 4, 0.9], ["standard", 0, "model", 1, 0.8]]
    assert best["accuracy"].tolist() == pytest.approx([0.2, 0.8, 0.5])


@pytest.fixture(scope="module")
def data():
    return load_dataset(DatasetConfig(name="digits", n_train=300, n_test=100))


def trained(data, name: str, hooks_for, evaluate: bool, **at):
    """Two models of `name` trained for TRAIN's epochs with `hooks_for(ensemble)`'s hooks and, when `evaluate`, the
    per-epoch evaluation (`at`: how `hooks_for`'s objects give the point evaluated)."""
    ensemble = Ensemble.init(name, data.input_shape, 10, [11, 12])
    hooks, at_point = hooks_for(ensemble)
    evaluation = EpochEvaluation(ensemble, (data.x_train[:60], data.y_train[:60]), (data.x_test, data.y_test), [0, 1],
                                 "point", calibration_x=data.x_train[60:260], batch_size=50, **at_point)

    def after_epoch(epoch):
        if hooks.epoch is not None:
            hooks.epoch(epoch)
        if evaluate:
            evaluation.epoch(epoch)

    subsets = torch.ones(2, data.n_train, dtype=torch.bool)
    subsets[:, :60] = False
    train(ensemble, data.x_train, data.y_train, subsets, [5, 6], hooks_for.config,
          hooks=TrainingHooks(hooks.step, hooks.regularizer, after_epoch))
    return ensemble, evaluation.table()


def subspace_hooks(ensemble):
    """A BatchNorm line's training hooks, evaluated at its midpoint."""
    training = SubspaceTraining(ensemble, "line", [21, 22])
    return training.hooks(), {"coefficients": midpoint_coefficients("line", 2)}


def swa_hooks(ensemble):
    """SWA from epoch 1 on, evaluated at the running mean from then on."""
    averaging = StackedWeightAveraging(ensemble, swa_hooks.config)
    return averaging.hooks(), {"params": averaging.mean, "first_epoch": averaging.start}


subspace_hooks.config = TRAIN
swa_hooks.config = TRAIN.model_copy(update={"swa_start": 1, "swa_lr": 0.05})


@pytest.mark.parametrize("name,hooks_for", [("subspace2_cnn_bn_w4_d1", subspace_hooks), ("cnn_bn_w4_d1", swa_hooks)])
def test_evaluating_every_epoch_leaves_training_bit_for_bit_as_it_was(data, name, hooks_for):
    plain, _ = trained(data, name, hooks_for, evaluate=False)
    evaluated, table = trained(data, name, hooks_for, evaluate=True)
    for name_, value in plain.params.items():
        assert torch.equal(value, evaluated.params[name_]), name_
    for name_, value in plain.buffers.items():
        assert torch.equal(value, evaluated.buffers[name_]), name_
    first = 1 if hooks_for is swa_hooks else 0  # SWA's average exists from swa_start on
    assert table["epoch"].tolist() == [e for e in range(first + 1, TRAIN.epochs + 1) for _ in range(2)]
    assert table[["validation_accuracy", "accuracy", "confidence", "ece"]].stack().between(0, 1).all()


def test_the_last_epochs_midpoint_row_is_the_midpoint_evaluated_after_training(data):
    """Independently: fix the trained line at its midpoint, recompute BatchNorm on the same examples, predict."""
    ensemble, table = trained(data, "subspace2_cnn_bn_w4_d1", subspace_hooks, evaluate=True)
    fix_coefficients(ensemble.template, midpoint_coefficients("line", 2))
    recalibrate_batchnorm(ensemble, data.x_train[60:260], 50)
    with torch.no_grad():
        test = predict_probabilities(ensemble, data.x_test)
        validation = predict_probabilities(ensemble, data.x_train[:60])
    accuracy, confidence, ece = calibration(test, data.y_test)
    last = table[table["epoch"] == TRAIN.epochs]
    assert last["accuracy"].tolist() == accuracy.tolist() and last["ece"].tolist() == ece.tolist()
    assert last["confidence"].tolist() == confidence.tolist()
    validation_accuracy = (validation.argmax(-1) == data.y_train[:60]).double().mean(1)
    assert last["validation_accuracy"].tolist() == validation_accuracy.tolist()


def test_an_evaluated_point_restores_parameters_buffers_and_coefficients(data):
    ensemble = Ensemble.init("subspace2_cnn_bn_w4_d1", data.input_shape, 10, [1, 2])
    fix_coefficients(ensemble.template, torch.tensor([0.9, 0.1]))
    before = {n: t.clone() for n, t in {**ensemble.params, **ensemble.buffers}.items()}
    layer_coefficients = [layer.coefficients for layer in SubspaceTraining(ensemble, "line", [3, 4]).layers]
    average = {n: p.detach() + 1 for n, p in ensemble.params.items()}
    with evaluated_point(ensemble, average, torch.tensor([0.5, 0.5]), data.x_train[:100], 50):
        assert torch.equal(next(iter(ensemble.params.values())), next(iter(average.values())))
    for name, value in {**ensemble.params, **ensemble.buffers}.items():
        assert torch.equal(value, before[name]), name
    assert [layer.coefficients for layer in SubspaceTraining(ensemble, "line", [3, 4]).layers] == layer_coefficients
