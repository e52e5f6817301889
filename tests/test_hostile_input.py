"""Hostile input: every bad setting, dataset file, config file and path gets a clear error that names the field or
the file, and nothing is written: no run folder under the data root, no stray file.

1. config values out of range or of the wrong type, for every flow of flows/registry.py, generated from the
   pydantic models themselves (nested groups included), through the real `regularity run` entry and through the
   deployment path (Prefect's parameter validation, what a run started from the UI goes through);
2. unknown dataset and model names;
3. dataset files missing, truncated, of the wrong shape or holding NaN/inf, for every file-backed dataset;
4. YAML config files that are not a mapping, and bad `--set` values;
5. paths that try to leave the data root: run ids in `regularity show`, cscore_run, prune_run and scores, and a
   data_root given as a deployment parameter.

Validation-only cases never start Prefect (flow functions are called through `.fn`, or not at all) and never load a
dataset.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import sys
import types
import typing
from pathlib import Path
from types import SimpleNamespace

import annotated_types as at
import numpy as np
import pandas as pd
import pytest
from prefect.exceptions import ParameterTypeError
from pydantic import BaseModel

import flows.common as common
from core.data.datasets import DatasetError
from core.models.names import MODEL_PATTERNS
from flows import server
from flows.cli import main
from flows.common import checked_data_root, upstream_table
from flows.config_files import ConfigError, apply_override, load_config
from flows.registry import FLOWS
from test_data import write_idx, write_png

LOADED = {name: entry.load() for name, entry in FLOWS.items()}  # (flow, config class); imports prefect, starts nothing
DATASET_NAMES = "'mnist1d', 'digits', 'synthetic', 'fashion_mnist', 'cifar10', 'cifar100', 'image_folder' or 'arrays'"


# ==================================================================== helpers
@pytest.fixture
def cli(monkeypatch):
    """`regularity main`, with the environment given back afterwards (`regularity run` sets Prefect's settings for its
    process) and a test failure should it ever start a Prefect server."""
    saved = dict(os.environ)

    def no_server():
        raise AssertionError("a Prefect server was started for an invalid input")

    monkeypatch.setattr(server, "start_server", no_server)
    yield main
    os.environ.clear()
    os.environ.update(saved)


def written(root: Path) -> list[str]:
    """Every file and folder under `root`, relative; [] when root does not exist."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def nested(assignments: list[str]) -> dict:
    """The config dict that `--set` assignments make (the same parser as the CLI)."""
    data: dict = {}
    for assignment in assignments:
        apply_override(data, assignment)
    return data


def refused_by_cli_and_deployment(run, capsys, tmp_path, flow: str, assignments: list[str], expected: list[str]):
    """`regularity run FLOW --set ...` exits 2 naming every `expected` phrase, writing nothing; a deployment run
    with the same config is refused by Prefect's parameter validation with the field under `config.`."""
    root = tmp_path / "root"
    with pytest.raises(ConfigError):  # what `regularity run` checks first: a valid config would go on and run
        load_config(LOADED[flow][1], None, assignments)
    args = ["run", flow, "--data-root", str(root)] + [a for s in assignments for a in ("--set", s)]
    assert run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("regularity: error: invalid config:")
    for phrase in expected:
        field_line = re.match(r"(\(top\)|[\w.]+): ", phrase)  # `field.path: message`, one line per bad field
        assert (f"\n  {phrase}" if field_line else phrase) in err, err
    assert written(root) == []
    with pytest.raises(ParameterTypeError) as refused:
        LOADED[flow][0].validate_parameters({"config": nested(assignments)})
    for phrase in expected:
        phrase = phrase.split(" (got ")[0]  # the CLI shows the value given, Prefect does not
        if phrase.startswith("(top): "):  # a model validator's message: about the whole config
            phrase = "config: " + phrase.removeprefix("(top): ")
        elif re.match(r"[\w.]+: ", phrase):  # `field.path: message`
            phrase = f"config.{phrase}"
        assert phrase in str(refused.value), str(refused.value)


# ==================================================================== 1. config values, generated from the models
BOUNDS = {at.Ge: ("ge", "greater than or equal to", -1), at.Gt: ("gt", "greater than", 0),
          at.Le: ("le", "less than or equal to", 1), at.Lt: ("lt", "less than", 0)}  # class -> attr, words, step out


def fields(cls: type[BaseModel], prefix: str = ""):
    """(dotted path, annotation, field) of every field, groups and then their fields, depth first."""
    for name, field in cls.model_fields.items():
        yield prefix + name, field.annotation, field
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from fields(field.annotation, f"{prefix}{name}.")


def base_type(annotation):
    """The annotation without `| None`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1
    return args[0] if optional else annotation


def expected_type_error(annotation) -> str:
    """How pydantic says a value is not of `annotation`."""
    kind = base_type(annotation)
    if typing.get_origin(kind) is typing.Literal:
        values = [repr(v) for v in typing.get_args(kind)]
        return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]
    if typing.get_origin(kind) is list:
        return "a valid list"
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return f"a valid dictionary or instance of {kind.__name__}"
    return {bool: "a valid boolean", int: "a valid integer", float: "a valid number", str: "a valid string"}[kind]


def number(value: float) -> str:
    """How pydantic prints a bound (1.0 -> 1)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def yaml_number(value: float, is_int: bool) -> str:
    """`value` as a `--set` YAML literal (PyYAML reads 1e-06 as a string: always write the digits)."""
    return str(int(value)) if is_int else np.format_float_positional(float(value))


def generated_cases() -> list:
    """For every flow and field: each numeric bound crossed (just outside), and values of the wrong type."""
    cases = []
    for flow, (_, config_class) in LOADED.items():
        for path, annotation, field in fields(config_class):
            kind = base_type(annotation)
            is_int = kind is int
            for constraint in field.metadata:
                if isinstance(constraint, at.MinLen) and constraint.min_length == 1:
                    cases.append(pytest.param(flow, f"{path}=[]", f"{path}: List should have at least 1 item after "
                                              "validation, not 0", id=f"{flow}:{path}-min_length"))
                if type(constraint) not in BOUNDS or kind not in (int, float):
                    continue
                attr, text, step = BOUNDS[type(constraint)]
                bound = getattr(constraint, attr)
                value = bound + step * (1 if is_int else 1e-6)
                cases.append(pytest.param(flow, f"{path}={yaml_number(value, is_int)}",
                                          f"{path}: Input should be {text} {number(bound)}",
                                          id=f"{flow}:{path}-{attr}"))
            wrong = ["[1, 2]"] if typing.get_origin(kind) is not list else []  # a list is no scalar nor group
            if kind is not str:
                wrong.append("abc")  # a word is no number, flag, choice, list nor group
            else:
                wrong.append("{a: 1}")  # a mapping is no string
            for value in wrong:
                expected = f"{path}: Input should be {expected_type_error(annotation)}"
                cases.append(pytest.param(flow, f"{path}={value}", expected, id=f"{flow}:{path}={value}"))
    return cases


