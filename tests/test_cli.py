"""The `regularity` command: its help, messages before any work, `ls` and `show`, and a real run (config files:
test_cli_configs.py; Ctrl-C: test_cli_interrupt.py; what it imports: test_cli_imports.py)."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows import server, server_port
from flows.cli import main
from flows.config_files import load_config
from flows.registry import FLOWS
from flows.train import TrainFlowConfig


def test_help_lists_the_flows():
    out = subprocess.run([sys.executable, "-m", "flows.cli", "--help"], capture_output=True, text=True, check=True).stdout
    assert "train           train many models at once" in out and "scaling_law" in out
    assert "run" in out and "server" in out


@pytest.fixture
def restored_prefect_env(monkeypatch):
    """`regularity run` sets Prefect's environment for its process; give it back after the test."""
    for key in [*server.local_settings(), "PREFECT_HOME"]:
        if key in os.environ:
            monkeypatch.setenv(key, os.environ[key])
        else:
            monkeypatch.delenv(key, raising=False)


@pytest.mark.usefixtures("restored_prefect_env")
def test_bad_config_exits_2_with_the_message_before_a_server_starts(capsys, monkeypatch):
    def no_server():
        raise AssertionError("the server was started for an invalid config")

    monkeypatch.setattr(server, "start_server", no_server)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["run", "train", "--set", "train.epochs=0"]) == 2
    assert "train.epochs: Input should be greater than or equal to 1" in capsys.readouterr().err
    assert main(["run", "train", "--set", "dataset.name=[1"]) == 2
    assert "--set 'dataset.name=[1': the value is not valid YAML" in capsys.readouterr().err


@pytest.mark.usefixtures("restored_prefect_env")
def test_ephemeral_runs_keep_out_of_the_local_server_database():
    first, second = server.ephemeral_settings()["PREFECT_HOME"], server.ephemeral_settings()["PREFECT_HOME"]
    assert first != second and Path(first).is_dir()
    assert not Path(first).is_relative_to(server_port.prefect_home())


