"""Models from other packages (`regularity.models` entry points): found by name only, built and checked, part of the run
id with their package's version, trained on the stacked path or through vmap, and through the cscore flow exactly as
one by one. The packages are written at test time: a module and a dist-info folder on sys.path, no pip."""
import contextlib
import importlib
import json
import logging
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from core.config import derive_seed, run_id
from core.data.config import DatasetConfig
from core.data.datasets import load_dataset
from core.models.entry_points import load_factory, model_package
from core.models.names import ModelNameError, installed_models, parse_model_name
from core.models.networks import init_model
from core.runs.rows import unpack_bool_rows
from core.runs.store import RunStore
from core.training.config import TrainConfig
from core.training.ensemble import Ensemble, training_path
from core.training.experiment import INIT_STREAM, ORDER_STREAM
from core.training.trainer import train
from flows.cscore import CScoreFlowConfig, cscore_flow
from reference import assert_same_weights, train_one_by_one

MODULE = "regularity_test_models"
SOURCE = '''
import math
from torch import nn

def small_cnn(input_shape, num_classes):
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * (h // 2) * (w // 2), num_classes))

class Wrapped(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.body = small_cnn(input_shape, num_classes)

    def forward(self, x):
        return self.body(x)

def small_cnn_module(input_shape, num_classes):
    return Wrapped(input_shape, num_classes)

def not_a_module(input_shape, num_classes):
    return "a network"

def wrong_logits(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes + 1))
'''
MODELS = {name: f"{MODULE}:{name}" for name in ("small_cnn", "small_cnn_module", "not_a_module", "wrong_logits")}
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "regularity-example-model"


@contextlib.contextmanager
def installed(folder: Path, dist: str = "test-models", version: str = "1.0", models: dict[str, str] = MODELS):
    """A package `dist` of `version` registering `models` (name -> module:factory), importable while inside."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{MODULE}.py").write_text(SOURCE)
    info = folder / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[regularity.models]\n" + "".join(f"{n} = {v}\n" for n, v in models.items()))
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(MODULE, None)
        importlib.invalidate_caches()


@pytest.fixture
def package(tmp_path):
    with installed(tmp_path / "site"):
        yield


def test_installed_names_parse_without_importing_the_package(package):
    assert set(installed_models()) == set(MODELS)
    spec = parse_model_name("small_cnn")
    assert (spec.family, spec.package) == ("entry_point", "test-models==1.0")
    assert MODULE not in sys.modules  # metadata only
    assert parse_model_name("mlp_w8_d1").package == ""  # a registry name is never looked up


def test_unknown_name_lists_the_installed_models(package):
    with pytest.raises(ModelNameError, match=r"(?s)unknown model 'vgg16'.*mlp_w\{width\}_d\{depth\}.*entry-point group "
                                             r"regularity.models: small_cnn \(test-models==1.0\), small_cnn_module"):
        parse_model_name("vgg16")


def test_an_import_path_is_no_model_name(package):
    for path in (f"{MODULE}:small_cnn", "os:system", "../x"):
        refusal = f"(?s)unknown model '{path}'.*is not a model name: a config never names code to import"
        with pytest.raises(ValidationError, match=refusal):
            CScoreFlowConfig(model=path)
    assert CScoreFlowConfig(model="small_cnn").model == "small_cnn"
    with pytest.raises(ModelNameError, match=r"is not a model name"):
        init_model(f"{MODULE}:small_cnn", (1, 8, 8), 10, 0)
    with pytest.raises(ModelNameError, match=r"'regularity_test_models:small_cnn' is no installed entry-point model"):
        load_factory(f"{MODULE}:small_cnn")
    assert MODULE not in sys.modules


@pytest.mark.parametrize("models,error", [
    ({"mlp_w8_d1": f"{MODULE}:small_cnn"}, r"test-models==1.0 registers model 'mlp_w8_d1' .*which is a registry name"),
    ({"dct_cnn_w4_d2": f"{MODULE}:small_cnn"}, r"'dct_cnn_w4_d2' .*which is a registry name"),
    ({"pkg.mod:factory": f"{MODULE}:small_cnn"}, r"registers model 'pkg.mod:factory' .*a model name is a letter"),
])
def test_a_name_the_registry_knows_or_an_import_path_is_refused(tmp_path, models, error):
    with installed(tmp_path, models=models), pytest.raises(ModelNameError, match=error):
        parse_model_name("anything_else")


def test_a_name_two_packages_register_names_both(tmp_path):
    both = r"model 'small_cnn' is registered under regularity.models by two packages, pkg-(a|b)==.\.0 and pkg-(a|b)=="
    with installed(tmp_path / "a", "pkg-a", "1.0"), installed(tmp_path / "b", "pkg-b", "2.0"), pytest.raises(
            ModelNameError, match=both + r".\.0; uninstall or rename one"):
        parse_model_name("small_cnn")


def test_init_is_seeded_like_a_registry_model_and_checked(package):
    a, b = (init_model("small_cnn", (1, 8, 8), 10, seed) for seed in (3, 3))
    assert_same_weights(a, b, atol=0)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        assert_same_weights(sys.modules[MODULE].small_cnn((1, 8, 8), 10), a, atol=0)
    with pytest.raises(ModelNameError, match=r"'not_a_module' of test-models==1.0: its factory returned a str"):
        init_model("not_a_module", (1, 8, 8), 10, 0)
    with pytest.raises(ModelNameError, match=r"'wrong_logits' of test-models==1.0 gives \[2, 11\] .*logits \[2, 10\]"):
        init_model("wrong_logits", (1, 8, 8), 10, 0)
    with pytest.raises(ModelNameError, match=r"'small_cnn' of test-models==1.0: its factory failed for input_shape "
                                             r"\(1, 40\)"):
        init_model("small_cnn", (1, 40), 10, 0)


def test_the_run_id_names_the_package_and_its_version(tmp_path):
    config = CScoreFlowConfig(model="mlp_w8_d1")
    assert model_package(config) == {} and RunStore.folder("cscore", config, tmp_path).name == run_id("cscore", config)
    ids = []
    for version in ("1.0", "1.1"):
        with installed(tmp_path / version, version=version):
            config = CScoreFlowConfig(model="small_cnn")
            assert model_package(config) == {"model_package": f"test-models=={version}"}
            ids.append(RunStore.folder("cscore", config, tmp_path).name)
    assert ids[0] != ids[1] and run_id("cscore", config) not in ids


@pytest.mark.parametrize("name,path", [("small_cnn", "stacked"), ("small_cnn_module", "vmap")])
def test_each_path_trains_as_one_by_one(package, name, path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 8, 8, generator=g), torch.randint(0, 10, (96,), generator=g)
    subsets, config = torch.ones(2, 96, dtype=torch.bool), TrainConfig(epochs=2, batch_size=32, lr=0.1)
    subsets[1, ::3] = False
    ensemble = Ensemble.init(name, (1, 8, 8), 10, [5, 6])
    assert training_path(ensemble.template) == path and ensemble.stacked == (path == "stacked")
    train(ensemble, x, y, subsets, [7, 8], config)
    for k, (seed, order) in enumerate([(5, 7), (6, 8)]):
        alone, _ = train_one_by_one(init_model(name, (1, 8, 8), 10, seed), x, y, subsets[k].nonzero().squeeze(1),
                                    order, config)
        assert_same_weights(ensemble.model(k), alone)


def test_the_example_package_registers_both_paths():
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    entry_points = project["entry-points"]["regularity.models"]
    sys.path.insert(0, str(EXAMPLE))
    try:
        module = importlib.import_module("regularity_example_model")
        for name, path in (("tiny_cnn", "stacked"), ("tiny_cnn_module", "vmap")):
            assert entry_points[name] == f"regularity_example_model:{name}"
            network = getattr(module, name)((1, 28, 28), 10)
            assert network(torch.zeros(2, 1, 28, 28)).shape == (2, 10) and training_path(network) == path
    finally:
        sys.path.remove(str(EXAMPLE))
        sys.modules.pop("regularity_example_model", None)


CONFIG = CScoreFlowConfig(dataset=DatasetConfig(name="digits", n_train=160, n_test=60), ratios=[0.5], runs_per_ratio=2,
                          train=TrainConfig(epochs=2, batch_size=32, lr=0.05), shard_size=2, model="mlp_w8_d1")


@pytest.fixture(scope="module", params=[("small_cnn", "stacked path"), ("small_cnn_module", "vmap fallback")])
def flow_run(request, tmp_path_factory, prefect_harness):
    """A cscore run of an entry-point model, its runs table and the lines it logged."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("prefect").addHandler(handler)
    name, path = request.param
    try:
        with installed(tmp_path_factory.mktemp("site")):
            config = CONFIG.model_copy(update={"model": name})
            folder = Path(cscore_flow(config, data_root=str(tmp_path_factory.mktemp("data"))))
    finally:
        logging.getLogger("prefect").removeHandler(handler)
    return name, path, folder, pd.read_parquet(folder / "runs.parquet"), lines