GENERATED = generated_cases()


@pytest.mark.parametrize("flow,assignment,expected", GENERATED)
def test_generated_bad_value_names_the_field(cli, capsys, tmp_path, flow, assignment, expected):
    refused_by_cli_and_deployment(cli, capsys, tmp_path, flow, [assignment], [expected])


def test_generation_covers_every_flow_group_and_bound():
    ids = [case.id for case in GENERATED]
    assert {i.split(":")[0] for i in ids} == set(FLOWS)
    for group in ("dataset.", "train.", "runtime.", "pruning."):
        assert any(f":{group}" in i for i in ids), group
    assert "train:dataset.label_noise-lt" in ids and "prune_grid:pruning.prune_fraction-gt" in ids
    assert "cscore:target_se-lt" in ids and "train:subset_ratio-le" in ids  # optional and flow-specific fields
    assert "prune_grid:widths-min_length" in ids and "filter_retrain:arms=abc" in ids
    assert len(GENERATED) > 300


# what field validators and model validators refuse (not visible as metadata)
VALIDATOR_CASES = [
    ("cscore", ["ratios=[0.5, 1.5]"], ["ratios: Value error, every ratio must lie strictly between 0 and 1; got [1.5]"]),
    ("cscore", ["ratios=[0.5, 0.5]"], ["ratios: Value error, ratios must be distinct"]),
    ("cscore", ["ratios=[0.5, abc]"], ["ratios.1: Input should be a valid number"]),
    ("cscore", ["target_se=0.1", "max_runs_per_ratio=4", "runs_per_ratio=8"],
     ["(top): Value error, max_runs_per_ratio=4 is below runs_per_ratio=8"]),
    ("proxies", ["el2n_epoch=99"], ["(top): Value error, el2n_epoch=99 is after the last epoch (train.epochs=15)"]),
    ("proxies", ["cleanlab_folds=1"], ["(top): Value error, cleanlab_folds=1 leaves no example out of sample"]),
    ("filter_retrain", ["fractions=[0.1, 1.0]"], ["fractions: Value error, fractions must be distinct values in [0, 1)"]),
    ("filter_retrain", ["fractions=[-0.1]"], ["fractions: Value error, fractions must be distinct values in [0, 1)"]),
    ("filter_retrain", ["arms=[lowest, best]"], ["arms.1: Input should be 'lowest', 'random' or 'highest'"]),
    ("prune_grid", ["widths=[8, 0]"], ["widths: Value error, must be distinct positive integers; got [8, 0]"]),
    ("prune_grid", ["depths=[2, 2]"], ["depths: Value error, must be distinct positive integers; got [2, 2]"]),
    ("prune_grid", ["seeds=[-1]"], ["seeds: Value error, must be distinct non-negative integers"]),
    ("prune_grid", ["data_fractions=[0]"], ["data_fractions: Value error, must be distinct fractions in (0, 1]"]),
    ("prune_grid", ["data_fractions=[1.5]"], ["data_fractions: Value error, must be distinct fractions in (0, 1]"]),
    ("prune_grid", ["widths=[1.5]"], ["widths.0: Input should be a valid integer, got a number with a fractional part"]),
    ("weight_correlation", ["learning_rates=[0.1, 0.1]"],
     ["learning_rates: Value error, must be distinct positive learning rates; got [0.1, 0.1]"]),
    ("weight_correlation", ["correlation_fractions=[0, 0.5]"],
     ["correlation_fractions: Value error, must be distinct fractions in (0, 1]; got [0.0, 0.5]"]),
    ("dct_sparse", ["densities=[0.1, 1.0]"], ["densities: Value error, must be distinct fractions in (0, 1); got [0.1, 1.0]"]),
    ("dct_sparse", ["model=dct_mlp_w8_d1"], ["model: Value error, 'dct_mlp_w8_d1' is not a plain network of mlp, mlp_h"]),
    ("dct_sparse", ["layer_types=[sparse, lowrank]"], ["layer_types.1: Input should be 'dense', 'sparse' or 'dct_sparse'"]),
    ("train", ["model=subspace2_mlp_w8_d1"], ["model: Value error, 'subspace2_mlp_w8_d1' is a subspace network"]),
    ("subspaces", ["label_noise=[0.2, 0.2]"], ["label_noise: Value error, must be distinct fractions in [0, 1); got [0.2, 0.2]"]),
    ("subspaces", ["dataset.label_noise=0.1"],
     ["(top): Value error, dataset.label_noise=0.1: this flow sweeps label noise itself; leave it at 0"]),
    ("subspaces", ["methods=[line, plane]"], ["methods.1: Input should be 'line', 'layerwise_line', 'curve'"]),
    ("deq", ["gammas=[1, 1]"], ["gammas: Value error, must be distinct non-negative gammas (a repeated one repeats rows)"]),
    ("deq", ["gammas=[-1]"], ["gammas: Value error, must be distinct non-negative gammas"]),
    ("deq", ["model=mlp_w8_d1"], ["model: Value error, 'mlp_w8_d1' is not a DEQ classifier; use deq_w<width>"]),
    ("deq", ["model=deq_w0"], ["model: Value error, unknown model 'deq_w0'"]),
    ("deq", ["monitor.caps=[0, 4]"], ["monitor.caps: Value error, must be distinct iteration counts from 1 to 1000"]),
    ("deq", ["solver.name=newton"], ["solver.name: Input should be 'anderson' or 'broyden'"]),
    ("deq", ["penalty.fraction=0"], ["penalty.fraction: Input should be greater than 0"]),
    ("lime_data", ["task=prove"], ["task: Input should be 'deduct', 'abduct', 'induct', 'mixed', 'copy' or 'reverse'"]),
    ("lime_data", ["examples=1000000000"],
     ["(top): Value error, examples=1000000000 in shards of shard_size=50000 makes 20000 tasks, more than 10000",
      "raise shard_size to at least 100000"]),
    ("lime_data", ["lime.vocab_size=50"], ["lime: Value error, vocab_size 50 is too small: each example draws 68 "
                                          "distinct symbols (24 rule + 24 lower + 20 math)"]),
    ("lime_data", ["lime.kept_rule=[6, 5]"],
     ["lime: Value error, kept_rule must be (low, high) with 1 <= low <= high <= 24, not (6, 5)"]),
    ("lime_data", ["lime.rule_symbols=2"],
     ["lime: Value error, kept_rule must be (low, high) with 1 <= low <= high <= 2, not (3, 5)"]),
    ("lime_data", ["lime.case_length=[2]"], ["lime.case_length: List should have at least 2 items after validation"]),
    ("lime_data", ["lime.rule_math=[5, 300]"], ["lime.rule_math.1: Input should be less than or equal to 256"]),
    ("lime_pretrain", ["arms=[mixed, mixed]"], ["arms: Value error, arms must be distinct; got ['mixed', 'mixed']"]),
    ("lime_pretrain", ["arms=[prove]"], ["arms.0: Input should be 'scratch', 'mixed', 'deduct', 'abduct', 'induct', "
                                         "'copy' or 'reverse'"]),
    ("lime_pretrain", ["transformer.d_model=30"], ["transformer: Value error, d_model 30 must be a multiple of heads 4"]),
    ("lime_pretrain", ["downstream.train_examples=[100, 100]"],
     ["downstream.train_examples: Value error, must be distinct sizes from 1 to 10,000,000; got [100, 100]"]),
    ("lime_pretrain", ["downstream.thresholds=[0]"],
     ["downstream.thresholds: Value error, must be distinct exact-match levels in (0, 1]; got [0.0]"]),
    ("lime_pretrain", ["runtime.precision=bf16"],
     ["runtime: Value error, runtime.precision=bf16 is not supported by lime_pretrain, which trains in fp32"]),
    ("lime_pretrain", ["lime.vocab_size=20"], ["lime: Value error, vocab_size 20 is too small: each example draws 24"]),
    ("lime_pretrain", ["downstream.tasks=[rewrite, rewrite]"],
     ["downstream.tasks: Value error, must be distinct tasks; got ['rewrite', 'rewrite']"]),
    ("lime_pretrain", ["downstream.tasks=[prove]"],
     ["downstream.tasks.0: Input should be 'rewrite' or 'rewrite_multistep'"]),
    ("weight_correlation", ["model=subspace3_mlp_w8_d1"],
     ["model: Value error, 'subspace3_mlp_w8_d1' is a subspace network"]),
    ("train", ["trian.lr=1"], ["trian: Extra inputs are not permitted"]),
    ("prune_grid", ["pruning.level=3"], ["pruning.level: Extra inputs are not permitted"]),
    ("train", ["train.lr=0.1", "train.lr=-0.1", "dataset.seed=-1"],  # every bad field is listed, not just the first
     ["train.lr: Input should be greater than 0", "dataset.seed: Input should be greater than or equal to 0"]),
]


