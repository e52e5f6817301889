"""Runs belong to the contents of the files they read: fingerprints, their cache, and what flows do with them."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from core.data.config import DatasetConfig
from core.data.datasets import DatasetError, load_dataset
import core.data.fingerprint
from core.data.fingerprint import CACHE_FILE, fingerprint
from core.runs.store import RunStore
from core.training.config import TrainConfig
from flows.common import upstream_table
from flows.train import TrainFlowConfig, train_flow
from tasks.common import shared_dataset, task_dataset


def write(path: Path, data: bytes, mtime_ns: int) -> Path:
    """`data` at `path`, with a chosen modification time."""
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def test_the_fingerprint_follows_contents_and_names_not_times(tmp_path):
    a, b = write(tmp_path / "a.bin", b"alpha", 10**18), write(tmp_path / "b.bin", b"beta", 10**18)
    first = fingerprint([a, b])
    assert len(first) == 16 and fingerprint([b, a]) == first
    write(a, b"alpha", 2 * 10**18)  # touched, same bytes
    assert fingerprint([a, b]) == first
    write(a, b"alphA", 3 * 10**18)  # same size, one byte differs
    assert fingerprint([a, b]) != first
    write(a, b"alpha", 4 * 10**18)
    a.rename(tmp_path / "c.bin")  # the same bytes under another name
    assert fingerprint([tmp_path / "c.bin", b]) != first
    assert fingerprint([]) is None


def test_files_are_hashed_once_until_they_change(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    a, b = write(tmp_path / "a.bin", b"alpha", 10**18), write(tmp_path / "b.bin", b"beta", 10**18)
    hashed = []
    real = core.data.fingerprint.sha256_of
    monkeypatch.setattr(core.data.fingerprint, "sha256_of", lambda path: hashed.append(path.name) or real(path))
    first = fingerprint([a, b], cache)
    assert fingerprint([a, b], cache) == first and hashed == ["a.bin", "b.bin"]
    write(b, b"BETA", 2 * 10**18)
    changed = fingerprint([a, b], cache)
    assert changed != first and hashed == ["a.bin", "b.bin", "b.bin"]
    (cache / CACHE_FILE).write_text("[not a cache")  # a broken cache is only a cache: rebuilt
    assert fingerprint([a, b], cache) == changed and len(hashed) == 5
    assert sorted(json.loads((cache / CACHE_FILE).read_text())) == [str(a.resolve()), str(b.resolve())]


def save_arrays(path: Path, labels_seed: int) -> Path:
    """A small 3-class .npz dataset; `labels_seed` decides its training labels."""
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.normal(size=(96, 8)), y_train=np.random.default_rng(labels_seed).integers(0, 3, 96),
             x_test=rng.normal(size=(24, 8)), y_test=rng.integers(0, 3, 24))
    return path


def test_a_dataset_knows_its_files_and_their_fingerprint(tmp_path):
    path = save_arrays(tmp_path / "data.npz", labels_seed=1)
    dataset = load_dataset(DatasetConfig(name="arrays", path=str(path)), tmp_path / "cache")
    assert dataset.sources == [path] and dataset.fingerprint == fingerprint([path])
    assert load_dataset(DatasetConfig(name="digits")).fingerprint is None  # bundled data: the config names it


@pytest.mark.usefixtures("prefect_harness")
def test_edited_data_starts_a_new_run_and_is_refused_by_an_old_one(tmp_path):
    path, root = save_arrays(tmp_path / "data.npz", labels_seed=1), tmp_path / "root"
    config = TrainFlowConfig(dataset=DatasetConfig(name="arrays", path=str(path)), model="mlp_w16_d1",
                             train=TrainConfig(epochs=1, batch_size=16, lr=0.05), n_models=2, subset_ratio=0.5)
    before = Path(train_flow(config, data_root=str(root)))
    old_contents = json.loads((before / "config.json").read_text())["inputs"]["dataset"]
    tables = {p: p.stat().st_mtime_ns for p in before.rglob("*.parquet")}
    store = RunStore.open("train", config, root, inputs={"dataset": old_contents})

    save_arrays(path, labels_seed=2)  # the user edits the file in place
    new_contents = fingerprint([path])
    assert shared_dataset(config.dataset, root / "cache").fingerprint == new_contents  # reloaded, not the old copy
    after = Path(train_flow(config, data_root=str(root)))
    assert after != before and json.loads((after / "config.json").read_text())["inputs"] == {"dataset": new_contents}
    assert {p: p.stat().st_mtime_ns for p in before.rglob("*.parquet")} == tables  # the old run is kept as it was
    with pytest.raises(DatasetError, match=rf"the files of dataset 'arrays' changed after run {store.run_id} began "
                                           rf"\(contents {old_contents} then, {new_contents} now\)"):
        task_dataset(store)  # a shard of the old run, started after the edit
    with pytest.raises(ValueError, match=rf"prior={before.name!r} read other contents of the dataset files "
                                         rf"\(fingerprint {old_contents} there, {new_contents} here\)"):
        upstream_table("prior", before.name, {"train": "models.parquet"}, str(root), config.dataset, new_contents)
