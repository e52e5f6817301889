"""Rows lead back to the user's files (`source`), the user's own mislabeled ids, grayscale image folders kept at one
channel, and the one-line message for data without a channel axis. Every file is written here, in tmp_path."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import core.plots.cscore as plots
from core.data.config import DatasetConfig
from core.data.datasets import DatasetError, load_dataset
from core.data.fingerprint import fingerprint
from core.methods.proxies import detection_metrics
from core.runs.store import RunStore
from flows.common import check_fits, check_whole_set_fits, examples_table, write_examples_table
from flows.cscore import CScoreFlowConfig
from test_data import write_png


def load(**settings):
    """load_dataset on a config of `settings`."""
    return load_dataset(DatasetConfig(**settings))


def row_of(source: str, container: str) -> int:
    """The row of `container[row]`, failing when the source names another container."""
    match = re.fullmatch(re.escape(container) + r"\[(\d+)\]", source)
    assert match, f"{source!r} is not {container}[row]"
    return int(match.group(1))


# ---------------------------------------------------------------- sources
@pytest.fixture
def gray_folder(tmp_path):
    """A grayscale image folder whose file names sort as text, not as numbers (10 before 9)."""
    rng = np.random.default_rng(0)
    names = ["train/boot/9.png", "train/boot/10.png", "train/sandal/1.png", "train/sandal/0.png",
             "test/boot/3.png", "test/sandal/2.png"]
    for name in names:
        write_png(tmp_path / name, rng.integers(0, 256, (5, 4), dtype=np.uint8))
    return tmp_path


def test_image_folder_source_is_the_file_that_holds_the_image(gray_folder):
    d = load(name="image_folder", path=str(gray_folder), normalize=False)
    # example_id = position in the sorted (class folder, file name) order, as data/README.md says
    assert d.train_source.tolist() == ["train/boot/10.png", "train/boot/9.png", "train/sandal/0.png",
                                       "train/sandal/1.png"]
    assert d.test_source.tolist() == ["test/boot/3.png", "test/sandal/2.png"]
    assert d.train_ids.tolist() == [0, 1, 2, 3]
    for x, source in [*zip(d.x_train, d.train_source), *zip(d.x_test, d.test_source)]:
        pixels = np.array(Image.open(gray_folder / source))
        assert torch.equal(x[0], torch.from_numpy(pixels).float() / 255)


def test_npz_source_is_the_row_of_the_array(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {"x_train": rng.normal(size=(6, 2, 3)), "y_train": np.array([0, 1, 0, 1, 0, 1]),
              "train_ids": np.array([50, 10, 40, 20, 30, 0]), "x_test": rng.normal(size=(3, 2, 3)),
              "y_test": np.array([1, 0, 1]), "test_ids": np.array([7, 5, 6])}
    np.savez(tmp_path / "mine.npz", **arrays)
    d = load(name="arrays", path=str(tmp_path / "mine.npz"), normalize=False)
    assert d.train_ids.tolist() == [0, 10, 20, 30, 40, 50]  # sorted by id, so no longer in the file's order
    for split in ("train", "test"):
        for x, i, source in zip(getattr(d, f"x_{split}"), getattr(d, f"{split}_ids"), getattr(d, f"{split}_source")):
            row = row_of(source, f"x_{split}")
            assert torch.equal(x, torch.from_numpy(arrays[f"x_{split}"][row]).float())
            assert arrays[f"{split}_ids"][row] == i
    table = examples_table(d)
    assert table["source"].tolist() == [*d.train_source, *d.test_source]


def test_parquet_source_is_the_row_of_the_file(tmp_path):
    df = pd.DataFrame({"split": ["test", "train", "train", "test", "train"], "label": [0, 1, 0, 1, 1],
                       "f0": [0.5, 1.5, 2.5, 3.5, 4.5], "f1": [9.0, 8.0, 7.0, 6.0, 5.0],
                       "example_id": [4, 3, 1, 0, 2]})
    df.to_parquet(tmp_path / "mine.parquet")
    d = load(name="arrays", path=str(tmp_path / "mine.parquet"), normalize=False)
    assert d.train_source.tolist() == ["mine.parquet[2]", "mine.parquet[4]", "mine.parquet[1]"]  # ids 1, 2, 3
    for x, source in [*zip(d.x_train, d.train_source), *zip(d.x_test, d.test_source)]:
        row = df.iloc[row_of(source, "mine.parquet")]
        assert x.tolist() == [row["f0"], row["f1"]]


def test_generated_datasets_name_the_row_they_come_from():
    from sklearn.datasets import load_digits

    d = load(name="digits", n_train=20, normalize=False)
    images = load_digits().images
    for x, i, source in zip(d.x_train, d.train_ids, d.train_source):
        assert row_of(source, "load_digits") == i
        assert torch.equal(x[0], torch.from_numpy(images[int(i)]).float())
    synthetic = load(name="synthetic", n_train=5, n_test=5)
    assert [row_of(s, "make_classification") for s in synthetic.test_source] == synthetic.test_ids.tolist()


def test_fashion_source_names_the_idx_file_and_row(tmp_path):
    import gzip

    rng = np.random.default_rng(2)
    images = {"train": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
              "t10k": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8)}
    for split, pixels in images.items():
        header = np.array([2051, len(pixels), 28, 28], ">i4").tobytes()
        (tmp_path / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + pixels.tobytes()))
        labels = np.array([2049, len(pixels)], ">i4").tobytes() + bytes(range(len(pixels)))
        (tmp_path / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    d = load(name="fashion_mnist", path=str(tmp_path), normalize=False)
    for split, x, sources in (("train", d.x_train, d.train_source), ("t10k", d.x_test, d.test_source)):
        for example, source in zip(x, sources):
            row = row_of(source, f"{split}-images-idx3-ubyte")
            assert torch.equal(example[0], torch.from_numpy(images[split][row]).float() / 255)


def test_cifar_source_names_the_batch_file_and_row(tmp_path):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(3)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": batches[name], b"labels": [0, 1]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"a", b"b"]}, f)
    d = load(name="cifar10", path=str(tmp_path), normalize=False)
    assert d.train_source.tolist()[2:4] == ["data_batch_2[0]", "data_batch_2[1]"]
    for x, source in zip(d.x_train, d.train_source):
        file, row = source[:-1].split("[")
        assert torch.equal(x, torch.from_numpy(batches[file][int(row)].reshape(3, 32, 32)).float() / 255)


def test_extremes_figure_labels_each_example_with_its_id_and_source(monkeypatch, tmp_path):
    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append([t.get_text() for t in fig.axes[0].texts]))
    scores = np.array([0.9, 0.1, 0.5, 0.3])
    ids = np.array([70, 71, 72, 73])
    sources = np.array(["train/sandal/0042.png", "train/boot/a-very-long-file-name-0007.png", "x[2]", "x[3]"])
    plots.extreme_examples(np.zeros((4, 1, 4, 4)), scores, np.array([0, 1, 0, 1]), ["sandal", "boot"],
                           tmp_path / "x.png", per_side=1, ids=ids, sources=sources)
    assert sorted(drawn[0]) == sorted(["0.50  id 72\nx[2]", "0.90  id 70\n…ain/sandal/0042.png",  # its last 19
                                       "0.10  id 71\n…-file-name-0007.png", "0.30  id 73\nx[3]"])


def test_a_run_begun_without_sources_gets_them(tmp_path):
    d = load(name="digits", n_train=30, n_test=10)
    store = RunStore.open("cscore", CScoreFlowConfig(), tmp_path)
    store.write_table("examples.parquet", examples_table(d).drop(columns="source"))  # as earlier code wrote it
    write_examples_table(store, d)
    assert store.read_table("examples.parquet")["source"].tolist() == [*d.train_source, *d.test_source]
    stamp = store.read_metadata("examples.parquet")["table_id"]
    write_examples_table(store, d)  # whole now: left as it is
    assert store.read_metadata("examples.parquet")["table_id"] == stamp


# ---------------------------------------------------------------- grayscale kept
def test_grayscale_folder_keeps_one_channel_and_colour_makes_all_rgb(gray_folder):
    gray = load(name="image_folder", path=str(gray_folder), normalize=False)
    assert gray.input_shape == (1, 5, 4) and gray.decoding == "grayscale images as 1 channel"
    files = sorted(gray_folder.rglob("*.png"))
    # the same files read otherwise are other data: a run that read them as RGB keeps its own id
    assert gray.fingerprint != fingerprint(files) and gray.fingerprint == fingerprint(files, None, gray.decoding)
    write_png(gray_folder / "test/boot/4.png", np.full((5, 4, 3), [10, 20, 30], np.uint8))
    rgb = load(name="image_folder", path=str(gray_folder), normalize=False)
    assert rgb.input_shape == (3, 5, 4) and rgb.decoding is None
    assert rgb.fingerprint == fingerprint(sorted(gray_folder.rglob("*.png")))  # as every RGB folder's always was
    for x, source in zip(rgb.x_train, rgb.train_source):  # grayscale images as PIL makes them RGB
        expected = np.array(Image.open(gray_folder / source).convert("RGB"))
        assert torch.equal(x, torch.from_numpy(expected).permute(2, 0, 1).float() / 255)
    assert rgb.x_test[1].mul(255).round().amax(dim=(1, 2)).tolist() == [10, 20, 30]


# ---------------------------------------------------------------- the user's own mislabeled ids
@pytest.fixture
def npz_path(tmp_path):
    """12 training examples with ids 100..111 (stored in reverse), 4 test examples."""
    rng = np.random.default_rng(4)
    path = tmp_path / "data.npz"
    np.savez(path, x_train=rng.normal(size=(12, 3)), y_train=np.arange(12) % 3, train_ids=np.arange(111, 99, -1),
             x_test=rng.normal(size=(4, 3)), y_test=np.arange(4) % 3, noisy=np.array([103, 108]),
             noisy_flags=np.arange(12) < 2, noisy_floats=np.array([103.5]))
    return path


def test_ids_from_a_csv_a_parquet_an_npz_array_or_flags_mark_the_same_way(npz_path, tmp_path):
    pd.DataFrame({"example_id": [103, 108]}).to_csv(tmp_path / "bad.csv", index=False)
    pd.DataFrame({"id": [108, 103, 103]}).to_parquet(tmp_path / "bad.parquet")  # its only column; repeats are fine
    for noisy_ids in (str(tmp_path / "bad.csv"), str(tmp_path / "bad.parquet"), "noisy"):
        d = load(name="arrays", path=str(npz_path), noisy_ids=noisy_ids)
        assert d.train_ids[d.is_noisy].tolist() == [103, 108], noisy_ids
        assert d.true_label[d.is_noisy].tolist() == [-1, -1]  # wrong, but not known what is right
        assert torch.equal(d.true_label[~d.is_noisy], d.y_train[~d.is_noisy])
    flagged = load(name="arrays", path=str(npz_path), noisy_ids="noisy_flags")  # the first two rows: ids 111, 110
    assert flagged.train_ids[flagged.is_noisy].tolist() == [110, 111]


def test_an_image_folders_wrong_files_are_named_by_their_paths(gray_folder, tmp_path):
    """A user of an image folder knows the wrong files, not their ids: a `source` column of paths marks them."""
    (tmp_path / "wrong.csv").write_text("source\ntrain/sandal/1.png\ntrain/boot/10.png\n")
    d = load(name="image_folder", path=str(gray_folder), noisy_ids=str(tmp_path / "wrong.csv"))
    assert d.train_source[d.is_noisy.numpy()].tolist() == ["train/boot/10.png", "train/sandal/1.png"]
    assert d.train_ids[d.is_noisy].tolist() == [0, 3]
    (tmp_path / "files.csv").write_text("my files\ntrain/boot/10.png\ntrain/sandal/1.png\n")  # one column of text
    by_name = load(name="image_folder", path=str(gray_folder), noisy_ids=str(tmp_path / "files.csv"))
    assert torch.equal(by_name.is_noisy, d.is_noisy)
    (tmp_path / "typo.csv").write_text("source\ntrain/sandal/1.png\ntrain/sandal/7.png\n")
    with pytest.raises(DatasetError, match=r"dataset.noisy_ids: 1 of the sources in \S*typo\.csv are no training "
                                           r"example's \(first: \['train/sandal/7.png'\]\)"):
        load(name="image_folder", path=str(gray_folder), noisy_ids=str(tmp_path / "typo.csv"))


def test_parquet_column_flags_training_rows(tmp_path):
    df = pd.DataFrame({"split": ["train"] * 4 + ["test"], "label": [0, 1, 0, 1, 0], "f0": np.arange(5.0),
                       "example_id": [9, 8, 7, 6, 5], "wrong": [False, True, False, True, False]})
    df.to_parquet(tmp_path / "t.parquet")
    d = load(name="arrays", path=str(tmp_path / "t.parquet"), noisy_ids="wrong")
    assert d.train_ids[d.is_noisy].tolist() == [6, 8]
    df.loc[4, "wrong"] = True
    df.to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DatasetError, match=r"column 'wrong' of .*t\.parquet flags 1 test rows \(first: row 4\)"):
        load(name="arrays", path=str(tmp_path / "t.parquet"), noisy_ids="wrong")


def test_wrong_ids_fail_naming_the_file(npz_path, tmp_path):
    cases = {"unknown.csv": ("example_id\n103\n5\n100\n", r"dataset.noisy_ids: 1 of the ids in \S*unknown\.csv are not "
                             r"example ids of the arrays training split \(first: \[5\]\)"),
             "floats.csv": ("example_id\n103.5\n", r"example ids in column 'example_id' of \S*floats\.csv must be "
                            r"whole"),
             "words.csv": ("example_id\nseven\n", r"example ids in column 'example_id' of \S*words\.csv have dtype"),
             "columns.csv": ("a,b\n1,2\n", r"\S*columns\.csv has columns \['a', 'b'\] but no example_id"),
             "empty.csv": ("example_id\n", r"\S*empty\.csv lists no example ids")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DatasetError, match=message) as err:
            load(name="arrays", path=str(npz_path), noisy_ids=str(tmp_path / name))
        assert "\n" not in str(err.value)
    test_id = load(name="arrays", path=str(npz_path)).test_ids[0].item()
    (tmp_path / "test.csv").write_text(f"example_id\n{test_id}\n")  # a test example is no training example
    with pytest.raises(DatasetError, match=r"test\.csv are not example ids of the arrays training split"):
        load(name="arrays", path=str(npz_path), noisy_ids=str(tmp_path / "test.csv"))
    with pytest.raises(DatasetError, match=r"dataset.noisy_ids file not found: \S*nowhere\.csv"):
        load(name="arrays", path=str(npz_path), noisy_ids=str(tmp_path / "nowhere.csv"))
    with pytest.raises(DatasetError, match=r"data\.npz has no array 'absent' for dataset.noisy_ids \(has \["):
        load(name="arrays", path=str(npz_path), noisy_ids="absent")
    with pytest.raises(DatasetError, match=r"example ids in array 'noisy_floats' of \S*data\.npz .* must be whole"):
        load(name="arrays", path=str(npz_path), noisy_ids="noisy_floats")
    np.savez(tmp_path / "short.npz", **{**np.load(npz_path), "noisy_flags": np.ones(5, bool)})
    with pytest.raises(DatasetError, match=r"bool array 'noisy_flags' of \S*short\.npz has shape \(5,\); as flags it "
                                           r"needs one per row of x_train \(12\)"):
        load(name="arrays", path=str(tmp_path / "short.npz"), noisy_ids="noisy_flags")


def test_the_ids_file_is_part_of_the_fingerprint(npz_path, tmp_path):
    ids = tmp_path / "bad.csv"
    ids.write_text("example_id\n103\n")
    plain = load(name="arrays", path=str(npz_path))
    first = load(name="arrays", path=str(npz_path), noisy_ids=str(ids))
    assert first.sources == [npz_path, ids] and first.fingerprint not in (None, plain.fingerprint)
    ids.write_text("example_id\n104\n")
    second = load(name="arrays", path=str(npz_path), noisy_ids=str(ids))
    assert second.fingerprint != first.fingerprint and first.files_changed(None)
    assert not second.files_changed(None)


def test_noisy_ids_setting_is_checked_by_the_config():
    with pytest.raises(ValueError, match=r"noisy_ids='bad.csv' and label_noise=0.1 cannot be combined"):
        DatasetConfig(name="arrays", path="x.npz", noisy_ids="bad.csv", label_noise=0.1)
    with pytest.raises(ValueError, match=r"noisy_ids='flags' names an array or column of the dataset file, which "
                                         r"only name=arrays has; for digits give the path of a .csv or .parquet"):
        DatasetConfig(name="digits", noisy_ids="flags")
    assert DatasetConfig(noisy_ids="  ").noisy_ids is None


# ---------------------------------------------------------------- data without a channel axis
def test_images_without_a_channel_axis_are_refused_in_one_line_with_the_fix(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "flat.npz"
    np.savez(path, x_train=rng.normal(size=(40, 8, 8)), y_train=np.arange(40) % 2, x_test=rng.normal(size=(4, 8, 8)),
             y_test=np.arange(4) % 2)
    dataset = load(name="arrays", path=str(path))
    config = CScoreFlowConfig(dataset=DatasetConfig(name="arrays", path=str(path)), model="cnn_w4_d1")
    expected = ("model 'cnn_w4_d1' needs [C, H, W] images, but the dataset's examples have shape [8, 8]: they lack a "
                "channel axis; save x_train[:, None] and x_test[:, None] (shape [N, 1, 8, 8]) in your .npz, or "
                "choose an mlp_ model")
    with pytest.raises(ValueError) as err:
        check_fits(config, dataset, 20, "ratios=0.5")
    assert str(err.value) == expected
    with pytest.raises(ValueError) as err:
        check_whole_set_fits("cnn_w4_d1", 8, dataset)
    assert str(err.value) == expected
    with pytest.raises(ValueError) as err:  # adding an axis would not help: say what the model needs
        check_whole_set_fits("cnn_w4_d1", 8, load(name="synthetic", n_train=40, n_test=4))
    assert str(err.value) == ("model 'cnn_w4_d1' needs [C, H, W] images, but the dataset's examples have shape "
                              "[20]; store the examples with the axes it needs (e.g. [N, C, H, W] in an .npz), or "
                              "choose an mlp_ model, which takes any shape")
    check_whole_set_fits("mlp_w4_d1", 8, dataset)  # an MLP takes it as it is


# ---------------------------------------------------------------- detection from the user's ids, end to end
@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    """240 digits for training (30 labels flipped to the next class, their ids in a CSV and as flags), 60 test."""
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("user")
    d = load_digits()
    x, y = d.images[:300, None], d.target[:300].copy()
    wrong = np.random.default_rng(6).choice(240, 30, replace=False)
    y[wrong] = (y[wrong] + 1) % 10
    np.savez(folder / "digits.npz", x_train=x[:240], y_train=y[:240], x_test=x[240:], y_test=y[240:],
             flipped=np.isin(np.arange(240), wrong))
    pd.DataFrame({"example_id": np.sort(wrong)}).to_csv(folder / "flipped.csv", index=False)
    return folder, np.sort(wrong)


@pytest.mark.usefixtures("prefect_harness")
def test_cscore_and_proxies_measure_detection_of_the_users_ids(digits_npz, tmp_path):
    from core.training.config import TrainConfig
    from flows.cscore import cscore_flow
    from flows.proxies import ProxiesFlowConfig, proxies_flow

    folder, wrong = digits_npz
    train = TrainConfig(epochs=3, batch_size=32, lr=0.05)
    (folder / "typo.csv").write_text("example_id\n3\n240\n")  # 240 is a test example's id
    typo = DatasetConfig(name="arrays", path=str(folder / "digits.npz"), noisy_ids=str(folder / "typo.csv"))
    with pytest.raises(DatasetError, match=r"1 of the ids in \S*typo\.csv are not example ids .* \(first: \[240\]\)"):
        cscore_flow(CScoreFlowConfig(dataset=typo), data_root=str(tmp_path))
    assert not (tmp_path / "runs").exists()  # refused before any work
    by_file = DatasetConfig(name="arrays", path=str(folder / "digits.npz"), noisy_ids=str(folder / "flipped.csv"))
    run = Path(cscore_flow(CScoreFlowConfig(dataset=by_file, model="mlp_w16_d1", train=train, ratios=[0.3, 0.7],
                                            runs_per_ratio=4), data_root=str(tmp_path)))
    scores = pd.read_parquet(run / "cscores.parquet")
    assert scores["example_id"][scores["is_noisy"]].tolist() == wrong.tolist()
    assert [row_of(s, "x_train") for s in scores["source"]] == scores["example_id"].tolist()
    expected = detection_metrics(scores["cscore"].to_numpy(), np.isin(scores["example_id"], wrong))
    detection = pd.read_parquet(run / "noise_detection.parquet")
    assert detection.drop(columns="score").iloc[0].to_dict() == pytest.approx(expected)
    assert expected["auroc"] > 0.5  # flipped labels score low even at this size
    by_flags = by_file.model_copy(update={"noisy_ids": "flipped"})
    run = Path(proxies_flow(ProxiesFlowConfig(dataset=by_flags, model="mlp_w16_d1", train=train, n_models=2,
                                              cleanlab_folds=0, n_bootstrap=0), data_root=str(tmp_path)))
    proxies = pd.read_parquet(run / "proxies.parquet")
    noisy = np.isin(proxies["example_id"], wrong)
    assert proxies["is_noisy"].tolist() == noisy.tolist() and proxies["source"].tolist() == scores["source"].tolist()
    detection = pd.read_parquet(run / "noise_detection.parquet").set_index("score")
    for name in ("aum", "neg_el2n", "input_lof"):
        assert detection.loc[name].to_dict() == pytest.approx(detection_metrics(proxies[name].to_numpy(), noisy))
