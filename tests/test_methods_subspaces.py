"""The points a trained subspace is evaluated at, accuracy and ECE of predictions, and the gains over standard
training, all by hand."""
import pandas as pd
import pytest
import torch

from core.methods.subspaces import calibration, end_coefficients, ensemble_sizes, gains_over_standard, midpoint_coefficients, path_coefficients
from core.models.names import METHODS


def test_paths_midpoints_and_ends_by_hand():
    alphas = torch.tensor([0.0, 0.25, 1.0])
    assert torch.allclose(path_coefficients("line", 2, alphas), torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.0, 1.0]]))
    assert torch.allclose(path_coefficients("curve", 3, alphas),
                          torch.tensor([[1.0, 0.0, 0.0], [0.5625, 0.375, 0.0625], [0.0, 0.0, 1.0]]))
    assert torch.allclose(path_coefficients("simplex", 4, alphas),  # the edge from endpoint 0 to endpoint 1
                          torch.tensor([[1.0, 0, 0, 0], [0.75, 0.25, 0, 0], [0.0, 1.0, 0, 0]]))
    assert torch.allclose(midpoint_coefficients("line", 2), torch.tensor([0.5, 0.5]))
    assert torch.allclose(midpoint_coefficients("curve", 3), torch.tensor([0.25, 0.5, 0.25]))
    assert torch.allclose(midpoint_coefficients("simplex", 3), torch.full((3,), 1 / 3))
    assert torch.equal(end_coefficients("line", 2), torch.eye(2))
    assert torch.equal(end_coefficients("simplex", 4), torch.eye(4))
    assert torch.equal(end_coefficients("curve", 3), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))  # no control point


def test_ensemble_sizes_are_the_ends_of_each_method():
    assert ensemble_sizes(["line", "curve", "simplex4", "layerwise_simplex3"]) == [2, 3, 4]
    assert ensemble_sizes(["curve"]) == [2]
    assert {kind for kind, _, _ in METHODS.values()} == {"line", "curve", "simplex"}


def test_accuracy_confidence_and_ece_by_hand():
    # model 0: confident and right twice, wrong once at 0.6; model 1: right everywhere at 0.9
    probs = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.4]],
                          [[0.9, 0.1], [0.1, 0.9], [0.1, 0.9]]])
    labels = torch.tensor([0, 1, 1])
    accuracy, confidence, ece = calibration(probs, labels)
    assert accuracy.tolist() == pytest.approx([2 / 3, 1.0])
    assert confidence.tolist() == pytest.approx([(1 + 1 + 0.6) / 3, 0.9])
    # model 0: bin (0.95, 1] acc 1 conf 1 (2 of 3), bin (0.55, 0.6] acc 0 conf 0.6 (1 of 3); model 1: |1 - 0.9|
    assert ece.tolist() == pytest.approx([0.6 / 3, 0.1])


def test_gains_are_paired_by_seed_with_their_standard_errors():
    rows = []
    for seed, (standard, midpoint, ensemble2, ends2) in enumerate([(0.70, 0.74, 0.75, 0.78), (0.60, 0.62, 0.66, 0.66),
                                                                   (0.80, 0.81, 0.82, 0.85)]):
        rows += [("standard", 1, 0.2, seed, "model", 1, standard, 0.9, 0.10),
                 ("standard", 1, 0.2, seed, "ensemble", 2, ensemble2, 0.8, 0.08),
                 ("line", 2, 0.2, seed, "midpoint", 1, midpoint, 0.6 + 0.1 * seed, 0.10 - 0.01 * seed),
                 ("line", 2, 0.2, seed, "endpoint", 1, 0.5, 0.7, 0.2),
                 ("line", 2, 0.2, seed, "ensemble", 2, ends2, 0.7, 0.05),
                 ("standard", 1, 0.2, seed, "model_best", 1, 0.72, 0.9, 0.1),  # early-stopped: gains 0.01, 0.03, 0.05
                 ("line", 2, 0.2, seed, "midpoint_best", 1, 0.73 + 0.02 * seed, 0.9, 0.1)]
    summary = pd.DataFrame(rows, columns=["method", "endpoints", "noise", "seed", "point", "members", "accuracy",
                                          "confidence", "ece"])
    [gain] = gains_over_standard(summary).to_dict("records")
    accuracy_gains, ece_changes, ensemble_gains = [0.04, 0.02, 0.01], [0.0, -0.01, -0.02], [0.03, 0.0, 0.03]
    assert (gain["noise"], gain["method"], gain["seeds"]) == (0.2, "line", 3)
    assert gain["accuracy_gain"] == pytest.approx(sum(accuracy_gains) / 3)
    assert gain["accuracy_gain_sem"] == pytest.approx(pd.Series(accuracy_gains).std() / 3 ** 0.5)
    assert gain["ece_change"] == pytest.approx(sum(ece_changes) / 3)
    assert gain["ece_change_sem"] == pytest.approx(pd.Series(ece_changes).std() / 3 ** 0.5)
    assert gain["ensemble_gain"] == pytest.approx(sum(ensemble_gains) / 3)
    assert (gain["early_stopped_gain"], gain["early_stopped_gain_sem"]) == pytest.approx((0.03, 0.02 / 3 ** 0.5))
    assert gain["midpoint_accuracy"] == pytest.approx((0.74 + 0.62 + 0.81) / 3)
    assert gain["standard_accuracy"] == pytest.approx(0.70)
    assert (gain["midpoint_confidence"], gain["standard_confidence"]) == pytest.approx((0.7, 0.9))