def test_ephemeral_server_gets_time_to_migrate_its_fresh_database(monkeypatch):
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    assert server.ephemeral_settings()["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "120"  # Prefect's own: 20
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    assert server.ephemeral_settings()["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "300"  # the user's wins


def test_run_prints_the_run_folder_last(tmp_path, capsys, monkeypatch, prefect_harness):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))  # --ephemeral sets it; keep it local
    args = ["run", "train", "--ephemeral", "--data-root", str(tmp_path), "--set", "dataset.name=digits",
            "--set", "model=mlp_w8_d1", "--set", "n_models=2", "--set", "train.epochs=1"]
    assert main(args) == 0
    captured = capsys.readouterr()
    folder = Path(captured.out.strip().splitlines()[-1])
    assert folder.parent == tmp_path / "runs" / "train" and (folder / "models.parquet").is_file()
    assert "models.parquet" in captured.err and "figures/training.png" in captured.err
    report = (folder / "report.md").read_text()  # the markdown artifact, also beside the tables
    assert report.startswith(f"# train run `{folder.name}`") and "- `figures/training.png`" in report
    entry = FLOWS["train"]  # what each table's numbers are, and where to look, from the flow's registry entry
    assert f"\n**Where to look:** {entry.question}\n" in report
    for table in ["models.parquet", "summary.parquet", "examples.parquet"]:
        assert f"\n- `{table}`: {entry.tables[table]}\n" in report
    assert f"## Summary\n\n{entry.report_summary}\n\n| metric | mean | std | min | max |" in report

    assert main(["ls", "--data-root", str(tmp_path)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split() == ["flow", "run_id", "status", "created", "n_tables", "size", "summary"]
    assert listing[1].split()[:3] == ["train", folder.name, "complete"]
    assert listing[1].endswith(" digits mlp_w8_d1 n_models=2 epochs=1 lr=0.05")
    assert main(["show", folder.name, "--data-root", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "model: mlp_w8_d1" in shown and "models.parquet" in shown and "2 rows" in shown


def test_ls_and_show_explain_an_empty_data_root(tmp_path, capsys):
    assert main(["ls", "--data-root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"no runs under {tmp_path}"
    assert main(["ls", "--flow", "cscore", "--data-root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"no cscore runs under {tmp_path}"
    assert main(["show", "cscore-123456789abc", "--data-root", str(tmp_path)]) == 2
    assert "no run 'cscore-123456789abc'" in capsys.readouterr().err


@pytest.mark.usefixtures("restored_prefect_env")
def test_recompute_is_checked_with_the_config_before_a_server_starts(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(server, "start_server", lambda: pytest.fail("no server for a bad config"))
    assert main(["run", "train", "--data-root", str(tmp_path), "--recompute", "runs.parquet",
                 "--recompute", "../elsewhere/x.parquet"]) == 2
    err = capsys.readouterr().err
    assert "runtime.recompute: Value error, recompute patterns name files inside the run folder" in err
    assert "['../elsewhere/x.parquet']" in err and not (tmp_path / "runs").exists()


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if `regularity run` starts the local server or calls the flow."""
    from flows.registry import FlowEntry

    monkeypatch.setattr(server, "start_server", lambda: pytest.fail("the server was started"))
    real_load = FlowEntry.load
    monkeypatch.setattr(FlowEntry, "load", lambda self: (lambda **_: pytest.fail("the flow ran"), real_load(self)[1]))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)


@pytest.mark.usefixtures("restored_prefect_env", "no_work")
@pytest.mark.parametrize("case", ["missing file", "malformed file", "model against shape", "batch against set"])
def test_data_errors_come_in_one_line_before_any_work(case, tmp_path, capsys):
    """The dataset is loaded and the model checked against it before a server starts or a run folder exists."""
    data_root = tmp_path / "data"
    (tmp_path / "garbage.npz").write_bytes(b"not a zip archive")
    settings, message = {
        "missing file": (["dataset.name=arrays", f"dataset.path={tmp_path / 'none.npz'}"],
                         f"arrays file not found: looked at {tmp_path / 'none.npz'}; set dataset.path to an existing "
                         ".npz or .parquet file"),
        "malformed file": (["dataset.name=arrays", f"dataset.path={tmp_path / 'garbage.npz'}"],
                           f"{tmp_path / 'garbage.npz'} is not an .npz file"),
        "model against shape": (["dataset.name=digits", "model=cnn1d_w4_d1"], "model 'cnn1d_w4_d1' needs [C, L]"),
        "batch against set": (["dataset.name=digits", "train.batch_size=2000"],
                              "train.batch_size=2000 is larger than the training set (1437)"),
    }[case]
    args = ["run", "train", "--data-root", str(data_root)] + [a for s in settings for a in ("--set", s)]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1  # one line, nothing before it
    assert captured.err.startswith(f"regularity: error: {message}")
    assert not data_root.exists()  # no run folder, no cache


@pytest.mark.usefixtures("restored_prefect_env", "no_work")
def test_flows_check_their_own_grids_before_any_work(tmp_path, capsys):
    """A flow with its own check of the data (`FlowEntry.fits`) runs it: prune_grid's smallest data fraction."""
    assert main(["run", "prune_grid", "--data-root", str(tmp_path / "data"), "--set", "dataset.name=digits",
                 "--set", "data_fractions=[0.01]", "--set", "train.batch_size=32"]) == 2
    assert capsys.readouterr().err == ("regularity: error: data_fractions=0.01 gives 14 examples, fewer than "
                                       "train.batch_size=32\n")  # round(0.01 * 1437)


def test_a_mistyped_flow_name_gets_the_closest(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "cscroe"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"regularity run: error: argument flow: unknown flow 'cscroe'; did you mean cscore? flows: "
        f"{', '.join(sorted(FLOWS))}")


def test_printed_config_says_what_each_setting_is(capsys):
    assert main(["config", "train"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"# train: {FLOWS['train'].summary}"
    at = lines.index("n_models: 16")
    assert lines[at - 1] == f"# {TrainFlowConfig.model_fields['n_models'].description}"
    at = lines.index("train:")  # a group: its settings indented below it, each with its description
    assert lines[at - 1] == "# optimiser and schedule"
    assert lines[at + 1: at + 3] == ["  # passes over each model's training subset", "  epochs: 20"]
    assert max(map(len, lines)) <= 120


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_printed_config_reads_back_as_the_default(flow, tmp_path, capsys):
    assert main(["config", flow]) == 0
    path = tmp_path / "config.yaml"
    path.write_text(capsys.readouterr().out)
    config_class = FLOWS[flow].config_class()
    assert load_config(config_class, str(path), []) == config_class()


@pytest.mark.usefixtures("restored_prefect_env")
def test_run_reads_the_printed_config(tmp_path, capsys, monkeypatch):
    """`config FLOW > f.yaml; run FLOW --config f.yaml` runs the default config (scaling_law: no dataset to load)."""
    from flows.registry import FlowEntry
    from flows.scaling_law import ScalingLawFlowConfig

    ran = []
    real_load = FlowEntry.load
    monkeypatch.setattr(FlowEntry, "load", lambda self: (lambda config, data_root: ran.append(config) or str(tmp_path),
                                                         real_load(self)[1]))
    assert main(["config", "scaling_law"]) == 0
    (tmp_path / "f.yaml").write_text(capsys.readouterr().out)
    assert main(["run", "scaling_law", "--ephemeral", "--config", str(tmp_path / "f.yaml")]) == 0
    assert ran == [ScalingLawFlowConfig()] and capsys.readouterr().out == f"{tmp_path}\n"


def fake_runs(data_root: Path, run_ids: list[str]) -> None:
    """Run folders holding only a config.json."""
    for run_id in run_ids:
        folder = data_root / "runs" / run_id.rsplit("-", 1)[0] / run_id
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(f'{{"flow": "{folder.parent.name}", "run_id": "{run_id}", "config": {{}}}}')


def test_show_finds_a_run_by_the_start_of_its_id(tmp_path, capsys):
    from core.runs.catalog import find_run

    fake_runs(tmp_path, ["cscore-8e05aaaaaaaa", "cscore-8e05bbbbbbbb", "train-0123456789ab"])
    assert find_run("cscore-8e05a", tmp_path, prefix=True) == tmp_path / "runs/cscore/cscore-8e05aaaaaaaa"
    assert find_run("train", tmp_path, prefix=True) == tmp_path / "runs/train/train-0123456789ab"
    with pytest.raises(ValueError, match=r"^'cscore-8e05' is the start of 2 runs under .*/runs: cscore-8e05aaaaaaaa, "
                                         r"cscore-8e05bbbbbbbb; give more of the id$"):
        find_run("cscore-8e05", tmp_path, prefix=True)
    with pytest.raises(FileNotFoundError, match=r"^no run 'cscore-9' \(nor one beginning so\) under .*; runs there: "
                                                r"cscore-8e05aaaaaaaa, cscore-8e05bbbbbbbb, train-0123456789ab"):
        find_run("cscore-9", tmp_path, prefix=True)
    with pytest.raises(ValueError, match="'cscore-8e05a' is not a run id: those read"):
        find_run("cscore-8e05a", tmp_path)  # a config's setting names a whole id
    with pytest.raises(ValueError, match="is not a run id or the start of one"):
        find_run("../cscore-8e05", tmp_path, prefix=True)

    assert main(["show", "cscore-8e05b", "--data-root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"cscore-8e05bbbbbbbb  (partial (0 shard tables))\n"
                                              f"{tmp_path / 'runs/cscore/cscore-8e05bbbbbbbb'}\n")
    assert main(["show", "cscore-8e05", "--data-root", str(tmp_path)]) == 2
    assert "is the start of 2 runs" in capsys.readouterr().err


def test_a_setting_that_names_a_run_takes_the_start_of_its_id_and_fails_before_any_work(tmp_path, capsys,
                                                                                        monkeypatch):
    """`--set prune_run=prune_grid-0a1b` runs with the whole id in its config (so the run id does not depend on which
    runs exist); a start that names no run, or several, stops the command before the flow or a server starts."""
    from flows.registry import FlowEntry
    from flows.scaling_law import ScalingLawFlowConfig

    ran = []
    real_load = FlowEntry.load
    monkeypatch.setattr(FlowEntry, "load", lambda self: (lambda config, data_root: ran.append(config) or str(tmp_path),
                                                         real_load(self)[1]))
    monkeypatch.setattr(server, "start_server", lambda: pytest.fail("a server was started"))
    fake_runs(tmp_path, ["prune_grid-0a1b2c3d4e5f", "prune_grid-0a1bffffffff"])
    data_root = ["--data-root", str(tmp_path), "--ephemeral"]
    assert main(["run", "scaling_law", "--set", "prune_run=prune_grid-0a1b2", *data_root]) == 0
    assert ran == [ScalingLawFlowConfig(prune_run="prune_grid-0a1b2c3d4e5f")]
    assert "prune_run=prune_grid-0a1b2 is run prune_grid-0a1b2c3d4e5f\n" in capsys.readouterr().err
    for start, error in (("prune_grid-0a1b", "is the start of 2 runs"), ("prune_grid-9", "no run 'prune_grid-9'")):
        assert main(["run", "scaling_law", "--set", f"prune_run={start}", *data_root]) == 2
        err = capsys.readouterr().err
        assert err.startswith("regularity: error: ") and error in err and err.count("\n") == 1, err
    assert len(ran) == 1


def test_ls_summary_names_the_data_file():
    from core.runs.catalog import config_summary

    config = {"dataset": {"name": "arrays", "path": "/d/x.npz", "n_train": 100}, "model": "mlp_w8_d1"}
    assert config_summary(config) == "arrays path=/d/x.npz n_train=100 mlp_w8_d1"
    assert config_summary({"dataset": {"name": "digits", "path": None}}) == "digits"


def test_every_flow_says_what_its_tables_hold():
    """Each flow's registry entry says where to look, what its summary's cells are, and what each table holds; a named
    table is one that the flow's docs/<flow>.md or data/README.md (the tables several flows share) documents."""
    root = Path(__file__).parents[1]
    shared = (root / "data" / "README.md").read_text()
    for name, entry in FLOWS.items():
        documented = shared + (root / "docs" / f"{name}.md").read_text()
        assert entry.question and entry.report_summary and entry.tables, name
        for table in entry.tables:
            assert "*" in table or f"`{table}`" in documented, (name, table)


@pytest.mark.parametrize("flow", sorted(entry for entry in FLOWS if FLOWS[entry].fits))
def test_a_flows_own_data_check_is_the_one_it_runs(flow):
    """`fits` names the function the flow itself calls on (config, dataset) before any work."""
    import inspect

    entry = FLOWS[flow]
    check = entry.check_fits()
    assert check is getattr(importlib.import_module(entry.module), entry.fits)
    assert list(inspect.signature(check).parameters) == ["config", "dataset"]
    assert f"{entry.fits}(config, dataset)" in inspect.getsource(entry.load()[0].fn)


def test_report_lists_described_tables_first_then_the_others(tmp_path):
    from flows.report import table_lines

    for name in ["b.parquet", "c.parquet", "weights/x/level-00.safetensors"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    described = {"c.parquet": "one row per c", "weights/*/level-*.safetensors": "weights", "gone.parquet": "absent"}
    assert table_lines(tmp_path, described) == ["- `c.parquet`: one row per c",
                                                "- `weights/*/level-*.safetensors`: weights", "- `b.parquet`"]