@pytest.mark.parametrize("flow,assignments,expected", VALIDATOR_CASES,
                         ids=[f"{f}:{' '.join(a)}" for f, a, _ in VALIDATOR_CASES])
def test_validator_refusal_names_the_field(cli, capsys, tmp_path, flow, assignments, expected):
    refused_by_cli_and_deployment(cli, capsys, tmp_path, flow, assignments, expected)


def test_unknown_device_is_refused_before_the_run(cli, capsys, tmp_path):
    refused_by_cli_and_deployment(cli, capsys, tmp_path, "train", ["runtime.device=abc"],
                                  ["runtime.device: Value error, device 'abc' is not one of auto, cpu, cuda, cuda:N"])


@pytest.mark.parametrize("assignment,expected", [
    ("n_models=yes", "n_models: Value error, Input should be a valid number, not a boolean (True: YAML reads"),
    ("train.lr=on", "train.lr: Value error, Input should be a valid number, not a boolean (True: YAML reads")])
def test_a_boolean_is_not_a_number(cli, capsys, tmp_path, assignment, expected):
    refused_by_cli_and_deployment(cli, capsys, tmp_path, "train", [assignment], [expected])


# ==================================================================== 2. unknown dataset and model names
SUBSET_FLOWS = ["train", "cscore", "proxies", "filter_retrain"]
NAME_CASES = (
    [pytest.param(f, [f"dataset.name={n}"], [f"dataset.name: Input should be {DATASET_NAMES} (got {n!r})"],
                  id=f"{f}:dataset={n}") for f in [*SUBSET_FLOWS, "prune_grid", "weight_correlation"]
                  for n in ("imagenet", "Digits")]
    + [pytest.param(f, [f"model={m}"], [f"model: Value error, unknown model {m!r}", "Valid names:",
                                        *MODEL_PATTERNS], id=f"{f}:model={m}")
       for f in [*SUBSET_FLOWS, "weight_correlation"]
       for m in ("vgg16", "mlp_w0_d2", "mlp_w8", "MLP_W8_D1", "cnn_w8_d0", "lenet_300_10", "../../x")]
    + [pytest.param("prune_grid", ["family=resnet"], ["family: Input should be 'mlp', 'cnn1d' or 'cnn' (got 'resnet')"],
                    id="prune_grid:family=resnet")]
)


@pytest.mark.parametrize("flow,assignments,expected", NAME_CASES)
def test_unknown_name_lists_the_valid_ones(cli, capsys, tmp_path, flow, assignments, expected):
    refused_by_cli_and_deployment(cli, capsys, tmp_path, flow, assignments, expected)


