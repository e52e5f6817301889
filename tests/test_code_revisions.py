"""Runs whose files come from different code revisions: said before combining, flagged by `show`, recomputed on
request; a derived table built from shards that changed later is rebuilt."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from core.config import RuntimeConfig
from core.data.config import DatasetConfig
from core.runs import store as store_mod
from core.runs.catalog import audit_run
from core.runs.files import read_provenance
from core.training.config import TrainConfig
from flows.cli import main
from flows.cscore import CScoreFlowConfig, cscore_flow

pytestmark = pytest.mark.usefixtures("prefect_harness")

CONFIG = CScoreFlowConfig(dataset=DatasetConfig(name="digits", n_train=200, n_test=50), model="mlp_w8_d1",
                          train=TrainConfig(epochs=2, batch_size=32, lr=0.05), ratios=[0.5, 0.7],
                          runs_per_ratio=2, shard_size=2)
TABLES = ("runs", "cscores", "cscore_by_ratio", "summary")
OLD = "0123456789abcdef" * 2 + "01234567"  # another commit's hash (40 hex digits)


def tables(folder: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(folder / f"{name}.parquet") for name in TABLES}


@pytest.fixture(scope="module")
def finished_root(tmp_path_factory) -> Path:
    """A data root holding one finished run of CONFIG; tests work on copies of it (`run_in`)."""
    root = tmp_path_factory.mktemp("finished")
    cscore_flow(CONFIG, data_root=str(root))
    return root


def run_in(root: Path, finished_root: Path) -> Path:
    """The finished run of CONFIG, copied whole (provenance records its inputs by content, not by path or time)
    into the data root `root`: what `cscore_flow(CONFIG, data_root=root)` would leave there. Returns its folder."""
    shutil.copytree(finished_root, root, dirs_exist_ok=True)
    (folder,) = (root / "runs" / "cscore").iterdir()
    return folder


def test_a_shard_from_other_code_is_said_flagged_and_recomputed(tmp_path, monkeypatch, prefect_log, capsys,
                                                                finished_root):
    root = str(tmp_path)
    folder = run_in(tmp_path, finished_root)
    first, current = tables(folder), store_mod.code_revision()
    runs_id = read_provenance(folder / "runs.parquet")["table_id"]

    # shard 1 is lost and trained again by other code: everything built from it is out of date and rebuilt
    (folder / "shards" / "runs-00001.parquet").unlink()
    monkeypatch.setattr(store_mod, "code_revision", lambda: OLD)
    with pytest.warns(RuntimeWarning, match=r"runs.parquet was built from shards/runs-00001.parquet before"):
        cscore_flow(CONFIG, data_root=root)
    monkeypatch.undo()
    mixed = [m for m in prefect_log if "combines files written by 2 code revisions" in m]
    assert len(mixed) == 1 and mixed[0].startswith(f"runs.parquet combines files written by 2 code revisions: "
                                                  f"{current[:12]}{current[40:]} (1 file, e.g. shards/runs-00000.parquet), "
                                                  f"{OLD[:12]} (1 file, e.g. shards/runs-00001.parquet). The code is now at")
    assert "--recompute outdated" in mixed[0]
    runs = read_provenance(folder / "runs.parquet")
    assert runs["table_id"] != runs_id and runs["built_from"]["shards/runs-00001.parquet"]["code_revision"] == OLD
    for name, table in tables(folder).items():  # the same training, so the same numbers
        pd.testing.assert_frame_equal(table, first[name])

    # `show` says which files came from which code, and how to compute them again
    assert main(["show", folder.name, "--data-root", root]) == 0
    shown = capsys.readouterr().out
    assert f"! shards/ mixes 2 code revisions: {current[:12]}{current[40:]} (2, e.g. " \
           f"shards/heldout-probabilities-00000.parquet), {OLD[:12]} (2, e.g. " \
           f"shards/heldout-probabilities-00001.parquet)" in shown  # each shard's held-out probability sums beside it
    assert f"regularity run cscore --config {folder / 'config.json'} --data-root {root} --recompute outdated" in shown

    # recompute what other code wrote: the shard and the tables rebuilt under the other revision
    outdated = sorted(audit_run(folder).query("code_revision == @OLD")["name"])
    assert outdated == ["cscore_by_ratio.parquet", "cscores.parquet", "heldout_probabilities.parquet", "runs.parquet",
                        "shards/heldout-probabilities-00001.parquet", "shards/runs-00001.parquet", "summary.parquet",
                        "test_cscores.parquet"]
    with pytest.warns(RuntimeWarning, match="recompute: deleted 9 files"):
        cscore_flow(CONFIG.model_copy(update={"runtime": RuntimeConfig(recompute=["outdated"])}), data_root=root)
    audit = audit_run(folder)
    assert set(audit["code_revision"]) == {current} and not audit["changed"].map(len).any()
    for name, table in tables(folder).items():
        pd.testing.assert_frame_equal(table, first[name])
    assert main(["show", folder.name, "--data-root", root]) == 0
    shown = capsys.readouterr().out
    assert f"Code: written by {current[:12]}{current[40:]} (11 files); the code is now at" in shown
    assert not [line for line in shown.splitlines() if line.startswith("!") or "--recompute" in line]


def test_show_flags_a_table_built_from_shards_that_changed_later(tmp_path, capsys, finished_root):
    folder = run_in(tmp_path, finished_root)
    shard = pd.read_parquet(folder / "shards" / "runs-00000.parquet")
    store = store_mod.RunStore.open("cscore", CONFIG, tmp_path, inputs=read_provenance(folder / "runs.parquet")["inputs"])
    store.write_table("shards/runs-00000.parquet", shard)  # rewritten after runs.parquet was built from it
    assert main(["show", folder.name, "--data-root", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "runs.parquet" in shown and "OUT OF DATE" in shown.split("runs.parquet")[1].split("\n")[0]
    assert ("! runs.parquet is out of date: built from shards/runs-00000.parquet before it was rewritten or removed; "
            "the next run rebuilds it") in shown


def test_a_run_folder_config_json_runs_that_run_again(finished_root):
    (folder,) = (finished_root / "runs" / "cscore").iterdir()
    from flows.config_files import ConfigError, load_config

    assert load_config(CScoreFlowConfig, str(folder / "config.json"), [], "cscore") == CONFIG
    with pytest.raises(ConfigError, match=r"config.json of a cscore run, not of a proxies run"):
        load_config(CScoreFlowConfig, str(folder / "config.json"), [], "proxies")
