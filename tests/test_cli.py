"""The `regularity` command: config files, overrides, messages, and a real run."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows import server
from flows.cli import ConfigError, apply_override, load_config, main
from flows.registry import FLOWS
from flows.train import TrainFlowConfig


SHIPPED = sorted((Path(__file__).parents[1] / "flows" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    flow = {"cscore": "cscore", "proxies": "proxies", "prune": "prune_grid", "train": "train", "dct": "dct_sparse",
            "weight": "weight_correlation", "subspaces": "subspaces", "deq": "deq",
            "lime": "lime_pretrain"}[path.stem.split("-")[0]]
    FLOWS[flow].config_class().model_validate(yaml.safe_load(path.read_text()))  # raises, naming the field, if not


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_a_default_config_is_the_same_run_from_python_as_from_a_form_or_a_file(flow):
    """Python's default is not validated, a form's or a file's JSON is: a default that a validator would reorder
    gave the same settings two run ids (dct_sparse's layer types did)."""
    config_class = FLOWS[flow].config_class()
    default = config_class()
    assert config_class.model_validate_json(default.model_dump_json()) == default


def test_a_partial_group_keeps_the_flows_own_defaults(tmp_path):
    """`--set train.epochs=20`, a YAML block or a deployment parameter naming part of a group leaves the rest at the
    flow's defaults (subspaces trains at lr 0.1, weight_correlation on mnist1d), not at the group class's."""
    from flows.subspaces import SubspacesFlowConfig, subspaces_flow
    from flows.weight_correlation import WeightCorrelationFlowConfig

    config = load_config(SubspacesFlowConfig, None, ["train.epochs=20"])
    assert config.train == SubspacesFlowConfig().train.model_copy(update={"epochs": 20})
    assert config.train.lr == 0.1 != TrainFlowConfig().train.lr
    path = tmp_path / "c.yaml"
    path.write_text("dataset:\n  n_train: 100\npruning:\n  levels: 3\n")
    grid = load_config(WeightCorrelationFlowConfig, str(path), [])
    assert (grid.dataset.name, grid.dataset.n_train, grid.pruning.levels, grid.pruning.rewind_step) == ("mnist1d", 100, 3, 31)
    parameters = subspaces_flow.validate_parameters({"config": {"train": {"epochs": 20}}})
    assert parameters["config"].train.lr == 0.1


def test_help_lists_the_flows():
    out = subprocess.run([sys.executable, "-m", "flows.cli", "--help"], capture_output=True, text=True, check=True).stdout
    assert "train           train many models at once" in out and "scaling_law" in out
    assert "run" in out and "server" in out


def test_yaml_and_overrides_make_the_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: mlp_w8_d1\ntrain:\n  epochs: 3\n")
    config = load_config(TrainFlowConfig, str(path), ["train.lr=0.2", "dataset.n_train=100", "dataset.path=null"])
    assert (config.model, config.train.epochs, config.train.lr, config.dataset.n_train) == ("mlp_w8_d1", 3, 0.2, 100)
    assert config.dataset.path is None
    assert config.train.momentum == TrainFlowConfig().train.momentum  # untouched fields keep defaults


def test_printed_default_config_reads_back(capsys):
    assert main(["config", "train"]) == 0
    assert TrainFlowConfig.model_validate(yaml.safe_load(capsys.readouterr().out)) == TrainFlowConfig()


@pytest.mark.parametrize("override,message", [
    ("train.lr=-1", r"train.lr: Input should be greater than 0 \(got -1\)"),
    ("trian.lr=1", r"trian: Extra inputs are not permitted"),
    ("model=mlp_w2", r"(?s)model: Value error, unknown model 'mlp_w2'.*mlp_w\{width\}_d\{depth\}"),
    ("dataset.label_noise=1.5", r"dataset.label_noise: Input should be less than 1"),
    ("n_models", r"--set 'n_models': expected KEY=VALUE"),
])
def test_bad_settings_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainFlowConfig, None, [override])


def test_override_cannot_descend_into_a_value():
    with pytest.raises(ConfigError, match="'model' is a value, not a group of settings"):
        apply_override({"model": "mlp_w8_d1"}, "model.width=3")


def test_unreadable_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(TrainFlowConfig, str(tmp_path / "missing.yaml"), [])
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping of settings, not list"):
        load_config(TrainFlowConfig, str(tmp_path / "list.yaml"), [])


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
    assert not Path(first).is_relative_to(server.prefect_home())


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
    assert report.startswith(f"# train run `{folder.name}`") and "- `models.parquet`" in report
    assert "- `figures/training.png`" in report

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