# (unknown names given to core.data.datasets directly, bypassing the config: tests/test_data.py::test_unknown_name_lists_valid_names)
@pytest.mark.parametrize("flow,settings,expected", [
    ("train", {"model": "cnn1d_w8_d2"}, "model 'cnn1d_w8_d2' needs [C, L] sequences, but the dataset's examples have "
                                        "shape [1, 8, 8]"),
    ("prune_grid", {"family": "cnn1d", "widths": [8], "depths": [1]}, "model 'cnn1d_w8_d1' needs [C, L] sequences"),
])
def test_model_that_does_not_fit_the_data_is_refused_before_the_run(tmp_path, flow, settings, expected):
    flow_fn, config_class = LOADED[flow]
    config = config_class.model_validate({"dataset": {"name": "digits", "n_train": 300}, **settings})
    with pytest.raises(ValueError, match=re.escape(expected)):
        flow_fn.fn(config, data_root=str(tmp_path / "root"))
    assert written(tmp_path / "root") == []  # digits has no files: not even a cache entry


# ==================================================================== 3. dataset files
# tests/test_data.py already covers: a missing npz, missing arrays/columns, labels out of range, fractional labels,
# duplicate ids, NaN in npz train and inf in npz test (without the file name), mismatched train/test shapes, uneven
# Parquet feature lists, bad `split` values; missing/differently sized images, mismatched class folders; missing
# Fashion-MNIST files, a wrong magic number, header dims larger than the data, label counts, out-of-range labels;
# missing CIFAR folders, a wrong meta key and a pickle calling os.getcwd. Below: what they leave out.
class Shell:
    """Pickles as a call of os.system: a CIFAR file that would run a command if it were unpickled blindly."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def flag_command(flag: Path) -> str:
    """A shell command whose only effect is to create `flag`."""
    return f"touch {flag}"


def base_arrays(**changes) -> dict:
    arrays = dict(x_train=np.arange(15, dtype=np.float64).reshape(5, 3), y_train=np.array([0, 1, 2, 1, 0]),
                  x_test=np.ones((2, 3)), y_test=np.array([2, 2]))
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


def npz_file(folder: Path, **changes) -> Path:
    path = folder / "data.npz"
    np.savez(path, **base_arrays(**changes))
    return path


def parquet_file(folder: Path, frame: pd.DataFrame, name: str = "data.parquet") -> Path:
    path = folder / name
    frame.to_parquet(path)
    return path


def cut(path: Path, keep: float = 0.5) -> Path:
    """`path` truncated to a fraction of its bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


PARQUET = pd.DataFrame({"split": ["train"] * 4 + ["test"], "label": [0, 1, 0, 1, 1],
                        "f0": [1.0, 2.0, 3.0, 4.0, 5.0], "f1": [1.0, 2.0, 3.0, 4.0, 5.0]})


def make_arrays(case: str, folder: Path, flag: Path) -> Path:
    """The arrays file of `case`."""
    if case == "npz truncated":
        return cut(npz_file(folder))
    if case == "npz is text":
        (folder / "data.npz").write_text("x_train,y_train\n1,2\n")
        return folder / "data.npz"
    if case == "npz empty":
        (folder / "data.npz").write_bytes(b"")
        return folder / "data.npz"
    if case == "npz object array calling os.system":
        x = np.empty((5, 3), dtype=object)
        x[:] = Shell(flag_command(flag))
        return npz_file(folder, x_train=x)
    if case == "npz 1-d features":
        return npz_file(folder, x_train=np.arange(5.0), x_test=np.ones(2))
    if case == "npz 0-d features":
        return npz_file(folder, x_train=np.array(3.0))
    if case == "npz no features":
        return npz_file(folder, x_train=np.ones((5, 0)), x_test=np.ones((2, 0)))
    if case == "npz NaN and inf":
        x = np.ones((5, 3))
        x[1, 0], x[1, 2], x[3, 1] = np.nan, np.nan, -np.inf
        return npz_file(folder, x_train=x)
    if case == "npz beyond float32":
        x = np.ones((5, 3))
        x[2] = 1e300
        return npz_file(folder, x_train=x)
    if case == "npz NaN in test":
        return npz_file(folder, x_test=np.array([[1.0, np.nan, 2.0], [0.0, 0.0, 0.0]]))
    if case == "npz string features":
        return npz_file(folder, x_train=np.full((5, 3), "a"))
    if case == "npz NaN label":
        return npz_file(folder, y_train=np.array([0, np.nan, 1, 1, 0]))
    if case == "npz labels of shape [N, 1]":
        return npz_file(folder, y_train=np.zeros((5, 1), int))
    if case == "parquet truncated":
        return cut(parquet_file(folder, PARQUET))
    if case == "parquet that is an npz":
        npz_file(folder).rename(folder / "data.parquet")
        return folder / "data.parquet"
    if case == "parquet NaN and inf":
        return parquet_file(folder, PARQUET.assign(f0=[1.0, np.nan, 3, 4, 5], f1=[1.0, 2, np.inf, 4, 5]))
    if case == "parquet None in a feature list":
        frame = pd.DataFrame({"split": ["train", "train", "test"], "label": [0, 1, 1],
                              "features": [[1.0, None], [2.0, 3.0], [1.0, 1.0]]})
        return parquet_file(folder, frame)
    if case == "parquet empty feature lists":
        frame = pd.DataFrame({"split": ["train", "train", "test"], "label": [0, 1, 1], "features": [[], [], []]})
        return parquet_file(folder, frame)
    if case == "parquet text feature":
        return parquet_file(folder, PARQUET.assign(f1=list("abcde")))
    if case == "parquet missing class-name label":
        return parquet_file(folder, PARQUET.assign(label=["cat", None, "dog", "cat", "dog"]))
    if case == "parquet missing numeric label":
        return parquet_file(folder, PARQUET.assign(label=[0, 1, None, 1, 0]))
    raise AssertionError(case)


