"""Dataset registry: every loader on small files written here, the offline datasets, and the options."""
from __future__ import annotations

import gzip
import os
import pickle
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

import core.data.datasets as data_mod
from core.data.config import DatasetConfig
from core.data.datasets import DATASETS, DatasetError, get_loader, load_dataset, load_dataset_by_name
from core.data.sources import FASHION_MNIST_DIR, load_fashion_mnist


def load(**kw) -> data_mod.Dataset:
    """load_dataset on a config built from keyword arguments."""
    cache_dir = kw.pop("cache_dir", None)
    return load_dataset(DatasetConfig(**kw), cache_dir)


# ---------------------------------------------------------------- config and registry
@pytest.mark.parametrize("field,value", [("label_noise", 1.5), ("label_noise", -0.1), ("n_train", 0),
                                         ("n_test", -3), ("seed", -1), ("name", "foo"),
                                         ("digits_test_fraction", 1.0), ("mnist1d_samples", 5)])
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValidationError) as e:
        DatasetConfig(**{field: value})
    assert e.value.errors()[0]["loc"] == (field,)
    assert field in str(e.value)


def test_config_is_strict_and_documented():
    with pytest.raises(ValidationError, match="colour"):
        DatasetConfig(colour="red")
    c = DatasetConfig()
    with pytest.raises(ValidationError):
        c.seed = 3  # frozen
    assert all(f.description for f in DatasetConfig.model_fields.values())
    assert set(DATASETS) == set(typing.get_args(DatasetConfig.model_fields["name"].annotation))


def test_unknown_name_lists_valid_names():
    for call in (lambda: load_dataset_by_name("foo"), lambda: get_loader("foo"),
                 lambda: load_dataset(DatasetConfig.model_construct(name="foo", **{
                     k: f.default for k, f in DatasetConfig.model_fields.items() if k != "name"}))):
        with pytest.raises(DatasetError, match=r"unknown dataset 'foo'.*mnist1d.*digits.*cifar100.*arrays"):
            call()


@pytest.mark.parametrize("name", ["image_folder", "arrays"])
def test_path_required(name):
    with pytest.raises(DatasetError, match=r"needs `path`.*dataset.path"):
        load(name=name)


# ---------------------------------------------------------------- digits (bundled with scikit-learn)
@pytest.fixture(scope="module")
def sk_digits():
    from sklearn.datasets import load_digits
    return load_digits()


def test_digits_split_and_ids(sk_digits):
    d = load(name="digits", normalize=False)
    assert (d.n_train, d.n_test) == (1437, 360) and d.input_shape == (1, 8, 8)
    ids = torch.cat([d.train_ids, d.test_ids]).sort().values
    assert torch.equal(ids, torch.arange(1797))  # disjoint and complete
    assert torch.all(d.train_ids[1:] > d.train_ids[:-1]) and torch.all(d.test_ids[1:] > d.test_ids[:-1])
    images = torch.tensor(sk_digits.images[d.train_ids.numpy()], dtype=torch.float32)
    assert torch.equal(d.x_train[:, 0], images)
    assert torch.equal(d.y_test, torch.from_numpy(sk_digits.target[d.test_ids.numpy()]))
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64 and d.x_train.max() == 16
    per_class = np.bincount(sk_digits.target)
    assert np.all(np.abs(np.bincount(d.y_test.numpy()) - 0.2 * per_class) <= 1)  # stratified
    assert d.class_names == [str(i) for i in range(10)] and d.num_classes == 10
    assert not d.is_noisy.any() and torch.equal(d.true_label, d.y_train)


def test_digits_seeded(sk_digits):
    a, b, c = load(seed=3), load(seed=3), load(seed=4)
    assert torch.equal(a.train_ids, b.train_ids) and torch.equal(a.x_train, b.x_train)
    assert not torch.equal(a.train_ids, c.train_ids)
    assert load(digits_test_fraction=0.5).n_test == 899