def test_the_flow_logs_the_path_and_records_the_package(flow_run):
    name, path, folder, _, lines = flow_run
    said = f"model {name} (entry point of test-models==1.0) trains on the {path}"
    assert any(line.startswith(said) for line in lines)
    assert json.loads((folder / "config.json").read_text())["inputs"] == {"model_package": "test-models==1.0"}
    provenance = pq.read_schema(folder / "runs.parquet").metadata
    assert json.loads(next(v for k, v in provenance.items() if k.endswith(b"inputs"))) == {
        "model_package": "test-models==1.0"}


def factory(name: str):
    """The test package's factory `name`, from its source, without any entry point."""
    namespace: dict = {}
    exec(SOURCE, namespace)
    return namespace[name]


def assert_same_outcomes(stored: np.ndarray, logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Stored correctness equals the logits' wherever the top two logits are not a near tie (which another summation
    order may break the other way)."""
    top2 = logits.topk(2, 1).values
    clear = (top2[:, 0] - top2[:, 1]).numpy() > 1e-4
    assert clear.mean() > 0.95 and (stored == (logits.argmax(1) == labels).numpy())[clear].all()


def test_the_flow_trains_each_model_as_one_by_one(flow_run):
    """Each row's model, trained alone (the factory called after seeding torch with its init seed, torch.optim.SGD
    over its subset in its order), classifies every example alike and has the same test loss."""
    name, _, _, runs, _ = flow_run
    data = load_dataset(CONFIG.dataset)
    in_subset = unpack_bool_rows(runs["in_subset"])
    for row, seed in enumerate(runs["seed"]):
        with torch.random.fork_rng():
            torch.manual_seed(derive_seed(seed, INIT_STREAM))
            model = factory(name)(data.input_shape, 10)
        members = torch.from_numpy(np.flatnonzero(in_subset[row]))
        alone, _ = train_one_by_one(model, data.x_train, data.y_train, members, derive_seed(seed, ORDER_STREAM),
                                    CONFIG.train)
        with torch.no_grad():
            logits, test_logits = alone(data.x_train), alone(data.x_test)
        assert runs["test_loss"][row] == pytest.approx(F.cross_entropy(test_logits, data.y_test).item(), rel=1e-5)
        assert_same_outcomes(unpack_bool_rows(runs["train_correct"])[row], logits, data.y_train)
        assert_same_outcomes(unpack_bool_rows(runs["test_correct"])[row], test_logits, data.y_test)
