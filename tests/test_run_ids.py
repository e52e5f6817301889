"""Run ids do not move: the shipped configs and every flow's default keep the ids they had at revision 021bb1d, and a
setting marked ADDED_SETTING enters the id only once it leaves its default. Config forms render every description."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import pytest

from core.config import ADDED_SETTING, Config, canonical_json, run_id
from core.runs.store import RunStore
from flows.config_files import load_config
from flows.registry import FLOWS

CONFIGS = Path(__file__).resolve().parents[1] / "flows" / "configs"
# computed at revision 021bb1d, before DatasetConfig.noisy_ids existed
PINNED = {
    "train": "train-d11da41d74a9", "cscore": "cscore-9a2ee294e685", "proxies": "proxies-7af82a9fac38",
    "filter_retrain": "filter_retrain-0f512e969071", "prune_grid": "prune_grid-a018cfdac5aa",
    "scaling_law": "scaling_law-cc1d4c00a127", "card": "card-478e97779493",  # issue 30: the data card (new)
    "weight_correlation": "weight_correlation-185f5ea79596",  # issue 29: R_p by the paper's Eq. 1
    "dct_sparse": "dct_sparse-ab3c1f22650a",  # issue 29: SNIP, GraSP and SynFlow masks beside the random ones
    "deq": "deq-8312697a832f",  # issue 28: the default experiment gained the explicit baselines
    "subspaces": "subspaces-628efb63a7a8",  # issue 28: SWA, a validation split, the authors' schedule
    "lime_data": "lime_data-08334ba4ebcb",  # issue 31: the header lists the rule symbols used, as the authors'
    "lime_pretrain": "lime_pretrain-39e3efe3b385",  # issue 31: the setting a CPU learns, 7 arms, 2 downstream tasks
    "cscore-fashion-noisy.yaml": "cscore-844a2a3f3dde", "cscore-mnist1d.yaml": "cscore-60cca1d50bed",
    "cscore.yaml": "cscore-8e05a0a52f90",
    "dct-sparse-fashion.yaml": "dct_sparse-4a44855b6029",  # issue 29: as the default
    "dct-sparse-fashion-cnn.yaml": "dct_sparse-ea384e2d5167",  # issue 29: a BatchNorm CNN on Fashion-MNIST (new)
    "deq-synthetic.yaml": "deq-5f39085ac39f",  # issue 28: the default experiment gained the explicit baselines
    "deq-fashion-conv.yaml": "deq-d431c0df3b76",  # issue 28: the conv DEQ on Fashion-MNIST (a new config)
    "lime-pretrain-gpu.yaml": "lime_pretrain-3a775c800dae",  # issue 31: bucketing, 2 downstream tasks
    "lime-pretrain-paper-ranges.yaml": "lime_pretrain-e94437d0278e",  # issue 31: the default before (new file)
    "proxies-fashion-noisy.yaml": "proxies-194874d5afef", "prune-mnist1d-cnn-gpu.yaml": "prune_grid-1d5ee09af5d3",
    "prune-mnist1d-cnn.yaml": "prune_grid-d0e74fa5be1e", "prune-mnist1d.yaml": "prune_grid-a018cfdac5aa",
    "prune-mnist1d-data.yaml": "prune_grid-2a88b076a1f7",  # the law across 4 data fractions and widths 16-128 (new)
    "subspaces-mnist1d-cnn.yaml": "subspaces-dff9d8481927",  # issue 28: SWA, validation split, authors' schedule
    "subspaces-fashion-cnn.yaml": "subspaces-8728d285ba16",  # issue 28: the BatchNorm CNN on Fashion-MNIST, 5 seeds
    "train.yaml": "train-65eabe7363c0",
    "weight-correlation-fashion.yaml": "weight_correlation-9e4ea17c876b",  # issue 29: R_p by Eq. 1
    "weight-correlation-mnist1d-cnn.yaml": "weight_correlation-b19be1186c44",  # issue 29: a well-trained 1-D CNN (new)
    "weight-correlation-fashion-cnn-gpu.yaml": "weight_correlation-cda4846b5410",  # issue 29: for a GPU (new)
}


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_every_flow_default_keeps_its_run_id(flow):
    assert run_id(flow, FLOWS[flow].config_class()()) == PINNED[flow]


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_keeps_its_run_id(name):
    flow = PINNED[name].rsplit("-", 1)[0]
    assert run_id(flow, load_config(FLOWS[flow].config_class(), str(CONFIGS / name), [], flow)) == PINNED[name]


class Group(Config):
    size: int = 3
    added: Annotated[str | None, ADDED_SETTING] = None


class Before(Config):
    """A config as it was before `Group.added` and `extra` existed."""

    seed: int = 0
    group: dict = {"size": 3}


class After(Config):
    seed: int = 0
    group: Group = Group()
    extra: Annotated[list[int], ADDED_SETTING] = [1, 2]


def test_added_settings_at_their_defaults_leave_the_run_id_as_it_was():
    assert canonical_json(After()) == canonical_json(Before()) == '{"group":{"size":3},"seed":0}'
    assert run_id("toy", After()) == run_id("toy", Before())
    assert After().model_dump()["group"]["added"] is None  # still in every dump, form and config.json
    changed = {run_id("toy", config) for config in (After(group=Group(added="x")), After(extra=[1]), After())}
    assert len(changed) == 3
    assert canonical_json(After(extra=[1])) == '{"extra":[1],"group":{"size":3},"seed":0}'


def test_a_run_folder_of_either_revision_reopens(tmp_path):
    store = RunStore.open("toy", After(), tmp_path)
    assert json.loads((store.root / "config.json").read_text())["config"]["group"]["added"] is None
    assert RunStore.open("toy", After(), tmp_path).root == store.root  # config.json with the added setting
    before = json.loads((store.root / "config.json").read_text())
    before["config"] = {"seed": 0, "group": {"size": 3}}  # as written before the setting was added
    (store.root / "config.json").write_text(json.dumps(before))
    assert RunStore.open("toy", After(), tmp_path).root == store.root


TAG = re.compile(r"<[A-Za-z/!?]")  # a form renders descriptions as HTML: `<class>` would vanish


def descriptions(node, where=""):
    """(place, text) of every description in a JSON schema."""
    if isinstance(node, dict):
        if isinstance(node.get("description"), str):
            yield where, node["description"]
        for key, value in node.items():
            yield from descriptions(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from descriptions(value, f"{where}[{i}]")


def test_no_description_holds_what_a_form_would_read_as_an_html_tag():
    found = [(flow + where, text) for flow, entry in FLOWS.items()
             for where, text in descriptions(entry.config_class().model_json_schema()) if TAG.search(text)]
    assert found == []
    assert "train/CLASS_NAME/" in FLOWS["cscore"].config_class().model_json_schema()["$defs"]["DatasetConfig"][
        "properties"]["path"]["description"]
