"""`subspaces` flow: lines, curves and simplexes of networks trained in one run each, against standard training.

Wortsman, Horton, Guestrin, Farhadi and Rastegari, "Learning Neural Network Subspaces" (ICML 2021). A subspace
model holds m endpoint networks, each initialised independently; every step it trains the network at a point drawn
from its own generator (uniform on a line, on a quadratic Bezier curve with a trained control point, or on a
simplex; one draw for the network or one per layer), plus beta cos^2 between two random endpoints. Standard training
of the plain network for as many epochs is the baseline; standard ensembles of as many members as a subspace has
ends are the ensembles' baseline. SWA (Izmailov et al. 2018), the baseline the paper claims to outperform, is
standard training of the same seeds whose weights are averaged once an epoch from 75% of the epochs on, at a
constant lr, with BatchNorm statistics recomputed for the average. Every method trains once per seed at each
label-noise level, on the training set less a validation split held out with the same label noise, and is evaluated
after every epoch (its model, SWA's average, a subspace's midpoint) on that split and on the test set, then along its
path (alpha in [0, 1]), at its midpoint and at its ends, with BatchNorm statistics recomputed from the examples trained
on at each point evaluated; each arm is reported at its last epoch and at its best validation epoch (early-stopped).
The claim to check: the midpoint beats standard training in accuracy and calibration, more so under label noise, and
beats SWA.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

from prefect import flow
from pydantic import Field, field_validator, model_validator

from core.config import ADDED_SETTING, Config, RuntimeConfig
from core.data.config import DatasetConfig
from core.models.names import METHODS, STANDARD, SWA
from core.training.config import TrainConfig
from flows.common import check_whole_set_fits, checked_data_root, distinct_values, plain_stackable_model

FLOW = "subspaces"
Method = Literal[(*METHODS, SWA)]


class SubspacesFlowConfig(Config):
    """Subspaces of one network (lines, curves, simplexes) against standard training, at levels of label noise."""

    dataset: DatasetConfig = Field(DatasetConfig(name="mnist1d"), description="what to train on; leave its label_noise "
                                   "at 0: the flow's own label_noise list sweeps it")
    model: str = Field("mlp_w128_d2", description="registry name of the plain network (the methods build "
                       "subspace{m}_{model}): mlp_w128_d2, cnn1d_bn_w32_d2 (BatchNorm), cnn_bn_w16_d2, lenet_300_100")
    methods: list[Method] = Field(["line", "layerwise_line", "curve", "simplex3", "simplex4", SWA], min_length=1,
                                  validate_default=True,  # sorted like a given list: one set, one run id
                                  description="subspaces to train: a line (2 endpoints), a quadratic Bezier curve (2 "
                                  "ends and a trained control point), a simplex of 3 or 4 endpoints; layerwise_ draws "
                                  "one point per layer instead of one for the network; swa: standard training with "
                                  "its weights averaged (SWA, the paper's baseline). Standard training always runs")
    label_noise: list[float] = Field([0.0, 0.2, 0.4], min_length=1, description="fractions of training labels "
                                     "replaced by a wrong class (dataset.noise_kind); every method trains at each")
    seeds: list[int] = Field([0, 1, 2, 3, 4], min_length=1, description="seed indices; every method and noise level "
                             "trains once per seed (standard: as many members as the largest ensemble compared)")
    swa_start: Annotated[float, ADDED_SETTING] = Field(0.75, gt=0, lt=1, description="swa: the fraction of the "
                                                       "epochs after which the lr holds at swa_lr and the weights are "
                                                       "averaged once an epoch (the SWA paper's 75%)")
    swa_lr: Annotated[float, ADDED_SETTING] = Field(0.05, gt=0, description="swa: the constant lr from swa_start on "
                                                    "(the SWA paper's 0.05 for a peak lr of 0.1)")
    validation_fraction: float = Field(0.1, gt=0, lt=1, description="fraction of the training set held out as a "
                                       "validation split (with the training labels' noise, as a user's own would "
                                       "be), the same examples for every method, seed and noise level: every arm is "
                                       "evaluated on it after each epoch and reported at its best validation epoch")
    beta: float = Field(1.0, ge=0.0, description="weight of the cos^2 regulariser between two random endpoints "
                        "(the paper's default 1; 0 turns it off)")
    alpha_points: int = Field(21, ge=2, le=201, description="points evaluated along each path, alpha evenly from 0 to "
                              "1 (21: steps of 0.05)")
    train: TrainConfig = Field(
        TrainConfig(epochs=80, batch_size=128, lr=0.1, weight_decay=1e-4, schedule="epoch_cosine", warmup_epochs=5),
        description="optimiser and schedule of every method, standard training included: the authors' (apple/"
                    "learning-subspaces: lr 0.1 held per epoch, 5 warm-up epochs then cosine to 0, weight decay 1e-4, "
                    "batch 128) at 80 epochs; schedule linear, warmup_epochs 0 and weight_decay 5e-4 is what this flow "
                    "used before (docs/subspaces.md measures both)")
    seed: int = Field(0, ge=0, description="run seed: model seeds, batch orders and subspace draws derive from it")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="execution settings; not part of the run id")

    @field_validator("model")
    @classmethod
    def _plain_stackable_model(cls, name: str) -> str:
        return plain_stackable_model(name, "each method builds its subspace network (subspace<m>_<model>) from it")

    @field_validator("methods", "label_noise", "seeds")
    @classmethod
    def _distinct_and_sorted(cls, values: list, info) -> list:
        return distinct_values(values, *SWEEP_LISTS[info.field_name])

    @model_validator(mode="after")
    def _noise_is_swept_here(self) -> "SubspacesFlowConfig":
        if self.dataset.label_noise:
            raise ValueError(f"dataset.label_noise={self.dataset.label_noise}: this flow sweeps label noise itself; "
                             "leave it at 0 and list the levels in label_noise")
        if not set(self.methods) & set(METHODS):
            raise ValueError(f"methods={self.methods}: swa is a baseline; list at least one subspace ("
                             f"{', '.join(METHODS)})")
        return self

    def swa_train(self) -> TrainConfig:
        """`train` with the lr held at swa_lr from the epoch swa_start falls in (SWA's schedule)."""
        start = math.floor(round(self.swa_start * self.train.epochs, 9))
        return self.train.model_copy(update={"swa_start": start, "swa_lr": self.swa_lr})


SWEEP_LISTS = {
    "methods": (lambda v: True, "distinct methods"),
    "label_noise": (lambda v: 0 <= v < 1, "distinct fractions in [0, 1)"),
    "seeds": (lambda v: v >= 0, "distinct non-negative integers (a repeated seed repeats rows)"),
}


def check_sweep(config: SubspacesFlowConfig, dataset) -> None:
    """Fail before any work when a network does not fit the data, the validation split holds out none or all, or a
    batch is larger than the examples left to train on."""
    from core.methods.subspace_epochs import validation_split

    for m in sorted({1, *(METHODS[method][1] for method in config.methods if method in METHODS)}):
        name = config.model if m == 1 else f"subspace{m}_{config.model}"
        check_whole_set_fits(name, config.train.batch_size, dataset)
    trained_on = dataset.n_train - int(validation_split(dataset.n_train, config.validation_fraction,
                                                        config.dataset.seed).sum())
    if trained_on < config.train.batch_size:
        raise ValueError(f"train.batch_size={config.train.batch_size} is larger than the {trained_on} training "
                         f"examples left after validation_fraction={config.validation_fraction}; lower either")


@flow(name=FLOW, description="Lines, curves and simplexes of networks against standard training: accuracy and "
                             "calibration along each subspace, at its midpoint and of its ends' ensemble, under label noise.")
def subspaces_flow(config: SubspacesFlowConfig = SubspacesFlowConfig(), data_root: str | None = None) -> str:
    """Run (or resume) the comparison of `config`; returns the run folder."""
    import pandas as pd

    from core.methods.subspaces import gains_over_standard, subspace_cost_findings, subspaces_findings
    from core.plots.subspaces import accuracy_by_epoch, gains_over_standard_bars, subspace_paths
    from core.runs.files import dataset_cache
    from core.runs.store import RunStore
    from flows.common import run_scope
    from flows.report import publish
    from flows.runner import configure_runtime, run_shards
    from tasks.common import combine_shards, shared_dataset
    from tasks.subspaces import ALPHA_SHARDS, EPOCH_SHARDS, SUMMARY_SHARDS, train_method

    data_root = checked_data_root(data_root)  # a deployment parameter may not point outside
    configure_runtime(config.runtime)
    dataset = shared_dataset(config.dataset, dataset_cache(data_root))
    check_sweep(config, dataset)
    store = RunStore.open(FLOW, config, data_root, inputs={"dataset": dataset.fingerprint})
    plan = [{"store": store, "method": method, "noise": noise}
            for noise in config.label_noise for method in [STANDARD, *config.methods]]
    shards = run_shards(train_method, plan, config.runtime, "methods x noise levels")
    keys = [("method", "ascending"), ("noise", "ascending"), ("seed", "ascending")]
    written = [name for names in shards for name in names]
    combine_shards(store, [n for n in written if n.startswith(ALPHA_SHARDS)], "subspace_alpha.parquet",
                   [keys[0], keys[1], ("alpha", "ascending"), keys[2]])
    combine_shards(store, [n for n in written if n.startswith(EPOCH_SHARDS)], "subspace_epochs.parquet",
                   [*keys, ("epoch", "ascending"), ("point", "ascending")])
    combine_shards(store, [n for n in written if n.startswith(SUMMARY_SHARDS)], "subspace_summary.parquet",
                   [*keys[:2], ("point", "ascending"), ("members", "ascending"), keys[2]])
    alpha, summary = store.read_table("subspace_alpha.parquet"), store.read_table("subspace_summary.parquet")
    epochs = store.read_table("subspace_epochs.parquet")
    gains = gains_over_standard(summary)
    folder, scope = store.root / "figures", run_scope(config, dataset)
    figures = store.figures(lambda: [subspace_paths(alpha, summary, folder / "accuracy_along_subspace.png"),
                                     gains_over_standard_bars(gains, folder / "gains_over_standard.png"),
                                     accuracy_by_epoch(epochs, folder / "accuracy_by_epoch.png")])
    publish(store, gains, figures, f"{config.model} on {config.dataset.name}: {', '.join(config.methods)} against "
            f"standard training at label noise {', '.join(f'{n:g}' for n in config.label_noise)} x "
            f"{len(config.seeds)} seeds", findings=pd.concat([subspaces_findings(summary, scope),
                                                             subspace_cost_findings(epochs, scope)], ignore_index=True))
    return str(store.root)
