"""Foreign examples mixed into a training split (dataset.foreign): count, labels, ids, sources, features by hand,
the examples table's column, and the run id."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from core.config import run_id
from core.data.config import DatasetConfig
from core.data.datasets import load_dataset
from core.data.foreign import FOREIGN_ID_START
from core.data.sources import FASHION_MNIST_DIR, DatasetError
from flows.common import examples_table
from flows.train import TrainFlowConfig


def arrays_file(tmp_path: Path, shape=(1, 28, 28), n_train=40) -> str:
    """A small .npz of images in [0, 2] (so that the mapping onto the split's range shows), 4 classes."""
    rng = np.random.default_rng(0)
    path = tmp_path / "images.npz"
    np.savez(path, x_train=2 * rng.random((n_train, *shape)), y_train=rng.integers(0, 4, n_train),
             x_test=2 * rng.random((10, *shape)), y_test=rng.integers(0, 4, 10))
    return str(path)


def test_digits_are_resized_mapped_onto_the_splits_range_and_appended_with_their_own_ids(tmp_path):
    path = arrays_file(tmp_path)
    plain = load_dataset(DatasetConfig(name="arrays", path=path, normalize=False))
    mixed = load_dataset(DatasetConfig(name="arrays", path=path, normalize=False, foreign="digits",
                                       foreign_fraction=0.25))
    assert mixed.n_train == 40 + 10 and mixed.is_foreign.tolist() == [False] * 40 + [True] * 10
    assert torch.equal(mixed.x_train[:40], plain.x_train) and torch.equal(mixed.y_train[:40], plain.y_train)
    rows = mixed.train_ids[40:].numpy() - FOREIGN_ID_START
    assert (np.diff(rows) > 0).all() and rows.min() >= 0 and rows.max() < 1797  # sorted rows of the 1,797 digits
    assert list(mixed.train_source[40:]) == [f"foreign:digits/load_digits[{r}]" for r in rows]
    from sklearn.datasets import load_digits
    lo, hi = plain.x_train.min(), plain.x_train.max()
    digits = torch.from_numpy(load_digits().images[rows].astype(np.float32) / 16)[:, None]
    expected = lo + (hi - lo) * F.interpolate(digits, size=(28, 28), mode="bilinear", align_corners=False)
    torch.testing.assert_close(mixed.x_train[40:], expected)
    assert mixed.true_label[40:].tolist() == [-1] * 10 and not mixed.is_noisy[40:].any()
    assert set(mixed.y_train[40:].tolist()) <= {0, 1, 2, 3} and len(set(mixed.y_train[40:].tolist())) > 1


def test_noise_is_uniform_between_each_features_extremes_on_any_dataset():
    plain = load_dataset(DatasetConfig(name="synthetic", n_train=400, normalize=False))
    mixed = load_dataset(DatasetConfig(name="synthetic", n_train=400, normalize=False, foreign="noise",
                                       foreign_fraction=0.1))
    foreign = mixed.x_train[400:]
    assert foreign.shape == (40, 20) and mixed.is_foreign.sum() == 40
    low, high = plain.x_train.min(0).values, plain.x_train.max(0).values
    assert ((foreign >= low) & (foreign <= high)).all()
    assert (foreign.mean(0) - (low + high) / 2).abs().max() < 0.3 * (high - low).max()  # centred, not at one end
    assert mixed.train_ids[400:].tolist() == [FOREIGN_ID_START + i for i in range(40)]
    assert mixed.train_source[400] == "foreign:noise[0]"


def test_labels_and_picks_follow_the_seed_and_leave_the_rest_alone():
    one = load_dataset(DatasetConfig(name="digits", foreign="noise", foreign_fraction=0.2, seed=1))
    again = load_dataset(DatasetConfig(name="digits", foreign="noise", foreign_fraction=0.2, seed=1))
    other = load_dataset(DatasetConfig(name="digits", foreign="noise", foreign_fraction=0.2, seed=2))
    assert torch.equal(one.x_train, again.x_train) and torch.equal(one.y_train, again.y_train)
    n = len(one.y_train) - int(one.is_foreign.sum())
    assert not torch.equal(one.y_train[n:], other.y_train[n:])
    noisy = load_dataset(DatasetConfig(name="digits", label_noise=0.1, foreign="noise", foreign_fraction=0.2))
    clean = load_dataset(DatasetConfig(name="digits", label_noise=0.1))
    assert torch.equal(noisy.is_noisy[:n], clean.is_noisy) and not noisy.is_noisy[n:].any()  # own random stream


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="Fashion-MNIST is installed by `make`")
def test_fashion_images_shrink_into_a_digits_size_task_and_their_files_join_the_fingerprint():
    plain = load_dataset(DatasetConfig(name="digits"))
    mixed = load_dataset(DatasetConfig(name="digits", foreign="fashion_mnist", foreign_fraction=0.05))
    count = round(0.05 * plain.n_train)
    assert mixed.x_train.shape[1:] == (1, 8, 8) and int(mixed.is_foreign.sum()) == count
    assert mixed.train_source[-1].startswith("foreign:fashion_mnist/train-images-idx3-ubyte[")
    assert mixed.fingerprint != plain.fingerprint and len(mixed.sources) == len(plain.sources) + 4


def test_the_examples_table_marks_them_and_the_run_id_holds_them_only_when_set():
    mixed = load_dataset(DatasetConfig(name="digits", foreign="noise", foreign_fraction=0.1))
    table = examples_table(mixed)
    train = table[table["split"] == "train"]
    assert train["is_foreign"].sum() == round(0.1 * 1437) and not table.loc[table["split"] == "test", "is_foreign"].any()
    assert (train.loc[train["is_foreign"], "example_id"] >= FOREIGN_ID_START).all()
    default = TrainFlowConfig()
    assert run_id("train", default) == run_id("train", default.model_copy(update={"dataset": DatasetConfig(
        name=default.dataset.name, foreign="none", foreign_fraction=0.0)}))
    with_foreign = default.model_copy(update={"dataset": default.dataset.model_copy(
        update={"foreign": "noise", "foreign_fraction": 0.1})})
    assert run_id("train", with_foreign) != run_id("train", default)


@pytest.mark.parametrize("settings,message", [
    ({"foreign": "noise"}, "foreign='noise' and foreign_fraction=0.0 go together"),
    ({"foreign_fraction": 0.1}, "foreign='none' and foreign_fraction=0.1 go together"),
    ({"name": "fashion_mnist", "foreign": "fashion_mnist", "foreign_fraction": 0.1}, "is the dataset itself")])
def test_settings_that_do_not_go_together_are_refused(settings, message):
    with pytest.raises(ValidationError, match=message):
        DatasetConfig(**{"name": "digits", **settings})


def test_images_into_a_dataset_of_vectors_or_more_than_there_are_are_refused(tmp_path):
    with pytest.raises(DatasetError, match=r"examples are shaped \[20\], not \[C, H, W\]; use foreign: noise"):
        load_dataset(DatasetConfig(name="synthetic", foreign="digits", foreign_fraction=0.1))
    path = arrays_file(tmp_path, shape=(1, 8, 8), n_train=1800)
    with pytest.raises(DatasetError, match="foreign_fraction=1.0 asks for 1800 foreign examples but digits has 1797"):
        load_dataset(DatasetConfig(name="arrays", path=path, foreign="digits", foreign_fraction=1.0))