# ---------------------------------------------------------------- mnist1d (generated locally)
def test_mnist1d_matches_make_dataset_and_is_seeded():
    from mnist1d.data import get_dataset_args, make_dataset
    args = get_dataset_args()
    args.num_samples, args.seed = 500, 7
    ref = make_dataset(args)
    d = load(name="mnist1d", mnist1d_samples=500, seed=7, normalize=False)
    assert d.x_train.shape == (400, 1, 40) and d.x_test.shape == (100, 1, 40)
    assert torch.equal(d.x_train[:, 0], torch.tensor(ref["x"], dtype=torch.float32))
    assert torch.equal(d.y_test, torch.from_numpy(ref["y_test"]))
    assert torch.equal(d.train_ids, torch.arange(400)) and torch.equal(d.test_ids, torch.arange(100))
    again = load(name="mnist1d", mnist1d_samples=500, seed=7)
    other = load(name="mnist1d", mnist1d_samples=500, seed=8)
    assert torch.equal(again.x_train, load(name="mnist1d", mnist1d_samples=500, seed=7).x_train)
    assert not torch.allclose(again.x_train, other.x_train)


def test_synthetic_is_make_classification_split_80_20_and_seeded():
    from sklearn.datasets import make_classification
    x, y = make_classification(n_samples=10_000, n_features=20, n_informative=10, n_redundant=5, n_classes=4,
                               n_clusters_per_class=2, random_state=3)
    d = load(name="synthetic", seed=3, normalize=False)
    assert d.x_train.shape == (8000, 20) and d.x_test.shape == (2000, 20) and d.class_names == ["0", "1", "2", "3"]
    assert torch.equal(d.x_train, torch.tensor(x[:8000], dtype=torch.float32))
    assert torch.equal(d.y_test, torch.from_numpy(y[8000:]))
    assert torch.equal(d.test_ids, torch.arange(8000, 10_000))
    assert not torch.allclose(d.x_train, load(name="synthetic", seed=4, normalize=False).x_train)


def test_mnist1d_keeps_global_rng_and_caches(tmp_path, monkeypatch):
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    d = load(name="mnist1d", mnist1d_samples=200, seed=1, cache_dir=tmp_path)
    assert np.array_equal(np.random.get_state()[1], state)  # mnist1d's reseeding is undone
    assert [p.name for p in tmp_path.iterdir()] == ["mnist1d-n200-seed1.npz"]
    monkeypatch.setattr(data_mod, "_generate_mnist1d", lambda *a: pytest.fail("cache not used"))
    cached = load(name="mnist1d", mnist1d_samples=200, seed=1, cache_dir=tmp_path)
    assert torch.equal(cached.x_train, d.x_train) and torch.equal(cached.y_train, d.y_train)


def test_nothing_written_on_failure(tmp_path):
    with pytest.raises(DatasetError, match=r"n_train=161 requested but only 160"):
        load(name="mnist1d", mnist1d_samples=200, n_train=161, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------- Fashion-MNIST (IDX files)
def write_idx(path: Path, arr: np.ndarray, magic: int, dims=None) -> Path:
    """An IDX file: big-endian int32 magic and dims, then the uint8 data; gzip when the name ends .gz."""
    raw = np.array([magic, *(arr.shape if dims is None else dims)], dtype=">i4").tobytes() + arr.tobytes()
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
        f.write(raw)
    return path


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": (rng.integers(0, 256, (6, 5, 7), dtype=np.uint8), 2051),
              "train-labels-idx1-ubyte": (np.array([9, 0, 3, 3, 1, 2], np.uint8), 2049),
              "t10k-images-idx3-ubyte": (rng.integers(0, 256, (4, 5, 7), dtype=np.uint8), 2051),
              "t10k-labels-idx1-ubyte": (np.array([1, 2, 3, 4], np.uint8), 2049)}
    for stem, (arr, magic) in arrays.items():
        write_idx(tmp_path / f"{stem}.gz", arr, magic)
    return tmp_path, {k: v[0] for k, v in arrays.items()}


def test_fashion_idx_round_trip(idx_dir):
    root, arr = idx_dir
    d = load(name="fashion_mnist", path=str(root), normalize=False)
    assert d.x_train.shape == (6, 1, 5, 7) and d.x_test.shape == (4, 1, 5, 7)
    assert torch.equal(d.x_train[:, 0], torch.from_numpy(arr["train-images-idx3-ubyte"]).float() / 255)
    assert d.x_test[2, 0, 4, 6] == np.float32(arr["t10k-images-idx3-ubyte"][2, 4, 6]) / np.float32(255)
    assert d.y_train.tolist() == [9, 0, 3, 3, 1, 2] and d.y_test.tolist() == [1, 2, 3, 4]
    assert d.class_names[0] == "T-shirt/top" and d.class_names[9] == "Ankle boot"
    assert torch.equal(d.train_ids, torch.arange(6))


