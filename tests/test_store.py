"""Tests of core.runs (store, files, completeness, catalog, rows): run identity, run folders, atomic Parquet,
provenance, list columns."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.config import Config, RuntimeConfig, canonical_json, run_id
from core.runs import files as files_mod
from core.runs import store as store_mod
from core.runs.catalog import audit_run, config_summary, list_runs
from core.runs.completeness import CorruptFileError
from core.runs.files import DATA_ROOT_ENV, default_data_root, read_provenance, read_table
from core.runs.rows import pack_bool_rows, pack_float_rows, unpack_bool_rows, unpack_float_rows
from core.runs.store import RunConflictError, RunStore
from flows.registry import FLOWS

# sha256('{"lr":0.1,"seed":0}')[:12], computed by hand once; must never change.
EXPECTED_ID = "toy-ff0a64b8b476"


class Tiny(Config):
    seed: int = 0
    lr: float = 0.1
    runtime: RuntimeConfig = RuntimeConfig()


@pytest.fixture
def run(tmp_path: Path) -> RunStore:
    return RunStore.open("toy", Tiny(), data_root=tmp_path)


def frame() -> pd.DataFrame:
    return pd.DataFrame({"model": [0, 1, 2], "acc": [0.5, 0.25, 1.0], "name": ["a", "b", "c"]},
                        index=pd.Index(["x", "y", "z"], name="key"))


def test_run_id_is_hand_computed_hash():
    assert hashlib.sha256(b'{"lr":0.1,"seed":0}').hexdigest()[:12] == EXPECTED_ID[4:]
    assert canonical_json(Tiny()) == '{"lr":0.1,"seed":0}'
    assert run_id("toy", Tiny()) == EXPECTED_ID


def test_run_id_is_stable_across_processes():
    code = ("from core.config import Config, RuntimeConfig, run_id\n"
            "class Tiny(Config):\n    seed: int = 0\n    lr: float = 0.1\n"
            "    runtime: RuntimeConfig = RuntimeConfig()\n"
            "print(run_id('toy', Tiny()))\n")
    env = {**os.environ, "PYTHONHASHSEED": "123"}  # a different str hash seed must not matter
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout.strip()
    assert out == EXPECTED_ID


def test_run_id_follows_results_not_runtime(tmp_path: Path):
    assert run_id("toy", Tiny(seed=1)) != EXPECTED_ID
    assert run_id("toy", Tiny(lr=0.2)) != EXPECTED_ID
    fast = Tiny(runtime=RuntimeConfig(device="cpu", threads=3, max_workers=8, precision="fp32"))
    assert run_id("toy", fast) == EXPECTED_ID
    # another precision changes the numbers, so it is part of the identity; fp32 runs keep their ids
    assert canonical_json(Tiny(runtime=RuntimeConfig(precision="bf16"))) == '{"lr":0.1,"precision":"bf16","seed":0}'
    assert len({run_id("toy", Tiny(runtime=RuntimeConfig(precision=p))) for p in ("fp32", "bf16", "tf32")}) == 3
    a = RunStore.open("toy", Tiny(), data_root=tmp_path)
    b = RunStore.open("toy", fast, data_root=tmp_path)  # reopening with another runtime is fine
    assert a.root == b.root and b.run_id == EXPECTED_ID


def test_run_dir_layout_and_config_json(tmp_path: Path):
    cfg = Tiny(seed=0, runtime=RuntimeConfig(threads=2))
    run = RunStore.open("toy", cfg, data_root=tmp_path)
    assert (run.flow, run.run_id) == ("toy", EXPECTED_ID)
    assert run.root == tmp_path.resolve() / "runs" / "toy" / EXPECTED_ID and run.root.is_dir()
    assert run.config_json == '{"lr":0.1,"seed":0}'
    text = (run.root / "config.json").read_text()
    assert "\n  " in text  # pretty-printed for people
    doc = json.loads(text)
    assert doc == {"flow": "toy", "run_id": EXPECTED_ID,
                   "config": {"seed": 0, "lr": 0.1,
                              "runtime": {"device": "auto", "threads": 2, "max_workers": 1, "task_runner": "local",
                                          "dask_address": None, "dask_workers": 2, "precision": "fp32"}},
                   "inputs": {}}
    assert [p.name for p in run.root.iterdir()] == ["config.json"]  # no temp file left


def test_input_contents_are_part_of_the_run_id(tmp_path: Path):
    """Runs that read files: the id hashes their fingerprints too; without files it is the config's alone."""
    plain = RunStore.open("toy", Tiny(), data_root=tmp_path, inputs={"dataset": None})
    assert plain.run_id == EXPECTED_ID and plain.inputs == {}
    first = RunStore.open("toy", Tiny(), data_root=tmp_path, inputs={"dataset": "0123456789abcdef"})
    second = RunStore.open("toy", Tiny(), data_root=tmp_path, inputs={"dataset": "fedcba9876543210"})
    assert len({plain.run_id, first.run_id, second.run_id}) == 3
    assert json.loads((first.root / "config.json").read_text())["inputs"] == {"dataset": "0123456789abcdef"}
    assert first.read_metadata(first.write_table("t.parquet", pd.DataFrame({"a": [1]})).name)["inputs"] == \
        {"dataset": "0123456789abcdef"}
    doc = json.loads((first.root / "config.json").read_text())
    (first.root / "config.json").write_text(json.dumps({**doc, "inputs": {"dataset": "edited"}}))
    with pytest.raises(RunConflictError, match=r"was made from input files \{'dataset': 'edited'\}, not "
                                               r"\{'dataset': '0123456789abcdef'\}"):
        RunStore.open("toy", Tiny(), data_root=tmp_path, inputs={"dataset": "0123456789abcdef"})