ARRAY_CASES = {  # case -> what the message says ({path} = the file)
    "npz truncated": "cannot read {path} as npz (BadZipFile: File is not a zip file)",
    "npz is text": "{path} is not an .npz file: an .npz is a zip archive, but this file starts with b'x_tr'",
    "npz empty": "{path} is not an .npz file: an .npz is a zip archive, but this file starts with b''",
    "npz object array calling os.system": "cannot read {path} as npz (ValueError: Object arrays cannot be loaded "
                                          "when allow_pickle=False)",
    "npz 1-d features": "arrays train features have shape (5,) in {path}; need one row of at least one feature",
    "npz 0-d features": "arrays train features have shape () in {path}",
    "npz no features": "arrays train features have shape (5, 0) in {path}",
    "npz NaN and inf": "arrays train split has 3 NaN/inf feature values in 2 examples (first example_id 1) in {path}: "
                       "2 NaN, 1 inf; remove or impute them",
    "npz beyond float32": "arrays train split has 3 NaN/inf feature values in 1 examples (first example_id 2) in "
                          "{path}: 3 too large for float32",
    "npz NaN in test": "arrays test split has 1 NaN/inf feature values in 1 examples (first example_id 0) in {path}",
    "npz string features": "arrays train features have dtype <U1 in {path}; store numbers",
    "npz NaN label": "labels in y_train of {path} must be whole numbers, but position 1 holds nan",
    "npz labels of shape [N, 1]": "labels in y_train of {path} have shape (5, 1); give one integer per example",
    "parquet truncated": "cannot read {path} as Parquet (ArrowInvalid",
    "parquet that is an npz": "cannot read {path} as Parquet (ArrowInvalid",
    "parquet NaN and inf": "arrays train split has 2 NaN/inf feature values in 2 examples (first example_id 1) in "
                           "{path}: 1 NaN, 1 inf",
    "parquet None in a feature list": "arrays train split has 1 NaN/inf feature values in 1 examples (first "
                                      "example_id 0) in {path}: 1 NaN",
    "parquet empty feature lists": "arrays train features have shape (2, 0) in {path}",
    "parquet text feature": "cannot read {path} as Parquet (ValueError: could not convert string to float: 'a')",
    "parquet missing class-name label": "{path}: column `label` has 1 missing values (first in row 1); every "
                                        "example needs a label",
    "parquet missing numeric label": "{path}: column `label` has 1 missing values (first in row 2)",
}


def make_image_folder(case: str, folder: Path) -> tuple[Path, dict]:
    """An image tree with one defect; returns its root and the paths the message names."""
    for split, cls, i in [("train", "cat", 0), ("train", "dog", 1), ("test", "cat", 2), ("test", "dog", 3)]:
        write_png(folder / split / cls / f"{i}.png", np.full((3, 4, 3), 40 * i, np.uint8))
    bad = folder / "train" / "dog" / "1.png"
    if case == "png truncated":
        cut(bad)
    elif case == "png is text":
        bad.write_text("not an image")
    elif case == "png empty":
        bad.write_bytes(b"")
    elif case == "png links to a text file outside":
        bad.unlink()
        outside = folder.parent / "notes.txt"
        outside.write_text("not an image")
        bad.symlink_to(outside)
    elif case == "train has no class folders":
        for child in (folder / "train").rglob("*.png"):
            child.unlink()
        for child in (folder / "train").iterdir():
            child.rmdir()
    elif case == "class folder without images":
        bad.unlink()
        (bad.parent / "notes.txt").write_text("no images here")
    elif case == "test images of another size":
        for i, cls in ((2, "cat"), (3, "dog")):
            write_png(folder / "test" / cls / f"{i}.png", np.zeros((5, 4, 3), np.uint8))
    elif case == "path is an image file":
        return bad, {"path": bad}
    else:
        raise AssertionError(case)
    return folder, {"path": bad, "root": folder}


IMAGE_CASES = {
    "png truncated": "cannot read image {path} (",
    "png is text": "cannot read image {path} (UnidentifiedImageError",
    "png empty": "cannot read image {path} (UnidentifiedImageError",
    "png links to a text file outside": "cannot read image {path} (UnidentifiedImageError",
    "train has no class folders": "cannot read image folder {root}/train (Couldn't find any class folder",
    "class folder without images": "cannot read image folder {root}/train (Found no valid file for the classes dog",
    "test images of another size": "train images are (3, 4) but test images are (5, 4) (HxW) in {root}",
    "path is an image file": "image folder split(s) not found: {path}/train, {path}/test",
}


def make_fashion(case: str, folder: Path) -> Path:
    """The four Fashion-MNIST files with one defect; returns the file the message names."""
    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte.gz": (rng.integers(0, 256, (6, 5, 7), dtype=np.uint8), 2051),
             "train-labels-idx1-ubyte.gz": (np.array([9, 0, 3, 3, 1, 2], np.uint8), 2049),
             "t10k-images-idx3-ubyte.gz": (rng.integers(0, 256, (4, 5, 7), dtype=np.uint8), 2051),
             "t10k-labels-idx1-ubyte.gz": (np.array([1, 2, 3, 4], np.uint8), 2049)}
    for name, (array, magic) in files.items():
        write_idx(folder / name, array, magic)
    images = folder / "train-images-idx3-ubyte.gz"
    if case == "gzip truncated":
        cut(images)
    elif case == "not gzip":
        images.write_bytes(b"these are not the images you are looking for")
    elif case == "header cut short":
        images.unlink()
        images = folder / "train-images-idx3-ubyte"
        images.write_bytes(b"\x00\x00\x08")
    elif case == "test images of another size":
        images = write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((4, 6, 7), np.uint8), 2051)
    elif case == "negative dims":
        write_idx(images, np.zeros((6, 5, 7), np.uint8), 2051, dims=(-6, 5, 7))
    elif case == "huge dims":
        write_idx(images, np.zeros(0, np.uint8), 2051, dims=(2**31 - 1, 2**31 - 1, 4))
    elif case == "no images":
        write_idx(images, np.zeros(0, np.uint8), 2051, dims=(0, 5, 7))
        write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(0, np.uint8), 2049)
    elif case == "folder where the file should be":
        images.unlink()
        images.mkdir()
    else:
        raise AssertionError(case)
    return images


FASHION_CASES = {
    "gzip truncated": "cannot read {path} (Compressed file ended before the end-of-stream marker was reached)",
    "not gzip": "cannot read {path} (Not a gzipped file",
    "header cut short": "{path} is truncated (3 bytes): re-install or re-download it",
    "test images of another size": "fashion_mnist: train examples have shape (1, 5, 7) but test examples (1, 6, 7)",
    "negative dims": "{path}: header dims [-6, 5, 7] are negative: the file is corrupt",
    "huge dims": "{path}: header dims [2147483647, 2147483647, 4] need 18446744056529682436 bytes of data but the "
                 "file has 0",
    "no images": "fashion_mnist has no training examples",
    "folder where the file should be": "Fashion-MNIST file train-images-idx3-ubyte[.gz] not found; looked at: {path}",
}