def test_fashion_accepts_decompressed_files(idx_dir):
    root, _ = idx_dir
    ref = load(name="fashion_mnist", path=str(root))
    for gz in root.glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    d = load(name="fashion_mnist", path=str(root))
    assert torch.equal(d.x_train, ref.x_train) and torch.equal(d.y_test, ref.y_test)


def test_fashion_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(DatasetError) as e:
        load(name="fashion_mnist", path=str(tmp_path))
    msg = str(e.value)
    for where in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte", "FashionMNIST/raw"):
        assert str(tmp_path / where) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "dataset.path" in msg


@pytest.mark.parametrize("stem,arr,magic,dims,match", [
    ("train-images-idx3-ubyte", np.zeros((6, 5, 7), np.uint8), 2049, None,
     "magic number 2049, expected 2051"),
    ("train-images-idx3-ubyte", np.zeros((5, 5, 7), np.uint8), 2051, (6, 5, 7), r"header dims \[6, 5, 7\]"),
    ("train-labels-idx1-ubyte", np.zeros(5, np.uint8), 2049, None, "6 examples but labels have 5"),
    ("t10k-labels-idx1-ubyte", np.array([1, 2, 10, 4], np.uint8), 2049, None,
     r"test split: label 10 at position 2 \(example_id 2\) is outside 0..9"),
])
def test_fashion_bad_files(idx_dir, stem, arr, magic, dims, match):
    root, _ = idx_dir
    write_idx(root / f"{stem}.gz", arr, magic, dims)
    with pytest.raises(DatasetError, match=match):
        load(name="fashion_mnist", path=str(root))


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(),
                    reason=f"{FASHION_MNIST_DIR} missing: apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist():
    raw = load_fashion_mnist(DatasetConfig(name="fashion_mnist"))  # the parse always reads all of it
    assert raw.x_train.shape == (60000, 1, 28, 28) and raw.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(raw.y_train).tolist() == [6000] * 10
    assert np.bincount(raw.y_test).tolist() == [1000] * 10
    assert raw.y_train[0] == 9 and raw.y_test[0] == 9  # the first image of each file is an ankle boot
    d = load(name="fashion_mnist", n_train=500, n_test=200, normalize=False)
    assert d.x_train.shape == (500, 1, 28, 28) and d.n_test == 200
    assert 0 <= d.x_train.min() < d.x_train.max() <= 1
    ids = d.train_ids.numpy()
    assert np.all(np.diff(ids) > 0) and ids.max() < 60000
    assert torch.equal(d.x_train, torch.from_numpy(raw.x_train[ids]).float() / 255)
    assert torch.equal(d.y_train, torch.from_numpy(raw.y_train[ids].astype(np.int64)))


# ---------------------------------------------------------------- CIFAR-10/100 (pickle layout)
def dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.fixture
def cifar10(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (13, 3072), dtype=np.uint8)
    y = rng.integers(0, 10, 13)
    for i in range(5):  # two examples per training batch, three in the test batch
        dump(d / f"data_batch_{i + 1}", {b"data": x[2 * i:2 * i + 2], b"labels": y[2 * i:2 * i + 2].tolist()})
    dump(d / "test_batch", {b"data": x[10:], b"labels": y[10:].tolist()})
    names = [n.encode() for n in "airplane automobile bird cat deer dog frog horse ship truck".split()]
    dump(d / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return tmp_path, x, y


def test_cifar10_round_trip(cifar10):
    root, x, y = cifar10
    d = load(name="cifar10", path=str(root), normalize=False)
    assert d.x_train.shape == (10, 3, 32, 32) and d.x_test.shape == (3, 3, 32, 32)
    # batch order is data_batch_1..5; channel-major rows: index c*1024 + h*32 + w
    assert d.x_train[7, 2, 5, 9] == np.float32(x[7, 2 * 1024 + 5 * 32 + 9]) / np.float32(255)
    assert torch.equal(d.x_test.reshape(3, -1), torch.from_numpy(x[10:]).float() / 255)
    assert d.y_train.tolist() == y[:10].tolist() and d.y_test.tolist() == y[10:].tolist()
    assert d.class_names[1] == "automobile" and d.num_classes == 10
    same = load(name="cifar10", path=str(root / "cifar-10-batches-py"), normalize=False)  # the folder itself
    assert torch.equal(same.x_train, d.x_train)


def test_cifar_per_channel_normalisation(cifar10):
    root, _, _ = cifar10
    d, raw = load(name="cifar10", path=str(root)), load(name="cifar10", path=str(root), normalize=False)
    assert torch.allclose(d.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(d.x_train.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-5)
    mean, std = raw.x_train.mean(dim=(0, 2, 3), keepdim=True), raw.x_train.std(dim=(0, 2, 3), correction=0,
                                                                               keepdim=True)
    assert torch.allclose(d.x_test, (raw.x_test - mean[0]) / std[0], atol=1e-5)  # test uses train stats


def test_cifar100_fine_labels(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    x = np.arange(5 * 3072, dtype=np.int64).reshape(5, 3072) % 256
    # str keys, as a file re-pickled under Python 3 would have; the originals use bytes keys
    dump(d / "train", {"data": x[:3].astype(np.uint8), "fine_labels": [99, 0, 42],
                       "coarse_labels": [1, 2, 3]})
    dump(d / "test", {b"data": x[3:].astype(np.uint8), b"fine_labels": [5, 6], b"coarse_labels": [0, 0]})
    dump(d / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)], b"coarse_label_names": []})
    ds = load(name="cifar100", path=str(tmp_path), normalize=False)
    assert ds.y_train.tolist() == [99, 0, 42] and ds.y_test.tolist() == [5, 6]  # fine, not coarse
    assert ds.num_classes == 100 and ds.class_names[42] == "c42"
    assert ds.x_train[1, 0, 0, 3] == np.float32((3072 + 3) % 256) / np.float32(255)
    dump(d / "meta", {b"coarse_label_names": []})
    with pytest.raises(DatasetError, match=r"has no key b'fine_label_names'.*cifar10 vs cifar100"):
        load(name="cifar100", path=str(tmp_path))


