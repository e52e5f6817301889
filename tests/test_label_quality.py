"""K-fold out-of-sample probabilities from models trained together, and cleanlab's scores on them."""
import sys

import numpy as np
import pytest
import torch

from core.data.config import DatasetConfig
from core.data.datasets import load_dataset
from core.methods.label_quality import cleanlab_scores, fold_assignment, fold_subsets, out_of_sample_probabilities
from core.training.config import TrainConfig
from core.training.ensemble import evaluate, predict_probabilities
from core.training.experiment import train_on_subsets


def test_folds_partition_the_examples_in_sizes_that_differ_by_at_most_one():
    fold_of = fold_assignment(103, 5, seed=1)
    assert sorted(np.bincount(fold_of).tolist()) == [20, 20, 21, 21, 21]
    assert np.array_equal(fold_of, fold_assignment(103, 5, seed=1)) and not np.array_equal(fold_of, fold_assignment(103, 5, seed=2))
    subsets = fold_subsets(fold_of, 5)
    assert subsets.shape == (5, 103) and torch.equal((~subsets).sum(0), torch.ones(103, dtype=torch.long))
    assert all(torch.equal(~subsets[k], torch.from_numpy(fold_of == k)) for k in range(5))
    with pytest.raises(ValueError, match="folds must lie between 2 and the 3 examples; got 4"):
        fold_assignment(3, 4, seed=0)


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    """3 MLPs trained together on the 3 fold complements of 240 digits, and their probabilities."""
    dataset = load_dataset(DatasetConfig(name="digits", n_train=240, n_test=60), tmp_path_factory.mktemp("cache"))
    fold_of, seeds = fold_assignment(dataset.n_train, 3, seed=0), [7, 8, 9]
    config = TrainConfig(epochs=3, batch_size=32, lr=0.05)
    outcome = train_on_subsets(dataset, "mlp_w16_d1", seeds, fold_subsets(fold_of, 3), config)
    return dataset, fold_of, seeds, config, outcome, predict_probabilities(outcome.ensemble, dataset.x_train)


def test_probabilities_agree_with_the_evaluated_label_probability(folds):
    dataset, _, _, _, outcome, probabilities = folds
    assert probabilities.shape == (3, 240, 10)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(3, 240))
    given = probabilities.gather(-1, dataset.y_train.expand(3, -1).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(given, evaluate(outcome.ensemble, dataset.x_train, dataset.y_train).label_prob)


def test_each_example_is_scored_by_a_model_that_never_trained_on_it(folds):
    """Rows of fold k equal a model trained alone on the examples outside fold k."""
    dataset, fold_of, seeds, config, _, probabilities = folds
    out_of_sample = out_of_sample_probabilities(probabilities, fold_of)
    for k in range(3):
        alone = train_on_subsets(dataset, "mlp_w16_d1", [seeds[k]], fold_subsets(fold_of, 3)[k : k + 1], config)
        expected = predict_probabilities(alone.ensemble, dataset.x_train)[0, fold_of == k].numpy()
        np.testing.assert_allclose(out_of_sample[fold_of == k], expected, atol=1e-5)


def test_cleanlab_flags_a_confidently_contradicted_label():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 1] * 3)
    probabilities = np.full((30, 3), 0.05)
    probabilities[np.arange(30), labels] = 0.9
    probabilities[4] = [0.9, 0.05, 0.05]  # labelled 1, the model is sure it is a 0
    scores = cleanlab_scores(labels, probabilities)
    assert scores["cleanlab_label_quality"].argmin() == 4 and scores["cleanlab_label_quality"][4] == pytest.approx(0.05)
    assert np.flatnonzero(scores["cleanlab_issue"]).tolist() == [4]


def test_without_cleanlab_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cleanlab.filter", None)  # import of it now raises ImportError
    with pytest.raises(ImportError, match=r"pip install -e '\.\[cleanlab\]'"):
        cleanlab_scores(np.array([0, 1]), np.eye(2))