def dump(path: Path, obj) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return path


def make_cifar(case: str, folder: Path, flag: Path) -> Path:
    """A CIFAR-10 tree with one defect; returns the file the message names."""
    d = folder / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (13, 3072), dtype=np.uint8), rng.integers(0, 10, 13)
    for i in range(5):
        dump(d / f"data_batch_{i + 1}", {b"data": x[2 * i:2 * i + 2], b"labels": y[2 * i:2 * i + 2].tolist()})
    dump(d / "test_batch", {b"data": x[10:], b"labels": y[10:].tolist()})
    dump(d / "batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)]})
    bad = d / "data_batch_3"
    labels = [1, 2]
    if case == "os.system inside a batch":
        dump(bad, {b"data": Shell(flag_command(flag)), b"labels": labels})
    elif case == "os.system as the whole file (protocol 0)":
        bad.write_bytes(b"cos\nsystem\n(S'" + flag_command(flag).encode() + b"'\ntR.")
    elif case == "builtins.exec":
        bad.write_bytes(b"cbuiltins\nexec\n(S'open(\"" + str(flag).encode() + b"\", \"w\").close()'\ntR.")
    elif case == "a numpy module outside the array machinery":
        bad.write_bytes(b"cnumpy.f2py\ndtype\n.")
    elif case == "pickle truncated":
        cut(bad)
    elif case == "pickle empty":
        bad.write_bytes(b"")
    elif case == "a list, not a dict":
        dump(bad, [1, 2, 3])
    elif case == "rows of 3000 values":
        dump(bad, {b"data": np.zeros((2, 3000), np.uint8), b"labels": labels})
    elif case == "3 labels for 2 images":
        dump(bad, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2, 3]})
    elif case == "NaN pixels":
        dump(bad, {b"data": np.full((2, 3072), np.nan), b"labels": labels})
    elif case == "pixels of 300":
        dump(bad, {b"data": np.full((2, 3072), 300), b"labels": labels})
    elif case == "text pixels":
        dump(bad, {b"data": np.full((2, 3072), "a"), b"labels": labels})
    elif case == "label 10 of 10 classes":
        dump(bad, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 10]})
    else:
        raise AssertionError(case)
    return bad


CIFAR_CASES = {
    "os.system inside a batch": r"{path} is not a readable CIFAR pickle \(global (posix|os)\.system is not allowed",
    "os.system as the whole file (protocol 0)": r"{path} is not a readable CIFAR pickle \(global os\.system is not allowed",
    "builtins.exec": r"{path} is not a readable CIFAR pickle \(global builtins\.exec is not allowed",
    "a numpy module outside the array machinery": r"{path} is not a readable CIFAR pickle \(global numpy\.f2py\.dtype "
                                                  r"is not allowed",
    "pickle truncated": r"{path} is not a readable CIFAR pickle \(pickle data was truncated\)",
    "pickle empty": r"{path} is not a readable CIFAR pickle \(Ran out of input\)",
    "a list, not a dict": r"{path} holds a list, not a CIFAR dict",
    "rows of 3000 values": r"{path}: data has shape \(2, 3000\) and 2 labels; expected \[n, 3072\]",
    "3 labels for 2 images": r"{path}: data has shape \(2, 3072\) and 3 labels",
    "NaN pixels": r"{path}: 6144 pixel values are not whole numbers in 0\.\.255 \(NaN, inf, fractions or out of range; "
                  r"first: nan\)",
    "pixels of 300": r"{path}: 6144 pixel values are not whole numbers in 0\.\.255 .*first: 300\)",
    "text pixels": r"{path}: data has dtype <U1; expected uint8 pixels",
    "label 10 of 10 classes": r"cifar10 train split: label 10 at position 5 \(example_id 5\) is outside 0\.\.9",
}

DATASET_CASES = (
    [pytest.param("arrays", c, id=f"arrays:{c}") for c in ARRAY_CASES]
    + [pytest.param("image_folder", c, id=f"image_folder:{c}") for c in IMAGE_CASES]
    + [pytest.param("fashion_mnist", c, id=f"fashion_mnist:{c}") for c in FASHION_CASES]
    + [pytest.param("cifar10", c, id=f"cifar10:{c}") for c in CIFAR_CASES]
)


@pytest.mark.parametrize("dataset,case", DATASET_CASES)
def test_bad_dataset_file_is_refused_naming_it(tmp_path, dataset, case):
    files, flag, root = tmp_path / "files", tmp_path / "pwned", tmp_path / "root"
    files.mkdir()
    imported = set(sys.modules)
    if dataset == "arrays":
        path = make_arrays(case, files, flag)
        path_setting, expected = path, re.escape(ARRAY_CASES[case].format(path=path))
    elif dataset == "image_folder":
        path_setting, named = make_image_folder(case, files)
        expected = re.escape(IMAGE_CASES[case].format(**named))
    elif dataset == "fashion_mnist":
        path = make_fashion(case, files)
        path_setting, expected = files, re.escape(FASHION_CASES[case].format(path=path))
    else:
        path = make_cifar(case, files, flag)
        path_setting, expected = files, CIFAR_CASES[case].format(path=re.escape(str(path)))
    before = written(files)
    flow_fn, config_class = LOADED["train"]
    config = config_class.model_validate({"dataset": {"name": dataset, "path": str(path_setting)}, "model": "mlp_w8_d1",
                                          "n_models": 1, "train": {"epochs": 1, "batch_size": 1}})
    with pytest.raises(DatasetError, match=expected):
        flow_fn.fn(config, data_root=str(root))
    assert written(root) == []  # no run folder, no cache entry
    assert written(files) == before  # the dataset's folder untouched
    assert not flag.exists()  # no pickle ran its command
    assert "numpy.f2py" in imported or "numpy.f2py" not in sys.modules  # nor imported a module it named


