"""The `lime_data` flow: its rows against the generator's, data independent of the sharding and the chunk size,
row groups of one chunk, skipped shards on a re-run, the length tables against the examples, early refusals."""
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

import flows.lime_data as lime_data
from core.sequence import lime
from core.sequence.lime import generate
from flows.lime_data import LimeDataFlowConfig, LimeGenerationConfig, lime_data_flow

CONFIG = LimeDataFlowConfig(task="mixed", examples=23, shard_size=10, seed=3,
                            lime=LimeGenerationConfig(vocab_size=200, kept_rule=[2, 4]))


@pytest.fixture(scope="module")
def run(tmp_path_factory, prefect_harness):
    return Path(lime_data_flow(CONFIG, data_root=str(tmp_path_factory.mktemp("data"))))


def test_rows_are_the_generators_examples(run):
    examples = pd.read_parquet(run / "examples")
    expected = generate("mixed", 3, 0, 23, CONFIG.lime.to_core())
    assert list(examples.columns) == ["index", "task", "source", "target", "source_length", "target_length"]
    assert examples["index"].tolist() == list(range(23))
    assert examples["task"].astype(str).tolist() == [e.task for e in expected]
    assert [s.tolist() for s in examples["source"]] == [e.source.tolist() for e in expected]
    assert [t.tolist() for t in examples["target"]] == [e.target.tolist() for e in expected]
    assert examples["source_length"].tolist() == [len(e.source) for e in expected]
    assert examples["target_length"].tolist() == [len(e.target) for e in expected]
    schema = pq.read_schema(run / "examples" / "part-00000.parquet")
    assert [str(t) for t in schema.types] == ["int64", "dictionary<values=string, indices=int8, ordered=0>",
                                              "list<element: int32>", "list<element: int32>", "int32", "int32"]
    assert sorted(p.name for p in (run / "examples").iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]


def test_the_sharding_and_the_chunk_size_do_not_change_the_data(run, tmp_path, monkeypatch):
    expected = pq.read_table(run / "examples")
    finer = Path(lime_data_flow(CONFIG.model_copy(update={"shard_size": 7}), data_root=str(run.parents[2])))
    assert len(list((finer / "examples").glob("*.parquet"))) == 4
    assert pq.read_table(finer / "examples").equals(expected)
    monkeypatch.setattr(lime, "CHUNK", 4)  # a 10-example shard: row groups of 4, 4 and 2
    chunked = Path(lime_data_flow(CONFIG, data_root=str(tmp_path)))
    assert [pq.ParquetFile(p).metadata.num_row_groups for p in sorted((chunked / "examples").glob("*.parquet"))] \
        == [3, 3, 1]
    assert pq.read_table(chunked / "examples").equals(expected)


def test_the_length_tables_agree_with_the_examples(run):
    examples = pd.read_parquet(run / "examples").assign(task=lambda f: f["task"].astype(str))
    examples["shard"] = examples["index"] // 10
    lengths = ["source_length", "target_length"]
    by_shard = examples.groupby(["shard", "task"]).agg(first_index=("index", "min"), examples=("index", "size"),
                                                       **{f"{c}_{s}": (c, s) for c in lengths for s in ("mean", "max")})
    shards = pd.read_parquet(run / "lime_shards.parquet")
    assert list(shards.columns) == ["shard", "first_index", "task", "examples", "source_length_mean",
                                    "source_length_max", "target_length_mean", "target_length_max"]
    assert shards[["shard", "task"]].values.tolist() == [list(key) for key in by_shard.index]  # sorted by both
    assert (shards["first_index"] == shards["shard"] * 10).all()
    for column in ["examples", "source_length_max", "target_length_max"]:
        assert shards[column].tolist() == by_shard[column].tolist(), column
    for column in ["source_length_mean", "target_length_mean"]:
        assert shards[column].tolist() == pytest.approx(by_shard[column].tolist()), column
    by_task = examples.groupby("task")
    report = (run / "report.md").read_text()
    assert "| task | examples | share | source_length_mean | source_length_max | target_length_mean |" in report
    for task, rows in by_task:
        assert (f"| {task} | {len(rows)} | {round(len(rows) / 23, 4)} | {round(rows['source_length'].mean(), 4)} | "
                f"{rows['source_length'].max()} | {round(rows['target_length'].mean(), 4)} | "
                f"{rows['target_length'].max()} |") in report
    assert (run / "figures" / "lengths_by_task.png").is_file()


def test_a_rerun_skips_every_shard(run, monkeypatch):
    stamps = {p: p.stat().st_mtime_ns for folder in ("examples", "shards") for p in (run / folder).rglob("*.parquet")}
    assert len(stamps) == 2 * 3  # examples and lengths of three shards
    # a re-run of a written run needs no more room
    monkeypatch.setattr(lime_data.shutil, "disk_usage", lambda path: SimpleNamespace(free=0))
    assert Path(lime_data_flow(CONFIG, data_root=str(run.parents[2]))) == run
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_the_default_generation_settings_are_the_generators():
    assert LimeGenerationConfig().to_core() == lime.LimeConfig()
    assert CONFIG.lime.to_core() == lime.LimeConfig(vocab_size=200, kept_rule=(2, 4))
    assert LimeGenerationConfig().header == lime.LimeConfig().header == "used"  # the authors' header
    assert LimeGenerationConfig(header="all").to_core() == lime.LimeConfig(header="all")


@pytest.mark.parametrize("settings,message", [
    ({"shard_size": 0}, "shard_size\n  Input should be greater than or equal to 1"),
    ({"examples": 0}, "examples\n  Input should be greater than or equal to 1"),
    ({"lime": {"vocab_size": 60}}, "vocab_size 60 is too small: each example draws 68 distinct symbols"),
    ({"lime": {"case_length": [3, 2]}}, "case_length must be (low, high) with 1 <= low <= high, not (3, 2)"),
    ({"lime": {"header": "sorted"}}, "lime.header\n  Input should be 'used' or 'all'"),
])
def test_a_bad_config_is_refused_naming_the_field(settings, message):
    with pytest.raises(ValidationError) as refused:
        LimeDataFlowConfig.model_validate(settings)
    assert message in str(refused.value)


def test_a_run_larger_than_the_disk_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(lime_data.shutil, "disk_usage", lambda path: SimpleNamespace(free=10**6))
    with pytest.raises(ValueError, match=r"^examples=100000 need about 0\.0\d GB more on the disk of .*, which has "
                                         r"0\.00 GB free; lower examples or choose another data root$"):
        lime_data_flow.fn(LimeDataFlowConfig(), data_root=str(tmp_path / "data"))
    assert not (tmp_path / "data").exists()