def test_config_json_mismatch_is_an_error(run: RunStore):
    cfg_path = run.root / "config.json"
    doc = json.loads(cfg_path.read_text())
    doc["config"]["seed"] = 7
    cfg_path.write_text(json.dumps(doc))
    with pytest.raises(RunConflictError, match="different config"):
        RunStore.open("toy", Tiny(), data_root=run.root.parents[2])
    cfg_path.write_text("{not json")
    with pytest.raises(RunConflictError, match="unreadable"):
        RunStore.open("toy", Tiny(), data_root=run.root.parents[2])


def test_path_creates_parents_and_stays_inside(run: RunStore):
    p = run.path("shards/train-00003.parquet")
    assert p == run.root / "shards" / "train-00003.parquet" and p.parent.is_dir()
    for bad in ("../escape.parquet", "/tmp/abs.parquet", "."):
        with pytest.raises(ValueError, match="must be a relative path inside the run folder"):
            run.path(bad)


def test_a_symlinked_runs_folder_works(tmp_path: Path):
    (tmp_path / "bigger-disk" / "runs").mkdir(parents=True)
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "runs").symlink_to(tmp_path / "bigger-disk" / "runs")
    store = RunStore.open("toy", Tiny(), data_root=tmp_path / "root")
    store.write_table("shards/s0.parquet", frame())
    assert (tmp_path / "bigger-disk" / "runs" / "toy" / store.run_id / "shards" / "s0.parquet").is_file()
    assert store.is_complete("shards/s0.parquet") and store.data_root == tmp_path / "root"


def test_write_round_trips_dataframe_and_arrow(run: RunStore):
    df = frame()
    path = run.write_table("models.parquet", df)
    assert path == run.root / "models.parquet"
    pd.testing.assert_frame_equal(run.read_table("models.parquet"), df)
    pd.testing.assert_frame_equal(read_table(path), df)
    arrow = pa.table({"k": pa.array([1, 2], pa.int16())})
    run.write_table("shards/a.parquet", arrow)
    assert pq.read_table(run.root / "shards/a.parquet").column("k").to_pylist() == [1, 2]