# ==================================================================== 4. config files and --set
# tests/test_cli.py covers a missing file, a YAML list, `--set` without `=` and invalid YAML in a `--set` value.
YAML_CASES = [
    ("a scalar", "42\n", "config {path} must be a mapping of settings, not int"),
    ("a word", "cscore\n", "config {path} must be a mapping of settings, not str"),
    ("zero", "0\n", "config {path} must be a mapping of settings, not int"),
    ("false", "false\n", "config {path} must be a mapping of settings, not bool"),
    ("empty", "", "config {path} is empty (no settings)"),
    ("only comments", "# model: mlp_w8_d1\n", "config {path} is empty (no settings)"),
    ("null", "null\n", "config {path} is empty (no settings)"),
    ("unclosed bracket", "model: [mlp_w8_d1\n", "cannot read config {path}: while parsing a flow sequence"),
    ("tab indentation", "train:\n\tepochs: 3\n", "cannot read config {path}: while scanning"),
    ("two documents", "model: a\n---\nmodel: b\n", "cannot read config {path}: expected a single document"),
    ("a python tag running os.system", "train: !!python/object/apply:os.system ['touch {flag}']\n",
     "cannot read config {path}: could not determine a constructor for the tag"),
    ("binary", b"\xff\xfe\x00\x01model", "cannot read config {path}: it is not UTF-8 text (invalid start byte at byte 0)"),
    ("a folder", None, "cannot read config {path}: [Errno 21] Is a directory"),
    ("a non-string key", "1: 2\n", "invalid config:\n  1: Keys should be strings"),
    ("a group given a value", "train: 5\n", "train: Input should be a valid dictionary or instance of TrainConfig (got 5)"),
]


@pytest.mark.parametrize("content,expected", [c[1:] for c in YAML_CASES], ids=[c[0] for c in YAML_CASES])
def test_bad_config_file_is_refused_naming_it(cli, capsys, tmp_path, content, expected):
    path, flag, root = tmp_path / "my config.yaml", tmp_path / "pwned", tmp_path / "root"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content.format(flag=flag))
    with pytest.raises(ConfigError):  # checked first: a valid config would go on and run
        load_config(LOADED["train"][1], str(path), [])
    assert cli(["run", "train", "--config", str(path), "--data-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("regularity: error: ") and expected.format(path=path) in err, err
    assert written(root) == [] and not flag.exists()


@pytest.mark.parametrize("assignment,expected", [
    ("train..lr=0.1", "--set 'train..lr=0.1': the key 'train..lr' has an empty name between dots"),
    (".lr=0.1", "--set '.lr=0.1': the key '.lr' has an empty name between dots"),
    ("train.=0.1", "--set 'train.=0.1': the key 'train.' has an empty name between dots"),
    ("=0.1", "--set '=0.1': expected KEY=VALUE"),
    ("model=!!python/object/apply:os.system ['touch {flag}']", "the value is not valid YAML (ConstructorError)"),
    ("train=5", "train: Input should be a valid dictionary or instance of TrainConfig (got 5)"),
    ("train.lr.x=1", "--set 'train.lr.x=1': 'lr' is a value, not a group of settings"),
])
def test_bad_set_is_refused_naming_it(cli, capsys, tmp_path, assignment, expected):
    flag, root = tmp_path / "pwned", tmp_path / "root"
    assignments = ["train.lr=0.5", assignment.format(flag=flag)]
    with pytest.raises(ConfigError):  # checked first: a valid config would go on and run
        load_config(LOADED["train"][1], None, assignments)
    assert cli(["run", "train", "--set", assignments[0], "--set", assignments[1], "--data-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert expected.format(flag=flag) in err, err
    assert written(root) == [] and not flag.exists()


# ==================================================================== 5. paths out of the data root
# Table names inside a run folder (`RunStore._file`): tests/test_store.py refuses `..`, absolute names and "."
@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """A data root holding one (fake) cscore run, the default one; and a folder of other files beside it."""
    root = tmp_path / "root"
    run = root / "runs" / "cscore" / "cscore-aaaaaaaaaaaa"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"flow": "cscore", "run_id": run.name, "config": {}}))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "passwd").write_text("root:x:0:0\n")
    monkeypatch.setenv("REGULARITY_DATA_ROOT", str(root))
    monkeypatch.chdir(root / "runs")  # relative escapes stay inside tmp_path
    return root


def runs_unchanged(root: Path) -> None:
    """The data root still holds only its one run."""
    assert written(root / "runs") == ["cscore", "cscore/cscore-aaaaaaaaaaaa", "cscore/cscore-aaaaaaaaaaaa/config.json"]


