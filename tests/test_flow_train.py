"""The `train` flow end to end on tiny settings: exact tables, provenance, resumption, bad input."""
import builtins
import errno
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import tasks.common
from core.config import RuntimeConfig, run_id
from core.data.config import DatasetConfig
from core.data.datasets import load_dataset
from core.runs.files import read_provenance
from core.runs.rows import unpack_bool_rows, unpack_float_rows
from core.training.config import TrainConfig
from core.training.experiment import model_seed, subset_mask, train_on_subsets
from flows.train import TrainFlowConfig, train_flow

pytestmark = pytest.mark.usefixtures("prefect_harness")

CONFIG = TrainFlowConfig(
    dataset=DatasetConfig(name="digits", n_train=600, n_test=200),
    model="mlp_w16_d1",
    train=TrainConfig(epochs=2, batch_size=64, lr=0.05),
    n_models=5,
    subset_ratio=0.5,
    shard_size=2,  # shards of 2, 2 and 1 models
)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One uninterrupted run of CONFIG and its tables."""
    root = tmp_path_factory.mktemp("data")
    folder = train_flow(CONFIG, data_root=str(root))
    return folder, pd.read_parquet(f"{folder}/models.parquet"), pd.read_parquet(f"{folder}/examples.parquet")


def test_run_folder_is_named_by_the_config(finished_run):
    folder = Path(finished_run[0])
    assert folder.parts[-3:] == ("runs", "train", run_id("train", CONFIG))
    for name in ("config.json", "models.parquet", "examples.parquet", "summary.parquet", "figures/training.png"):
        assert (folder / name).is_file(), name
    shards = sorted(p.name for p in (folder / "shards").iterdir())
    assert shards == ["models-00000.parquet", "models-00001.parquet", "models-00002.parquet"]


def test_findings_are_written_and_say_no_claim_is_checked(finished_run):
    """A protocol flow checks no paper's claim: its findings table is empty but has every column, and the report
    says so before its tables."""
    from core.findings import COLUMNS

    folder = Path(finished_run[0])
    findings = pd.read_parquet(folder / "findings.parquet")
    assert list(findings.columns) == list(COLUMNS) and findings.empty
    report = (folder / "report.md").read_text()
    assert report.index("## Findings") < report.index("## Tables")
    assert "This flow checks no paper's claim" in report


def test_models_table_is_dense_and_self_consistent(finished_run):
    _, models, examples = finished_run
    assert models["model_id"].tolist() == [0, 1, 2, 3, 4]
    assert models["seed"].tolist() == [model_seed(0, i) for i in range(5)]
    in_subset, train_correct = unpack_bool_rows(models["in_subset"]), unpack_bool_rows(models["train_correct"])
    test_correct = unpack_bool_rows(models["test_correct"])
    assert in_subset.shape == train_correct.shape == (5, 600) and test_correct.shape == (5, 200)
    assert (in_subset.sum(1) == 300).all() and (models["n_subset"] == 300).all()
    assert (models["steps"] == 2 * (300 // 64)).all()
    np.testing.assert_allclose(models["test_accuracy"], test_correct.mean(1))
    np.testing.assert_allclose(models["heldout_accuracy"], [r[~m].mean() for r, m in zip(train_correct, in_subset)])
    np.testing.assert_allclose(models["subset_accuracy"], [r[m].mean() for r, m in zip(train_correct, in_subset)])
    assert unpack_float_rows(models["epoch_loss"]).shape == (5, 2)
    train_rows = examples[examples["split"] == "train"]
    assert train_rows["position"].tolist() == list(range(600))
    assert train_rows["example_id"].is_monotonic_increasing and (train_rows["example_id"] < 1797).all()


def test_rows_equal_the_core_unit_of_work(finished_run):
    """The flow adds no randomness of its own: model 3 recomputed directly gives the same row."""
    _, models, _ = finished_run
    dataset = load_dataset(CONFIG.dataset)
    seed = model_seed(0, 3)
    subset = subset_mask(dataset.n_train, 300, seed).unsqueeze(0)
    outcome = train_on_subsets(dataset, CONFIG.model, [seed], subset, CONFIG.train)
    assert np.array_equal(unpack_bool_rows(models["in_subset"])[3], subset[0].numpy())
    assert np.array_equal(unpack_bool_rows(models["test_correct"])[3], outcome.test.correct[0].numpy())


def test_every_table_carries_provenance(finished_run):
    folder, _, _ = finished_run
    meta = read_provenance(f"{folder}/models.parquet")
    assert meta["run_id"] == run_id("train", CONFIG)
    assert meta["config"]["model"] == "mlp_w16_d1" and meta["config"]["n_models"] == 5
    assert meta["versions"]["torch"] == torch.__version__.split("+")[0]
    assert meta["code_revision"] and meta["hardware"]["cpu_count"] >= 1
    shard = read_provenance(f"{folder}/shards/models-00002.parquet")
    assert shard["models"] == "1" and float(shard["train_seconds"]) > 0


def test_killed_run_resumes_to_the_same_tables(finished_run, tmp_path, monkeypatch):
    _, expected, _ = finished_run
    real = tasks.common.train_on_subsets

    def dies_on_model_4(dataset, model, seeds, *args, **kwargs):
        if model_seed(0, 4) in seeds:
            raise RuntimeError("killed")
        return real(dataset, model, seeds, *args, **kwargs)

    monkeypatch.setattr(tasks.common, "train_on_subsets", dies_on_model_4)
    with pytest.raises(RuntimeError, match="killed"):
        train_flow(CONFIG, data_root=str(tmp_path))
    folder = tmp_path / "runs" / "train" / run_id("train", CONFIG)
    done = sorted(p.name for p in (folder / "shards").iterdir())
    assert done == ["models-00000.parquet", "models-00001.parquet"] and not (folder / "models.parquet").exists()
    first_written = (folder / "shards" / "models-00000.parquet").stat().st_mtime_ns

    monkeypatch.setattr(tasks.common, "train_on_subsets", real)
    (folder / "shards" / "models-00001.parquet").write_bytes(b"truncated")  # a half-written shard
    with pytest.warns(RuntimeWarning, match="unreadable"):
        train_flow(CONFIG, data_root=str(tmp_path))
    assert (folder / "shards" / "models-00000.parquet").stat().st_mtime_ns == first_written  # skipped
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "models.parquet"), expected)
    finished = {p: p.stat().st_mtime_ns for p in folder.rglob("*.parquet")}
    train_flow(CONFIG, data_root=str(tmp_path))  # a finished run recomputes nothing
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.parquet")} == finished


@pytest.mark.parametrize("fault", [OSError(errno.ENOSPC, "No space left on device"),
                                   PermissionError(errno.EACCES, "Permission denied")])
def test_a_failed_write_names_its_file_and_keeps_what_was_written(finished_run, tmp_path, monkeypatch, fault):
    """A full disk (at fsync) or a permission error (at open) on the second shard: a clear error, the first
    shard intact, no temp file left; the re-run ends with the tables of an uninterrupted run."""
    _, expected, _ = finished_run
    folder = tmp_path / "runs" / "train" / run_id("train", CONFIG)
    second = folder / "shards" / "models-00001.parquet"
    real_fsync, real_open = os.fsync, builtins.open

    def failing_fsync(fd):
        if any(p.name.startswith(f".{second.name}.") for p in second.parent.glob(".*.tmp")):
            raise fault
        return real_fsync(fd)

    def failing_open(file, mode="r", *args, **kwargs):
        if "w" in mode and Path(file).name.startswith(f".{second.name}."):
            raise fault
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", failing_fsync) if fault.errno == errno.ENOSPC else \
        monkeypatch.setattr(builtins, "open", failing_open)
    with pytest.raises(type(fault), match=rf"cannot write {re.escape(str(second))}: {fault.strerror}; the files "
                                          "written before it are intact"):
        train_flow(CONFIG, data_root=str(tmp_path))
    first = folder / "shards" / "models-00000.parquet"
    kept = first.stat().st_mtime_ns
    assert pd.read_parquet(first)["model_id"].tolist() == [0, 1] and not list(folder.rglob("*.tmp"))
    monkeypatch.undo()
    train_flow(CONFIG, data_root=str(tmp_path))
    assert first.stat().st_mtime_ns == kept
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "models.parquet"), expected)


def test_incompatible_model_fails_before_writing_anything(tmp_path):
    config = CONFIG.model_copy(update={"model": "cnn1d_w4_d2"})
    with pytest.raises(ValueError, match=r"cnn1d_w4_d2.*needs \[C, L\] sequences.*\[1, 8, 8\]"):
        train_flow(config, data_root=str(tmp_path))
    assert not (tmp_path / "runs").exists()


def test_subset_smaller_than_a_batch_fails_before_writing_anything(tmp_path):
    config = CONFIG.model_copy(update={"subset_ratio": 0.1})
    with pytest.raises(ValueError, match=r"subset_ratio=0.1 gives 60 of 600 examples per model, fewer than train.batch_size=64"):
        train_flow(config, data_root=str(tmp_path))
    assert not (tmp_path / "runs").exists()


def test_two_workers_give_the_same_tables(tmp_path):
    """The thread-pool path (max_workers > 1) writes exactly what the in-thread path writes (same torch threads)."""
    runs = {}
    for workers in (1, 2):
        config = CONFIG.model_copy(update={"runtime": RuntimeConfig(max_workers=workers, threads=1)})
        runs[workers] = Path(train_flow(config, data_root=str(tmp_path / str(workers))))
    assert runs[1].name == runs[2].name  # runtime settings are not part of the run id
    pd.testing.assert_frame_equal(pd.read_parquet(runs[2] / "models.parquet"), pd.read_parquet(runs[1] / "models.parquet"))


def test_progress_artifact_reaches_100(tmp_path):
    """The UI's progress artifact of this run's shards ends at 100%."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    state = train_flow(CONFIG.model_copy(update={"seed": 7}), data_root=str(tmp_path), return_state=True)
    run_id = state.state_details.flow_run_id

    async def progress_values():
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(
                type=ArtifactFilterType(any_=["progress"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
            return [a.data for a in found]

    assert asyncio.run(progress_values()) == [100.0]


@pytest.mark.parametrize("every,updates", [(3600.0, [100.0]), (0.0, [5.0 * i for i in range(1, 21)])])
def test_progress_artifact_updates_at_most_every_few_seconds(monkeypatch, every, updates):
    """20 quick shards: one update at the end when they take less than PROGRESS_EVERY_S, else one each."""
    from prefect import flow

    import flows.runner

    calls = []
    monkeypatch.setattr(flows.runner, "PROGRESS_EVERY_S", every)
    monkeypatch.setattr(flows.runner, "update_progress_artifact", lambda artifact, value: calls.append(value))

    @flow
    def twenty_shards() -> list[int]:
        return flows.runner.run_shards(lambda i: i * i, [{"i": i} for i in range(20)], RuntimeConfig(), "squares")

    assert twenty_shards() == [i * i for i in range(20)]
    assert calls == updates
