"""`prune_grid` flow: iterative magnitude pruning with rewinding over width x depth x data-fraction grids.

Rosenfeld, Frankle, Carbin, Shavit, "On the Predictability of Pruning Across Scales" (ICML 2021).
Each network is trained dense (keeping its weights at the rewind step k), then at every level the
smallest-magnitude `prune_fraction` of its remaining prunable weights is removed, the survivors are
rewound to their values at step k and trained on from step k, as open_lth does: the same place in
the learning-rate schedule and the batch order, T - k updates. All seeds and data fractions of one
shape (and, with `pass_grouping: depth`, of every width of one depth) train together, level by level.
"""
from __future__ import annotations

import itertools
from typing import Literal

from prefect import flow
from pydantic import Field, ValidationInfo, field_validator

from core.config import Config, RuntimeConfig
from core.data.config import DatasetConfig
from core.training.config import TrainConfig
from flows.common import checked_data_root, distinct_values

FLOW = "prune_grid"


class PruningConfig(Config):
    """How much to prune per level, where to rewind to, and which weights compete."""

    levels: int = Field(25, ge=1, description="pruning rounds after the dense run; density after level L is (1 - f)^L")
    prune_fraction: float = Field(0.2, gt=0, lt=1, description="fraction f of the remaining prunable weights removed per level")
    rewind_step: int = Field(0, ge=0, description="SGD update the survivors are rewound to (0 = the initialisation)")
    scope: Literal["global", "layerwise"] = Field("global", description="rank magnitudes over all layers, or per layer")
    prune_output: bool = Field(False, description="whether the classifier's weights may be pruned")


class PruneGridFlowConfig(Config):
    """A grid of networks (family x widths x depths), data fractions and seeds, each pruned level by level."""

    dataset: DatasetConfig = Field(DatasetConfig(name="mnist1d"), description="what to train on")
    family: Literal["mlp", "cnn1d", "cnn"] = Field("mlp", description="model family; networks are {family}_w{width}_d{depth}")
    widths: list[int] = Field([32, 64, 128], min_length=1, description="widths (units or channels)")
    depths: list[int] = Field([1, 2, 3], min_length=1, description="depths (hidden or conv layers)")
    data_fractions: list[float] = Field([1.0], min_length=1, description="fractions of the training set, each in (0, 1]")
    seeds: list[int] = Field(list(range(16)), min_length=1, description="seed indices; each network is trained once per seed; "
                              "the law is fitted to their mean, and their spread is its noise floor")
    pruning: PruningConfig = Field(PruningConfig(), description="pruning schedule")
    train: TrainConfig = Field(TrainConfig(epochs=20, batch_size=128, lr=0.2), description="optimiser and schedule of every (re)training")
    seed: int = Field(0, ge=0, description="run seed: model seeds and data subsets derive from it")
    pass_grouping: Literal["shape", "depth"] = Field(
        "shape", description="what trains together in one vectorized pass: every data fraction and seed of one shape, "
        "or of every width of one depth (narrower networks nested in the widest; same results up to float rounding)")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="execution settings; not part of the run id")

    @field_validator("widths", "depths", "seeds", "data_fractions")
    @classmethod
    def _distinct_and_sorted(cls, values: list, info: ValidationInfo) -> list:
        return distinct_values(values, *GRID_LISTS[info.field_name])


# each grid list: which values it admits, and how the error says so
GRID_LISTS = {
    "widths": (lambda v: v >= 1, "distinct positive integers"),
    "depths": (lambda v: v >= 1, "distinct positive integers"),
    "seeds": (lambda v: v >= 0, "distinct non-negative integers (a repeated seed repeats rows)"),
    "data_fractions": (lambda v: 0 < v <= 1, "distinct fractions in (0, 1]"),
}


def networks(config: PruneGridFlowConfig) -> list[dict]:
    """One entry per shape: its name (the registry model name), width and depth."""
    return [{"network": f"{config.family}_w{w}_d{d}", "width": w, "depth": d}
            for w, d in itertools.product(config.widths, config.depths)]


def passes(config: PruneGridFlowConfig) -> list[list[dict]]:
    """The networks of each vectorized pass (each pass is one task), as `pass_grouping` asks."""
    if config.pass_grouping == "shape":
        return [[net] for net in networks(config)]
    return [[net for net in networks(config) if net["depth"] == depth] for depth in config.depths]


def pass_label(group: list[dict]) -> str:
    """A task-run label: the network, or `<family>_w<w1>-<w2>_d<depth>` for nested widths."""
    if len(group) == 1:
        return group[0]["network"]
    family = group[0]["network"].split("_w")[0]
    return f"{family}_w{'-'.join(str(net['width']) for net in group)}_d{group[0]['depth']}"


def check_grid(config: PruneGridFlowConfig, dataset) -> None:
    """Fail before any work when a network does not fit the data or the rewind step is past training."""
    from core.models.networks import init_model

    init_model(networks(config)[0]["network"], dataset.input_shape, dataset.num_classes, 0)
    smallest = round(config.data_fractions[0] * dataset.n_train)
    steps = config.train.epochs * (smallest // config.train.batch_size)
    if smallest < config.train.batch_size:
        raise ValueError(f"data_fractions={config.data_fractions[0]} gives {smallest} examples, fewer than "
                         f"train.batch_size={config.train.batch_size}")
    if config.pruning.rewind_step > steps:
        raise ValueError(f"pruning.rewind_step={config.pruning.rewind_step} is after the last update of the smallest "
                         f"data fraction ({steps} updates)")


@flow(name=FLOW, description="Iterative magnitude pruning with rewinding over width x depth x data-fraction grids.")
def prune_grid_flow(config: PruneGridFlowConfig = PruneGridFlowConfig(), data_root: str | None = None) -> str:
    """Run (or resume) the pruning grid of `config`; returns the run folder."""
    from core.methods.pruning import pruning_findings
    from core.plots.prune_grid import error_vs_density
    from core.runs.files import dataset_cache
    from core.runs.store import RunStore
    from flows.common import run_scope
    from flows.report import publish
    from flows.runner import configure_runtime, run_shards
    from tasks.common import combine_shards, shared_dataset
    from tasks.prune_grid import prune_networks

    data_root = checked_data_root(data_root)  # a deployment parameter may not point outside
    configure_runtime(config.runtime)
    dataset = shared_dataset(config.dataset, dataset_cache(data_root))
    check_grid(config, dataset)
    store = RunStore.open(FLOW, config, data_root, inputs={"dataset": dataset.fingerprint})
    plan = [{"store": store, "networks": group, "label": pass_label(group)} for group in passes(config)]
    tables = [name for names in run_shards(prune_networks, plan, config.runtime, "pruning passes") for name in names]
    combine_shards(store, tables, "prune_errors.parquet", [("network", "ascending"), ("data_fraction", "ascending"),
                                                           ("seed", "ascending"), ("level", "ascending")])
    errors = store.read_table("prune_errors.parquet")
    figures = store.figures(lambda: [error_vs_density(errors, store.root / "figures" / "error_vs_density.png")])
    summary = (errors.groupby(["network", "data_fraction", "level"])[["density", "test_error"]].mean().reset_index()
               .pivot_table(index="level", columns="network", values="test_error").reset_index())
    findings = pruning_findings(errors, scope=run_scope(config, dataset))
    publish(store, summary, figures, f"{len(networks(config))} networks x {len(config.data_fractions)} data fractions x "
            f"{len(config.seeds)} seeds, {config.pruning.levels} levels", findings=findings)
    return str(store.root)
