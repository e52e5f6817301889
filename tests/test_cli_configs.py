"""Configs of the `regularity` command: shipped files, YAML and --set overrides, defaults, and the messages of bad
settings."""
from pathlib import Path

import pytest
import yaml

from flows.cli import main
from flows.config_files import ConfigError, apply_override, load_config
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
    ("trian.lr=1", r"trian: Extra inputs are not permitted \(got \{'lr': 1\}\); did you mean train\?"),
    ("train.ephocs=3", r"train.ephocs: Extra inputs are not permitted \(got 3\); did you mean train.epochs\?$"),
    ("n_model=3", r"n_model: Extra inputs are not permitted \(got 3\); did you mean n_models\?$"),
    ("dataset.nme=x", r"dataset.nme: Extra inputs are not permitted \(got 'x'\); did you mean dataset.name\?$"),
    ("zzz=1", r"zzz: Extra inputs are not permitted \(got 1\)$"),  # nothing close: no guess
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