def test_failed_write_leaves_nothing(run: RunStore, monkeypatch: pytest.MonkeyPatch):
    run.write_table("models.parquet", frame())
    good = (run.root / "models.parquet").read_bytes()

    def broken(table, where, **kw):
        where.write(b"PAR1 partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        run.write_table("new.parquet", frame())
    with pytest.raises(OSError, match="disk full"):
        run.write_table("models.parquet", frame().iloc[:1])
    assert sorted(p.name for p in run.root.iterdir()) == ["config.json", "models.parquet"]
    assert (run.root / "models.parquet").read_bytes() == good  # old version untouched


def test_provenance_keys_and_values(run: RunStore):
    before = datetime.now(timezone.utc)
    path = run.write_table("models.parquet", frame(), extra_metadata={"n_models": "3"})
    raw = pq.read_schema(path).metadata
    assert raw[b"regularity.config"] == canonical_json(Tiny()).encode()
    assert b"pandas" in raw  # kept so DataFrames round-trip
    meta = run.read_metadata("models.parquet")
    assert meta == read_provenance(path)
    assert meta["run_id"] == EXPECTED_ID and meta["flow"] == "toy"
    assert meta["config"] == {"lr": 0.1, "seed": 0}
    assert meta["n_models"] == "3"
    assert meta["versions"]["pyarrow"] == pa.__version__
    assert meta["versions"]["torch"].startswith("2.")
    assert meta["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert meta["versions"]["prefect"] and meta["versions"]["scikit-learn"]
    assert meta["code_revision"] and meta["code_revision"] == store_mod.code_revision()
    assert meta["hardware"]["cpu_count"] == os.cpu_count()
    assert meta["hardware"]["torch_threads"] >= 1
    created = datetime.fromisoformat(meta["created_at"])
    assert created.utcoffset() == timedelta(0)
    assert before <= created <= datetime.now(timezone.utc)


def test_batches_are_written_one_row_group_each_with_the_same_provenance(run: RunStore):
    schema = pa.schema([("k", pa.int64())], metadata={"mine": "kept"})
    batches = (pa.record_batch([pa.array(range(i, i + 3))], schema=schema) for i in (0, 3, 6))
    path = run.write_batches("shards/b.parquet", schema, batches, extra_metadata={"rows": 9})
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    assert pq.read_table(path).column("k").to_pylist() == list(range(9))
    assert pq.read_schema(path).metadata[b"mine"] == b"kept"
    meta, table_meta = run.read_metadata("shards/b.parquet"), run.read_metadata(run.write_table("t.parquet", frame()).name)
    assert meta["rows"] == "9" and meta["built_from"] == {}
    assert set(meta) - {"rows"} == set(table_meta) - {"pandas"}
    assert all(meta[k] == table_meta[k] for k in ("run_id", "flow", "config", "inputs", "versions", "code_revision"))
    assert run.is_complete("shards/b.parquet")


def test_a_failing_batch_stream_leaves_nothing(run: RunStore):
    schema = pa.schema([("k", pa.int64())])

    def batches():
        yield pa.record_batch([pa.array([1, 2])], schema=schema)
        raise RuntimeError("the generator failed")

    with pytest.raises(RuntimeError, match="the generator failed"):
        run.write_batches("shards/b.parquet", schema, batches())
    assert sorted(p.name for p in run.root.rglob("*") if p.is_file()) == ["config.json"]


def test_the_run_folder_is_known_before_it_is_opened(tmp_path: Path):
    folder = RunStore.folder("toy", Tiny(), tmp_path / "data")
    assert not (tmp_path / "data").exists()
    assert RunStore.open("toy", Tiny(), tmp_path / "data").root == folder == tmp_path / "data/runs/toy" / EXPECTED_ID


def test_store_does_not_import_prefect():
    code = "import sys, core.runs.catalog, core.runs.rows, core.runs.store; print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_code_revision_of_a_git_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # never find an outer repo
    monkeypatch.setattr(files_mod, "REPO_ROOT", repo)
    files_mod.code_revision.cache_clear()
    assert files_mod.code_revision() == "unknown"  # not a repo
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    files_mod.code_revision.cache_clear()
    assert files_mod.code_revision() == head
    revisions = []
    for edit in ("x = 2\n", "x = 3\n"):
        (repo / "a.py").write_text(edit)
        diff = subprocess.run([*git, "diff", "HEAD", "--binary"], capture_output=True, check=True).stdout
        files_mod.code_revision.cache_clear()
        revisions.append(files_mod.code_revision())
        assert revisions[-1] == f"{head}+dirty.{hashlib.sha256(diff).hexdigest()[:8]}"
    assert revisions[0] != revisions[1]  # two different edits are two revisions
    (repo / "b.py").write_text("y = 1\n")  # untracked source changes the revision too
    files_mod.code_revision.cache_clear()
    assert files_mod.code_revision().startswith(head + "+dirty.") and files_mod.code_revision() != revisions[1]
    (repo / "a.py").write_text("x = 1\n")
    (repo / "b.py").unlink()
    files_mod.code_revision.cache_clear()
    assert files_mod.code_revision() == head  # back to the commit
    files_mod.code_revision.cache_clear()


def test_is_complete_true_after_write(run: RunStore):
    assert not run.is_complete("models.parquet")
    run.write_table("models.parquet", frame())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run.is_complete("models.parquet")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_remove_corrupt_removes_unreadable_file(run: RunStore, damage: str):
    path = run.write_table("shards/s0.parquet", frame())
    if damage == "garbage":
        path.write_bytes(b"\x00garbage, not parquet" * 10)
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not run.is_complete("shards/s0.parquet")
    assert path.exists()  # a check deletes nothing
    with pytest.warns(RuntimeWarning, match="recomputed"):
        assert run.remove_corrupt("shards/s0.parquet") == ["shards/s0.parquet"]
    assert not path.exists()


def test_remove_corrupt_removes_file_of_another_run(tmp_path: Path, run: RunStore):
    other = RunStore.open("toy", Tiny(seed=5), data_root=tmp_path)
    src = other.write_table("models.parquet", frame())
    shutil.copy(src, run.path("models.parquet"))
    assert not run.is_complete("models.parquet")
    assert (run.root / "models.parquet").exists()  # a check deletes nothing
    with pytest.warns(RuntimeWarning, match=other.run_id):
        assert run.remove_corrupt("models.parquet") == ["models.parquet"]
    assert not (run.root / "models.parquet").exists()
    assert other.is_complete("models.parquet")


def test_remove_corrupt_leaves_whole_missing_and_stale_files(run: RunStore):
    import torch

    run.write_table("shards/a.parquet", frame())
    run.write_table("combined.parquet", frame(), built_from=["shards/a.parquet"])
    run.write_table("shards/a.parquet", frame())  # rewritten: combined.parquet is out of date, but whole
    weights = run.write_tensors("weights/w.safetensors", {"w": torch.ones(3)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run.remove_corrupt("shards/a.parquet", "combined.parquet", "weights/w.safetensors", "missing.parquet") == []
    assert (run.root / "combined.parquet").exists() and weights.exists()


def test_data_root_from_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DATA_ROOT_ENV, "rel/root")
    assert default_data_root() == tmp_path.resolve() / "rel" / "root"
    run = RunStore.open("toy", Tiny())
    assert run.root == tmp_path.resolve() / "rel/root/runs/toy" / EXPECTED_ID
    monkeypatch.delenv(DATA_ROOT_ENV)
    repo = Path(__file__).resolve().parents[1]  # this file's checkout, not a path derived from the store's module
    assert default_data_root() == repo / "data" and default_data_root().is_absolute()
    assert (default_data_root() / "README.md").is_file()  # the repository's data/, documented there


def test_pack_unpack_bool_rows_exact():
    rng = np.random.default_rng(0)
    m = rng.random((4, 37)) < 0.5
    col = pack_bool_rows(m)
    assert col.type == pa.list_(pa.bool_()) and len(col) == 4
    assert col[1].as_py() == m[1].tolist()
    out = unpack_bool_rows(col)
    assert out.dtype == np.bool_ and out.shape == (4, 37)
    np.testing.assert_array_equal(out, m)
    np.testing.assert_array_equal(unpack_bool_rows(col.slice(1, 2)), m[1:3])  # honours offsets
    empty = unpack_bool_rows(pack_bool_rows(np.zeros((2, 0), bool)))
    assert empty.shape == (2, 0)


def test_pack_unpack_float_rows_exact():
    m = np.array([[0.1, -2.5, np.nan], [1e-30, np.inf, 3.0]], dtype=np.float32)
    col = pack_float_rows(m)
    assert col.type == pa.list_(pa.float32())
    out = unpack_float_rows(col)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, m)
    assert unpack_float_rows(pack_float_rows(np.zeros((2, 0)))).shape == (2, 0)


def test_pack_ragged_and_bad_shapes_raise():
    with pytest.raises(ValueError, match="same length"):
        pack_bool_rows([[True, False], [True]])
    with pytest.raises(ValueError, match="2-d"):
        pack_float_rows(np.zeros(3))
    with pytest.raises(ValueError, match="different lengths"):
        unpack_bool_rows(pa.array([[True], [True, False]]))
    with pytest.raises(ValueError, match="different lengths"):
        unpack_float_rows(pa.array([[1.0, 2.0], []], pa.list_(pa.float32())))


def test_list_columns_round_trip_through_parquet(run: RunStore):
    correct = np.random.default_rng(1).random((3, 10)) < 0.7
    loss = np.random.default_rng(2).random((3, 10)).astype(np.float32)
    table = pa.table({"model": [0, 1, 2], "correct": pack_bool_rows(correct),
                      "loss": pack_float_rows(loss)})
    path = run.write_table("models.parquet", table, extra_metadata={"n_models": "3"})
    df = run.read_table("models.parquet")  # pandas: object column of numpy arrays
    np.testing.assert_array_equal(unpack_bool_rows(df["correct"]), correct)
    np.testing.assert_array_equal(unpack_float_rows(df["loss"]), loss)
    chunked = pq.read_table(path).column("correct")  # arrow: chunked array
    np.testing.assert_array_equal(unpack_bool_rows(chunked), correct)


def test_list_runs(tmp_path: Path):
    empty = list_runs(tmp_path)
    assert empty.empty and list(empty.columns) == ["flow", "run_id", "status", "summary", "path", "created",
                                                   "n_tables", "size_bytes"]
    a = RunStore.open("toy", Tiny(seed=1), data_root=tmp_path)
    a.write_table("models.parquet", frame())
    a.write_table("shards/s0.parquet", frame())
    b = RunStore.open("other", Tiny(seed=2), data_root=tmp_path)
    runs = list_runs(tmp_path).set_index("run_id")
    assert set(runs.index) == {a.run_id, b.run_id}
    assert runs.loc[a.run_id, "flow"] == "toy" and runs.loc[b.run_id, "flow"] == "other"
    assert runs.loc[a.run_id, "path"] == str(a.root)
    assert runs.loc[a.run_id, "n_tables"] == 2 and runs.loc[b.run_id, "n_tables"] == 0
    size_a = sum(p.stat().st_size for p in a.root.rglob("*") if p.is_file())
    assert runs.loc[a.run_id, "size_bytes"] == size_a
    assert runs.loc[b.run_id, "size_bytes"] == (b.root / "config.json").stat().st_size
    assert runs["created"].dt.tz is not None
    assert runs["status"].to_dict() == {a.run_id: "partial (1 shard tables)", b.run_id: "partial (0 shard tables)"}
    b.write_table("shards/net/level-00.parquet", frame())  # shards may sit in sub-folders
    (a.root / "report.md").write_text("# done\n")
    assert list_runs(tmp_path).set_index("run_id")["status"].to_dict() == {a.run_id: "complete",
                                                                           b.run_id: "partial (1 shard tables)"}


def test_config_summary_names_what_tells_runs_apart():
    keys = {name: entry.summary_keys for name, entry in FLOWS.items()}  # each flow's own, from its registry entry
    config = {"dataset": {"name": "fashion_mnist", "n_train": 100, "n_test": None, "label_noise": 0.1},
              "model": "mlp_w8_d1", "train": {"epochs": 3, "lr": 0.1}, "ratios": [0.1, 0.2, 0.3, 0.4, 0.5],
              "runs_per_ratio": 4, "runtime": {"max_workers": 2}}
    assert config_summary(config, keys["cscore"]) == ("fashion_mnist n_train=100 noise=0.1 mlp_w8_d1 runs_per_ratio=4 "
                                                      "ratios=0.1..0.5 (5) epochs=3 lr=0.1")
    grid = {"dataset": {"name": "mnist1d", "n_train": None, "label_noise": 0.0}, "family": "cnn1d", "widths": [8, 16],
            "depths": [1, 2, 3], "data_fractions": [1.0], "seeds": list(range(16)), "pruning": {"levels": 16},
            "train": {"epochs": 20, "lr": 0.2}}
    assert config_summary(grid, keys["prune_grid"]) == ("mnist1d family=cnn1d widths=8/16 depths=1/2/3 "
                                                        "data_fractions=1.0 seeds=0..15 (16) levels=16 epochs=20 lr=0.2")
    assert config_summary({"prune_run": "prune_grid-0123456789ab", "seed": 0},
                          keys["scaling_law"]) == "prune_run=prune_grid-0123456789ab"
    deq = {"dataset": {"name": "mnist1d"}, "model": "deq_w64", "gammas": [0.0, 2.0], "seeds": [0, 1, 2],
           "train": {"epochs": 30, "lr": 0.1}}
    assert config_summary(deq, keys["deq"]) == "mnist1d deq_w64 seeds=0/1/2 gammas=0.0/2.0 epochs=30 lr=0.1"


def test_a_flow_places_a_shared_summary_key_it_names_and_ls_adds_each_flows_keys(tmp_path: Path):
    proxies = {"dataset": {"name": "digits"}, "model": "mlp_w8_d1", "n_models": 8, "train": {"epochs": 2, "lr": 0.1},
               "cscore_run": "cscore-0123456789ab"}
    assert config_summary(proxies, FLOWS["proxies"].summary_keys) == ("digits mlp_w8_d1 n_models=8 epochs=2 lr=0.1 "
                                                                      "cscore_run=cscore-0123456789ab")
    assert config_summary(proxies) == "digits mlp_w8_d1 epochs=2 lr=0.1"  # the shared keys alone
    RunStore.open("toy", Tiny(seed=1), data_root=tmp_path)
    assert list_runs(tmp_path)["summary"].tolist() == [""]
    assert list_runs(tmp_path, {"toy": ("seed", "lr"), "other": ("x",)})["summary"].tolist() == ["seed=1 lr=0.1"]


def test_tensors_round_trip_with_run_metadata(run):
    import torch
    from safetensors import safe_open

    store = run
    tensors = {"w": torch.arange(6.0).view(2, 3), "mask": torch.tensor([[True, False]])}
    path = store.write_tensors("weights/net/level-00.safetensors", tensors)
    loaded = store.read_tensors("weights/net/level-00.safetensors")
    assert torch.equal(loaded["w"], tensors["w"]) and torch.equal(loaded["mask"], tensors["mask"])
    with safe_open(path, "pt") as f:
        assert f.metadata()["run_id"] == store.run_id
    assert torch.equal(store.whole_tensors("weights/net/level-00.safetensors")["w"], tensors["w"])
    assert store.whole_tensors("weights/net/level-01.safetensors") is None  # never written


@pytest.mark.parametrize("damage, reason", [("garbage", "unreadable"), ("truncated", "unreadable"),
                                            ("flipped", "do not match their checksum"), ("foreign", "written by run")])
def test_damaged_weights_are_detected_and_recomputed(tmp_path: Path, run: RunStore, damage: str, reason: str):
    import torch

    name = "weights/net/level-00.safetensors"
    writer = RunStore.open("toy", Tiny(seed=5), data_root=tmp_path) if damage == "foreign" else run
    path = writer.write_tensors(name, {"w": torch.arange(64.0), "mask": torch.ones(8, dtype=torch.bool)})
    data = path.read_bytes()
    damaged = {"garbage": b"\x07garbage, not safetensors" * 10, "truncated": data[: len(data) - 16],
               "flipped": data[:-1] + bytes([data[-1] ^ 1]), "foreign": data}[damage]
    run.path(name).write_bytes(damaged)
    with pytest.raises(CorruptFileError, match=reason):
        run.read_tensors(name)
    with pytest.warns(RuntimeWarning, match=f"{reason}.*recomputed"):
        assert run.whole_tensors(name) is None
    assert not (run.root / name).exists()


# ---- what a table was built from, recomputing, abandoned temp files ----

def stamp_of(run: RunStore, name: str) -> dict:
    """The id and code revision `name` was written with, read back as a later table would record them."""
    meta = read_provenance(run.root / name) if name.endswith(".parquet") else files_mod._tensor_metadata(run.root / name)
    return {"id": meta["table_id"], "code_revision": meta["code_revision"]}


def test_a_derived_table_records_its_inputs_and_is_rebuilt_when_one_is_rewritten(run: RunStore):
    run.write_table("shards/a.parquet", frame())
    run.write_table("shards/b.parquet", frame())
    run.write_table("combined.parquet", frame(), built_from=["shards/a.parquet", "shards/b.parquet"])
    recorded = run.read_metadata("combined.parquet")["built_from"]
    assert recorded == {name: stamp_of(run, name) for name in ("shards/a.parquet", "shards/b.parquet")}
    assert len({stamp["id"] for stamp in recorded.values()}) == 2 and run.read_metadata("shards/a.parquet")["built_from"] == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run.is_complete("combined.parquet")
        assert run.is_complete("combined.parquet", ["shards/b.parquet", "shards/a.parquet"])  # order is no matter
    with pytest.warns(RuntimeWarning, match=r"built from 2 files, not from the 1 it is built from now; rebuilding it"):
        assert not run.is_complete("combined.parquet", ["shards/a.parquet"])
    run.write_table("shards/a.parquet", frame())  # the same rows written again: another write all the same
    with pytest.warns(RuntimeWarning, match=r"combined.parquet was built from shards/a.parquet before they were "
                                            r"rewritten \(or removed\); rebuilding it"):
        assert not run.is_complete("combined.parquet")
    assert (run.root / "combined.parquet").exists()  # out of date is not damaged: kept until rebuilt
    run.write_table("combined.parquet", frame(), built_from=["shards/a.parquet", "shards/b.parquet"])
    assert run.is_complete("combined.parquet")
    (run.root / "shards/b.parquet").unlink()
    with pytest.warns(RuntimeWarning, match="built from shards/b.parquet before"):
        assert not run.is_complete("combined.parquet")


def test_figures_are_drawn_again_only_when_a_table_the_code_or_a_figure_file_changed(run: RunStore, monkeypatch):
    drawn = []

    def draw() -> list[Path]:
        """Two figure files; counts its calls."""
        drawn.append(1)
        paths = [run.root / "figures" / "a.png", run.root / "figures" / "b.png"]
        for path in paths:
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"png")
        return paths

    run.write_table("runs.parquet", frame())
    run.write_table("shards/s0.parquet", frame())
    expected = [run.root / "figures" / "a.png", run.root / "figures" / "b.png"]
    assert run.figures(draw) == expected and len(drawn) == 1
    assert run.figures(draw) == expected and len(drawn) == 1  # the same tables: kept
    run.write_table("shards/s0.parquet", frame())  # a shard: figures are drawn from the top-level tables only
    assert run.figures(draw) == expected and len(drawn) == 1
    run.write_table("runs.parquet", frame())  # the same rows, written again: another table all the same
    assert run.figures(draw) == expected and len(drawn) == 2
    run.write_table("summary.parquet", frame())  # a new table
    assert run.figures(draw) == expected and len(drawn) == 3
    (run.root / "figures" / "b.png").unlink()
    assert run.figures(draw) == expected and len(drawn) == 4
    monkeypatch.setattr(store_mod, "code_revision", lambda: "f" * 40)  # other plotting code
    assert run.figures(draw) == expected and len(drawn) == 5
    monkeypatch.undo()
    record = json.loads((run.root / "figures" / "drawn_from.json").read_text())
    assert record["files"] == ["figures/a.png", "figures/b.png"] and record["drawn_from"]["code_revision"] == "f" * 40
    assert sorted(record["drawn_from"]["tables"]) == ["runs.parquet", "summary.parquet"]
    assert run.figures(draw) == expected and len(drawn) == 6
    (run.root / "figures" / "drawn_from.json").write_text("{garbled")
    assert run.figures(draw) == expected and len(drawn) == 7


def test_weights_record_their_inputs_too_and_inputs_may_be_other_runs_tables(run: RunStore, tmp_path: Path):
    other = RunStore.open("toy", Tiny(seed=1), data_root=tmp_path)
    upstream = other.write_table("scores.parquet", frame())
    run.write_tensors("weights/w0.safetensors", {"w": torch_ones()})
    run.write_tensors("weights/w1.safetensors", {"w": torch_ones()}, ["weights/w0.safetensors", str(upstream)])
    from_here = f"../{other.run_id}/scores.parquet"  # another run's table, from this run's folder
    assert files_mod._tensor_metadata(run.root / "weights/w1.safetensors")["built_from"] == {
        "weights/w0.safetensors": stamp_of(run, "weights/w0.safetensors"),
        from_here: {"id": read_provenance(upstream)["table_id"], "code_revision": store_mod.code_revision()}}
    assert run.whole_tensors("weights/w1.safetensors")["w"].sum() == 4
    other.write_table("scores.parquet", frame())  # the other run recomputed its table
    with pytest.warns(RuntimeWarning, match=f"built from {from_here} before"):
        assert run.whole_tensors("weights/w1.safetensors") is None
    assert (run.root / "weights/w1.safetensors").exists()
    with pytest.raises(FileNotFoundError, match=r"weights/w9.safetensors is missing or unreadable, so nothing can be "
                                                r"built from it"):
        run.write_table("t.parquet", frame(), built_from=["weights/w9.safetensors"])
    assert not (run.root / "t.parquet").exists()


def test_records_of_another_runs_table_survive_moving_the_data_root(tmp_path: Path):
    first = tmp_path / "first"
    upstream = RunStore.open("toy", Tiny(seed=1), data_root=first).write_table("scores.parquet", frame())
    run = RunStore.open("toy", Tiny(), data_root=first)
    run.write_table("derived.parquet", frame(), built_from=[str(upstream)])
    (tmp_path / "first").rename(tmp_path / "moved")
    moved = RunStore.open("toy", Tiny(), data_root=tmp_path / "moved")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert moved.is_complete("derived.parquet", [str(tmp_path / "moved" / upstream.relative_to(first))])
    outside = tmp_path / "user_scores.parquet"  # a file outside the data root is recorded by its absolute path
    frame().to_parquet(outside)
    moved.write_table("from_user.parquet", frame(), built_from=[str(outside)])
    assert list(moved.read_metadata("from_user.parquet")["built_from"]) == [str(outside)]


def torch_ones():
    import torch

    return torch.ones(4)


def test_every_write_has_its_own_id(run: RunStore):
    ids = {run.write_table("t.parquet", frame()) and run.read_metadata("t.parquet")["table_id"] for _ in range(3)}
    assert len(ids) == 3 and all(len(i) == 32 for i in ids)


def fill(run: RunStore) -> None:
    """A finished-looking toy run: tables, shards, weights, a figure and the report."""
    for name in ("runs.parquet", "cscores.parquet", "shards/s0.parquet", "shards/s1.parquet"):
        run.write_table(name, frame())
    run.write_tensors("weights/n/level-00.safetensors", {"w": torch_ones()})
    (run.root / "figures").mkdir()
    (run.root / "figures/f.png").write_bytes(b"png")
    (run.root / "report.md").write_text("# done\n")


@pytest.mark.parametrize("patterns,deleted", [
    (["runs.parquet"], ["report.md", "runs.parquet"]),
    (["shards/*"], ["report.md", "shards/s0.parquet", "shards/s1.parquet"]),
    (["shards/s1.parquet", "weights/*/*"], ["report.md", "shards/s1.parquet", "weights/n/level-00.safetensors"]),
    (["all"], ["cscores.parquet", "figures/f.png", "report.md", "runs.parquet", "shards/s0.parquet",
               "shards/s1.parquet", "weights/n/level-00.safetensors"]),
])
def test_recompute_deletes_what_it_names_and_the_report(tmp_path: Path, patterns, deleted):
    run = RunStore.open("toy", Tiny(), data_root=tmp_path)
    fill(run)
    before = run.files()
    with pytest.warns(RuntimeWarning, match=rf"recompute: deleted {len(deleted)} files of run {EXPECTED_ID}"):
        again = RunStore.open("toy", Tiny(runtime=RuntimeConfig(recompute=patterns)), data_root=tmp_path)
    assert again.files() == sorted(set(before) - set(deleted))
    assert (run.root / "config.json").is_file()
    assert "recompute" not in json.loads((run.root / "config.json").read_text())["config"]["runtime"]


def test_recompute_outdated_deletes_what_other_code_wrote(run: RunStore, monkeypatch: pytest.MonkeyPatch):
    fill(run)
    monkeypatch.setattr(store_mod, "code_revision", lambda: "f" * 40)
    run.write_table("shards/s1.parquet", frame())
    run.write_tensors("weights/n/level-01.safetensors", {"w": torch_ones()})
    monkeypatch.undo()
    assert run.revisions(["shards/s0.parquet", "shards/s1.parquet", "runs.parquet"]) == {
        store_mod.code_revision(): ["shards/s0.parquet", "runs.parquet"], "f" * 40: ["shards/s1.parquet"]}
    with pytest.warns(RuntimeWarning, match="deleted 3 files"):
        assert run.forget(["outdated"]) == ["report.md", "shards/s1.parquet", "weights/n/level-01.safetensors"]
    assert run.forget(["outdated"]) == []  # nothing left to do: no report deleted either, nothing said
    with pytest.warns(RuntimeWarning, match="deleted 6 files"):
        assert run.forget(["all"]) and run.files() == []
    assert run.forget(["runs.parquet"]) == []  # an empty run has nothing to name


def test_recompute_of_a_name_the_run_lacks_is_an_error_naming_its_files(run: RunStore):
    fill(run)
    message = (rf"recompute: 'run.parquet' names no file of run {EXPECTED_ID}; its files are cscores.parquet, "
               r"report.md, runs.parquet and shards/\*, weights/\*, figures/\* \(or say all or outdated\)")
    with pytest.raises(ValueError, match=message):
        run.forget(["runs.parquet", "run.parquet"])
    assert (run.root / "runs.parquet").exists() and (run.root / "report.md").exists()  # nothing deleted


@pytest.mark.parametrize("pattern", ["", " ", "/etc/passwd", "../other/x.parquet", "shards/../../x", "~/x"])
def test_recompute_patterns_stay_inside_the_run_folder(pattern):
    with pytest.raises(ValueError, match="recompute patterns name files inside the run folder"):
        RuntimeConfig(recompute=[pattern])


def test_abandoned_temp_files_are_removed_and_live_ones_kept(tmp_path: Path):
    run = RunStore.open("toy", Tiny(), data_root=tmp_path)
    (run.root / "shards").mkdir()
    old, live = run.root / "shards/.s0.parquet.123.ab.tmp", run.root / ".runs.parquet.456.cd.tmp"
    for path in (old, live):
        path.write_bytes(b"half a table")
    hour_ago = old.stat().st_mtime - store_mod.TMP_ABANDONED_S - 1
    os.utime(old, (hour_ago, hour_ago))
    RunStore.open("toy", Tiny(), data_root=tmp_path)
    assert not old.exists() and live.exists()


def test_audit_lists_revisions_and_out_of_date_tables(run: RunStore, monkeypatch: pytest.MonkeyPatch):
    fill(run)
    run.write_table("runs.parquet", frame(), built_from=["shards/s0.parquet", "shards/s1.parquet"])
    monkeypatch.setattr(store_mod, "code_revision", lambda: "f" * 40)
    run.write_table("shards/s1.parquet", frame().head(2))
    monkeypatch.undo()
    audit = audit_run(run.root).set_index("name")
    assert audit.index.tolist() == ["cscores.parquet", "runs.parquet", "shards/s0.parquet", "shards/s1.parquet",
                                    "weights/n/level-00.safetensors"]
    assert audit.loc["shards/s1.parquet", ["rows", "columns"]].tolist() == [2, 4]  # 3 columns and the index
    assert pd.isna(audit.loc["weights/n/level-00.safetensors", "rows"])
    assert audit["code_revision"].tolist() == [store_mod.code_revision()] * 3 + ["f" * 40, store_mod.code_revision()]
    assert audit["changed"].tolist() == [[], ["shards/s1.parquet"], [], [], []]
    (run.root / "shards/s2.parquet").write_bytes(b"cut short")
    garbled = audit_run(run.root).set_index("name").loc["shards/s2.parquet"]
    assert garbled["code_revision"] == "unreadable" and pd.isna(garbled["rows"]) and garbled["changed"] == []