@pytest.mark.parametrize("run_id", ["../../other", "{tmp}/other", "cscore-aaaaaaaaaaaa/../../../other", "cscore-../../x", ""])
def test_show_refuses_a_run_id_that_is_not_a_run(cli, capsys, data_root, run_id):
    run_id = run_id.format(tmp=data_root.parent)
    assert cli(["show", run_id, "--data-root", str(data_root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"regularity: error: {run_id!r} is not a run id or the start of one: those read "
                          "<flow>-<12 hex digits>"), err
    runs_unchanged(data_root)


def flow_settings(flow: str, **extra) -> dict:
    """A config of `flow` on a small digits set that gets as far as reading its upstream run."""
    small = {"dataset": {"name": "digits", "n_train": 300}, "train": {"epochs": 2, "batch_size": 32}}
    return {"proxies": {**small, "cleanlab_folds": 0}, "filter_retrain": small, "scaling_law": {}}[flow] | extra


@pytest.mark.parametrize("flow,field,value,expected", [
    ("proxies", "cscore_run", "../../other", "'../../other' is not a run id"),
    ("proxies", "cscore_run", "{tmp}/other/cscore-aaaaaaaaaaaa", "'{tmp}/other/cscore-aaaaaaaaaaaa' is not a run id"),
    ("proxies", "cscore_run", "cscore-aaaaaaaaaaaa/../../..", "'cscore-aaaaaaaaaaaa/../../..' is not a run id"),
    ("scaling_law", "prune_run", "{tmp}/other", "'{tmp}/other' is not a run id"),
    ("scaling_law", "prune_run", "../../prune_grid-aaaaaaaaaaaa", "'../../prune_grid-aaaaaaaaaaaa' is not a run id"),
    ("filter_retrain", "scores", "../../other", "scores='../../other' is neither a file nor a run id of cscore, proxies"),
    ("filter_retrain", "scores", "{tmp}/other", "scores='{tmp}/other' is neither a file nor a run id of cscore, proxies"),
    ("filter_retrain", "scores", "cscore-../../other", "'cscore-../../other' is not a run id"),
    ("filter_retrain", "scores", "{tmp}/other/passwd", "Could not open Parquet input source '{tmp}/other/passwd'"),
])
def test_upstream_run_outside_the_data_root_is_refused(data_root, flow, field, value, expected):
    tmp = data_root.parent
    flow_fn, config_class = LOADED[flow]
    config = config_class.model_validate(flow_settings(flow, **{field: value.format(tmp=tmp)}))
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(expected.format(root=data_root, tmp=tmp))):
        flow_fn.fn(config, data_root=str(data_root))
    runs_unchanged(data_root)
    assert sorted(os.listdir(tmp / "other")) == ["passwd"]


def plant_run(folder: Path, flow: str, table: str) -> Path:
    """A folder that looks like a finished run of `flow` (config.json and a readable `table`), anywhere."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"flow": flow, "run_id": folder.name, "config": {}}))
    pd.DataFrame({"example_id": [0]}).to_parquet(folder / table)
    return folder


@pytest.mark.parametrize("how", ["absolute", "dotdot"])
@pytest.mark.parametrize("field,flow,table", [("cscore_run", "cscore", "cscores.parquet"),
                                              ("prune_run", "prune_grid", "prune_errors.parquet"),
                                              ("scores", "proxies", "proxies.parquet")])
def test_planted_run_outside_the_data_root_is_not_read(data_root, field, flow, table, how):
    outside = plant_run(data_root.parent / "elsewhere" / f"{flow}-bbbbbbbbbbbb", flow, table)
    if how == "absolute":
        run_id = str(outside)
    else:  # from <root>/runs/<flow>/: up to tmp_path, then down into the planted folder
        (data_root.parent / "elsewhere" / flow).mkdir()  # the folder the lexical <flow> part passes through
        run_id = f"../../elsewhere/{outside.name}"
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(repr(run_id))):
        upstream_table(field, run_id, {flow: table}, str(data_root))


def test_show_does_not_read_a_planted_run_outside_the_data_root(cli, capsys, data_root):
    outside = plant_run(data_root.parent / "elsewhere" / "cscore-bbbbbbbbbbbb", "cscore", "cscores.parquet")
    assert cli(["show", str(outside), "--data-root", str(data_root)]) == 2


# ---- data_root from a deployment's parameters (flows/common.py checked_data_root)
@pytest.mark.parametrize("value,why", [
    ("{tmp}/other", "it is an existing folder of other files (1 entries, no runs/ or cache/)"),
    ("{tmp}/other/passwd", "it is a file, not a folder"),
    ("{tmp}/link-to-other", "it is an existing folder of other files"),
    ("../../x", "not an absolute path"),
    ("relative/data", "not an absolute path"),
    ("~/data", "not an absolute path"),
    ("{tmp}/root/../other", "it has a '..' component"),
    ("{tmp}/root/../../../../x", "it has a '..' component"),
    ("{tmp}/root/runs/..", "it has a '..' component"),  # even when it would land inside
])
def test_deployment_data_root_outside_is_refused(data_root, value, why):
    tmp = data_root.parent
    (tmp / "link-to-other").symlink_to(tmp / "other")
    value = value.format(tmp=tmp)
    with pytest.raises(ValueError, match=re.escape(f"data_root={value!r} is refused: {why}")) as refused:
        checked_data_root(value, from_deployment=True)
    assert f"default data root {data_root}" in str(refused.value)
    assert written(tmp / "other") == ["passwd"] and not (tmp / "x").exists()
    runs_unchanged(data_root)


@pytest.mark.parametrize("value", ["{tmp}/new/data", "{tmp}/empty", "{tmp}/root", "{tmp}/root/sub/new",
                                   "{tmp}/old-root"])
def test_deployment_data_root_that_is_ours_is_accepted(data_root, value):
    tmp = data_root.parent
    (tmp / "empty").mkdir()
    (tmp / "old-root" / "cache").mkdir(parents=True)  # an earlier data root
    (tmp / "old-root" / "notes.txt").write_text("mine")
    value = value.format(tmp=tmp)
    assert checked_data_root(value, from_deployment=True) == value
    assert not (tmp / "new").exists()  # checking creates nothing


@pytest.mark.parametrize("value", ["{tmp}/other", "../../x", "relative/data", "~/data"])
def test_data_root_chosen_on_this_machine_is_the_users(data_root, value):
    value = value.format(tmp=data_root.parent)  # an existing folder of other files: refused only from a deployment
    assert checked_data_root(value, from_deployment=False) == value  # the CLI passes --data-root resolved
    assert checked_data_root(value) == value  # outside a flow run: a direct call


def test_blank_data_root_means_the_default():
    assert checked_data_root(None, from_deployment=True) is None
    assert checked_data_root("", from_deployment=True) is None and checked_data_root("  ") is None


def test_a_deployment_run_is_recognised_from_its_context(data_root, monkeypatch):
    from prefect.context import FlowRunContext

    run = SimpleNamespace(flow_run=SimpleNamespace(deployment_id="a-deployment"))
    monkeypatch.setattr(FlowRunContext, "get", classmethod(lambda cls: run))
    other = str(data_root.parent / "other")
    with pytest.raises(ValueError, match=re.escape(f"data_root={other!r} is refused")):
        checked_data_root(other)
    run.flow_run.deployment_id = None  # a flow run started directly (CLI, Python)
    assert checked_data_root(other) == other


# each flow's registry entry names a config that fails a check of its own soon after the flow starts
# (`FlowEntry.early_failure`), so that a flow that does not call the guard yet stops before it writes anything
EARLY_FAILURE = {name: entry.early_failure for name, entry in FLOWS.items()}


@pytest.mark.parametrize("flow", list(EARLY_FAILURE))
@pytest.mark.parametrize("value", ["{tmp}/other", "../../x"])
def test_flow_started_from_a_deployment_refuses_a_data_root_outside(data_root, monkeypatch, flow, value):
    assert set(EARLY_FAILURE) == set(FLOWS)
    monkeypatch.setattr(common, "_started_from_deployment", lambda: True)
    flow_fn, config_class = LOADED[flow]
    tmp = data_root.parent
    with pytest.raises(ValueError, match=r"data_root=.* is refused"):
        flow_fn.fn(config_class.model_validate(EARLY_FAILURE[flow]), data_root=value.format(tmp=tmp))
    assert written(tmp / "other") == ["passwd"] and not (tmp / "x").exists()
