"""`weight_correlation` flow: is a lottery ticket a mark of under-training? A learning-rate sweep, R_p at each rate,
and four ways to train a pruned network at an equal budget of updates.

Liu et al., "Lottery Ticket Preserves Weight Correlation: Is It Desirable or Not?" (ICML 2021). Every base model
(one learning rate, one seed) trains dense for T updates; R_p measures how much of its top-p weights by magnitude
are where initialisation put them. Then round by round, each method prunes `prune_fraction` of its remaining
prunable weights by magnitude and trains the survivors for the same T updates of the same schedule and batch order:
  lottery_ticket  from the dense run's initialisation;
  rewind          from the dense run's weights after `pruning.rewind_step` updates (the schedule starts again, so the
                  budget stays equal; prune_grid's open_lth rewinding goes on from step k for T - k updates instead);
  fine_tune       from its own weights of the round before (pruning and fine-tuning);
  random_reinit   from a fresh initialisation, under the lottery ticket's mask (the control).
After round L every method has spent (L + 1) x T updates. All of it trains in one vectorized pass.
"""
from __future__ import annotations

from typing import Literal

from prefect import flow
from pydantic import Field, field_validator

from core.config import Config, RuntimeConfig
from core.data.config import DatasetConfig
from core.training.config import TrainConfig
from flows.common import check_whole_set_fits, checked_data_root, distinct_values, sgd_trainable_model
from flows.prune_grid import PruningConfig

FLOW = "weight_correlation"


class WeightCorrelationFlowConfig(Config):
    """A learning-rate sweep of one network: R_p of each rate, then lottery tickets against pruning and fine-tuning."""

    dataset: DatasetConfig = Field(DatasetConfig(name="mnist1d"), description="what to train on")
    model: str = Field("mlp_w128_d2", description="registry name, e.g. mlp_w128_d2, cnn1d_w32_d2, lenet_300_100, or "
                       "the name of an installed package's regularity.models entry point")
    learning_rates: list[float] = Field([0.005, 0.01, 0.02, 0.05, 0.1, 0.2], min_length=1,
                                        description="peak learning rates of the sweep (log-spaced); each replaces train.lr")
    correlation_fractions: list[float] = Field([0.05, 0.1, 0.2, 0.3, 0.5], min_length=1,
                                               description="the fractions p of weights by magnitude whose overlap R_p measures")
    correlation: Literal["eq1", "prunable_rounded"] = Field(
        "eq1", description="R_p's form: eq1, the paper's Eq. 1 (every layer's weights, the classifier's included, over p "
        "x their number), or prunable_rounded (the prunable layers, over the top-p count rounded per layer: the flow's "
        "earlier form)")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="seed indices; every rate and method trains once per seed")
    pruning: PruningConfig = Field(PruningConfig(levels=10, rewind_step=31), description="rounds of pruning; rewind_step "
                                   "is the `rewind` method's point (31 updates: one epoch of MNIST-1D at batch 128)")
    train: TrainConfig = Field(TrainConfig(epochs=20, batch_size=128, lr=0.1), description="optimiser and schedule of every "
                               "training; its lr is replaced by each of learning_rates")
    seed: int = Field(0, ge=0, description="run seed: model seeds and batch orders derive from it")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="execution settings; not part of the run id")

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        return sgd_trainable_model(name)

    @field_validator("learning_rates", "correlation_fractions", "seeds")
    @classmethod
    def _distinct_and_sorted(cls, values: list, info) -> list:
        return distinct_values(values, *SWEEP_LISTS[info.field_name])


SWEEP_LISTS = {
    "learning_rates": (lambda v: v > 0, "distinct positive learning rates"),
    "correlation_fractions": (lambda v: 0 < v <= 1, "distinct fractions in (0, 1]"),
    "seeds": (lambda v: v >= 0, "distinct non-negative integers (a repeated seed repeats rows)"),
}


def check_sweep(config: WeightCorrelationFlowConfig, dataset) -> None:
    """Fail before any work when the model does not fit the data or the rewind step is past training."""
    check_whole_set_fits(config.model, config.train.batch_size, dataset)
    updates = config.train.epochs * (dataset.n_train // config.train.batch_size)
    if config.pruning.rewind_step > updates:
        raise ValueError(f"pruning.rewind_step={config.pruning.rewind_step} is after the last update ({updates})")


@flow(name=FLOW, description="Lottery tickets vs pruning and fine-tuning across learning rates, and the weight "
                             "correlation R_p that explains them.")
def weight_correlation_flow(config: WeightCorrelationFlowConfig = WeightCorrelationFlowConfig(),
                            data_root: str | None = None) -> str:
    """Run (or resume) the sweep of `config`; returns the run folder."""
    from core.methods.weight_correlation import method_gaps, weight_correlation_findings
    from core.plots.weight_correlation import accuracy_by_method, correlation_vs_fraction
    from core.runs.files import dataset_cache
    from core.runs.store import RunStore
    from flows.common import run_scope
    from flows.report import publish
    from flows.runner import configure_runtime, run_shards
    from tasks.common import combine_shards, shared_dataset
    from tasks.weight_correlation import CORRELATION, compare_methods

    data_root = checked_data_root(data_root)  # a deployment parameter may not point outside
    configure_runtime(config.runtime)
    dataset = shared_dataset(config.dataset, dataset_cache(data_root))
    check_sweep(config, dataset)
    store = RunStore.open(FLOW, config, data_root, inputs={"dataset": dataset.fingerprint})
    [rounds] = run_shards(compare_methods, [{"store": store}], config.runtime, "lottery-ticket pass")
    combine_shards(store, rounds, "lt_vs_pf.parquet", [("lr", "ascending"), ("method", "ascending"),
                                                       ("seed", "ascending"), ("density", "descending")])
    results, correlations = store.read_table("lt_vs_pf.parquet"), store.read_table(CORRELATION)
    folder = store.root / "figures"
    figures = store.figures(lambda: [correlation_vs_fraction(correlations, folder / "r_p_vs_p.png"),
                                     accuracy_by_method(results, folder / "accuracy_by_method.png")])
    r_p = correlations.pivot_table(index="lr", columns="p", values="r_p").add_prefix("r_p@").reset_index()
    summary = method_gaps(results).merge(r_p, on="lr")
    findings = weight_correlation_findings(results, correlations, run_scope(config, dataset), config.correlation)
    publish(store, summary, figures, f"{config.model} on {config.dataset.name}: {len(config.learning_rates)} learning "
            f"rates x {len(config.seeds)} seeds, {config.pruning.levels} rounds of pruning", findings=findings)
    return str(store.root)