def test_cifar_missing_says_where_and_how(tmp_path):
    with pytest.raises(DatasetError) as e:
        load(name="cifar10", path=str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "cs.toronto.edu" in msg and "dataset.path" in msg
    with pytest.raises(DatasetError, match=r"dataset 'cifar100' needs `path`: set dataset.path to the folder holding "
                                           r"cifar-100-python/"):
        load(name="cifar100", cache_dir=tmp_path)  # never looked for in the data root's cache


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_pickle_cannot_run_code(cifar10):
    root, _, _ = cifar10
    dump(root / "cifar-10-batches-py" / "test_batch", _Evil())
    with pytest.raises(DatasetError, match=r"not a readable CIFAR pickle.*posix.getcwd is not allowed"):
        load(name="cifar10", path=str(root))


# ---------------------------------------------------------------- image folder
def write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def image_root(tmp_path):
    rng = np.random.default_rng(2)
    imgs = {f"{s}/{c}/{i}.png": rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
            for s, c, i in [("train", "cat", 0), ("train", "cat", 1), ("train", "dog", 2), ("test", "cat", 3),
                            ("test", "dog", 4)]}
    for rel, arr in imgs.items():
        write_png(tmp_path / rel, arr)
    return tmp_path, imgs


def test_image_folder_round_trip(image_root):
    root, imgs = image_root
    write_png(root / "test/dog/5.png", np.full((3, 4), 51, np.uint8))  # greyscale among colour images becomes RGB
    d = load(name="image_folder", path=str(root), normalize=False)
    assert d.x_train.shape == (3, 3, 3, 4) and d.n_test == 3 and d.class_names == ["cat", "dog"]
    assert d.y_train.tolist() == [0, 0, 1] and d.y_test.tolist() == [0, 1, 1]
    expect = torch.from_numpy(imgs["train/dog/2.png"]).permute(2, 0, 1).float() / 255
    assert torch.equal(d.x_train[2], expect)
    assert torch.all(d.x_test[2] == np.float32(51) / np.float32(255))
    assert torch.equal(d.test_ids, torch.arange(3))


def test_image_folder_errors(image_root):
    root, _ = image_root
    write_png(root / "train/dog/9.png", np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"differ in size: 3x4 .* and 5x4 .*resize"):
        load(name="image_folder", path=str(root))
    (root / "train/dog/9.png").unlink()
    write_png(root / "test/bird/9.png", np.zeros((3, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"test classes \['bird', 'cat', 'dog'\] differ from train"):
        load(name="image_folder", path=str(root))
    with pytest.raises(DatasetError, match=r"not found: .*nowhere[/\\]train, .*test"):
        load(name="image_folder", path=str(root / "nowhere"))


# ---------------------------------------------------------------- user arrays (.npz / Parquet)
def npz(tmp_path, **arrays) -> str:
    base = dict(x_train=np.arange(15, dtype=np.float64).reshape(5, 3), y_train=np.array([0, 1, 2, 1, 0]),
                x_test=np.ones((2, 3)), y_test=np.array([2, 2]), class_names=np.array(["a", "b", "c"]))
    base.update(arrays)
    path = tmp_path / "data.npz"
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return str(path)


def test_npz_round_trip_sorted_by_id(tmp_path):
    d = load(name="arrays", path=npz(tmp_path, train_ids=np.array([40, 10, 30, 20, 0])), normalize=False)
    assert d.train_ids.tolist() == [0, 10, 20, 30, 40] and d.test_ids.tolist() == [0, 1]
    assert d.x_train[:, 0].tolist() == [12, 3, 9, 6, 0] and d.y_train.tolist() == [0, 1, 1, 2, 0]
    assert d.class_names == ["a", "b", "c"] and d.input_shape == (3,)
    d = load(name="arrays", path=npz(tmp_path, class_names=None, y_test=np.array([4, 4])))
    assert d.class_names == ["0", "1", "2", "3", "4"]  # max label + 1
    assert abs(float(d.x_train.mean())) < 1e-6 and abs(float(d.x_train.std(correction=0)) - 1) < 1e-5


def test_constant_features_normalise_without_nan(tmp_path):
    d = load(name="arrays", path=npz(tmp_path, x_train=np.full((5, 3), 7.0), x_test=np.full((2, 3), 7.0)))
    assert torch.all(d.x_train == 0) and torch.all(d.x_test == 0)


@pytest.mark.parametrize("arrays,match", [
    (dict(y_train=np.array([0, 1, 3, 1, 0])),
     r"train split: label 3 at position 2 .*outside 0..2 .*class_names"),
    (dict(y_test=np.array([2, -1])), r"test split: label -1 at position 1"),
    (dict(x_train=np.where(np.eye(5, 3) > 0, np.nan, 1.0)), r"train split has 3 NaN/inf .* in 3 examples"),
    (dict(x_test=np.array([[1, 2, np.inf], [0, 0, 0]])), r"test split has 1 NaN/inf"),
    (dict(y_train=np.array([0, 1, 2, 1])), r"features have 5 examples but labels have 4"),
    (dict(y_test=None), r"lacks array\(s\) \['y_test'\]"),
    (dict(y_train=np.array([0, 1.5, 2, 1, 0])), r"labels in .* must be whole numbers.*position 1 holds 1.5"),
    (dict(train_ids=np.array([1, 2, 2, 3, 4])), r"example_id 2 occurs 2 times"),
    (dict(train_ids=np.array([1, 2, 3, 4])), r"labels have 5 \(and ids 4\)"),
    (dict(x_test=np.ones((2, 4))), r"train examples have shape \(3,\) but test examples \(4,\)"),
])
def test_npz_bad_input(tmp_path, arrays, match):
    with pytest.raises(DatasetError, match=match):
        load(name="arrays", path=npz(tmp_path, **arrays))


def test_arrays_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"looked at .*nope.npz"):
        load(name="arrays", path=str(tmp_path / "nope.npz"))


def test_parquet_feature_list_and_string_labels(tmp_path):
    df = pd.DataFrame({"split": ["test", "train", "train", "train"], "label": ["dog", "dog", "cat", "dog"],
                       "features": [[9.0, 9.5], [1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
                       "example_id": [100, 7, 3, 5]})
    df.to_parquet(tmp_path / "d.parquet")
    d = load(name="arrays", path=str(tmp_path / "d.parquet"), normalize=False)
    assert d.class_names == ["cat", "dog"] and d.train_ids.tolist() == [3, 5, 7]
    assert d.x_train.tolist() == [[3, 4], [5, 6], [1, 2]] and d.y_train.tolist() == [0, 1, 1]
    assert d.x_test.tolist() == [[9, 9.5]] and d.y_test.tolist() == [1] and d.test_ids.tolist() == [100]


def test_parquet_without_test_rows_loads_like_npz(tmp_path):
    df = pd.DataFrame({"split": ["train"] * 3, "label": [0, 1, 1], "features": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]})
    df.to_parquet(tmp_path / "d.parquet")
    d = load(name="arrays", path=str(tmp_path / "d.parquet"), normalize=False)
    assert tuple(d.x_test.shape) == (0, 2) and d.n_test == 0 and d.x_train.shape[-1] == 2
    np.savez(tmp_path / "d.npz", x_train=np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), y_train=np.array([0, 1, 1]),
             x_test=np.zeros((0, 2)), y_test=np.zeros(0, int))
    assert tuple(load(name="arrays", path=str(tmp_path / "d.npz"), normalize=False).x_test.shape) == (0, 2)
    uneven = df.assign(split=["train", "train", "test"], features=[[1.0, 2.0], [3.0, 4.0], [5.0]])
    uneven.to_parquet(tmp_path / "d.parquet")
    with pytest.raises(DatasetError, match=r"`features` lists have different lengths \[1, 2\]"):
        load(name="arrays", path=str(tmp_path / "d.parquet"))


def test_parquet_numbered_columns_in_numeric_order(tmp_path):
    cols = {f"f{i}": np.arange(3) * 100.0 + i for i in range(12)}
    df = pd.DataFrame({"f11": cols["f11"], "label": [0, 1, 1], "split": ["train", "train", "test"],
                       **{k: v for k, v in cols.items() if k != "f11"}})
    df.to_parquet(tmp_path / "d.parquet")
    d = load(name="arrays", path=str(tmp_path / "d.parquet"), normalize=False)
    assert d.x_train[1].tolist() == [100.0 + i for i in range(12)]  # f10, f11 after f9
    assert d.train_ids.tolist() == [0, 1] and d.test_ids.tolist() == [2]  # row numbers
    df.assign(split=["train", "valid", "test"]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DatasetError, match=r"`split` has values \['valid'\]"):
        load(name="arrays", path=str(tmp_path / "bad.parquet"))
    df.drop(columns="label").to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DatasetError, match=r"lacks column\(s\) \['label'\]"):
        load(name="arrays", path=str(tmp_path / "bad.parquet"))


# ---------------------------------------------------------------- subsets and label noise
def test_subset_sorted_seeded_and_correct_rows():
    full = load(normalize=False)
    a = load(n_train=100, n_test=50, normalize=False)
    assert a.n_train == 100 and a.n_test == 50 and torch.all(a.train_ids[1:] > a.train_ids[:-1])
    rows = torch.searchsorted(full.train_ids, a.train_ids)
    assert torch.equal(full.train_ids[rows], a.train_ids) and torch.equal(full.x_train[rows], a.x_train)
    assert torch.equal(full.y_train[rows], a.y_train)
    assert torch.equal(load(n_train=100, n_test=50, normalize=False).train_ids, a.train_ids)
    assert torch.equal(load(n_train=100, n_test=20).train_ids, a.train_ids)  # n_test leaves train alone
    with pytest.raises(DatasetError, match=r"n_test=361 requested but only 360 examples"):
        load(n_test=361)


@pytest.mark.parametrize("frac", [0.1, 0.25, 0.5])
def test_uniform_noise(frac):
    clean, d = load(), load(label_noise=frac, seed=0)
    assert int(d.is_noisy.sum()) == round(frac * 1437)
    assert torch.equal(d.true_label, clean.y_train) and torch.equal(d.y_test, clean.y_test)
    assert torch.equal(d.y_train != d.true_label, d.is_noisy)  # never the same class
    assert len(torch.unique(d.y_train[d.is_noisy] - d.true_label[d.is_noisy])) > 2  # not just one shift
    again = load(label_noise=frac, seed=0)
    assert torch.equal(again.y_train, d.y_train) and torch.equal(again.is_noisy, d.is_noisy)


def test_pair_noise_and_seed():
    d = load(label_noise=0.3, noise_kind="pair", n_train=200)
    assert int(d.is_noisy.sum()) == 60
    assert torch.equal(d.y_train[d.is_noisy], (d.true_label[d.is_noisy] + 1) % 10)
    assert torch.equal(d.y_train[~d.is_noisy], d.true_label[~d.is_noisy])
    other = load(label_noise=0.3, noise_kind="pair", n_train=200, seed=1)
    assert not torch.equal(other.train_ids, d.train_ids) or not torch.equal(other.is_noisy, d.is_noisy)


def test_noise_needs_two_classes(tmp_path):
    path = npz(tmp_path, y_train=np.zeros(5, int), y_test=np.zeros(2, int), class_names=np.array(["only"]))
    assert load(name="arrays", path=path).num_classes == 1
    with pytest.raises(DatasetError, match=r"label_noise=0.1 needs at least 2 classes .* has 1"):
        load(name="arrays", path=path, label_noise=0.1)
