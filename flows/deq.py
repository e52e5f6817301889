"""`deq` flow: deep equilibrium classifiers trained with and without Jacobian regularisation, watched every epoch.

Bai, Koltun and Kolter, "Stabilizing Equilibrium Models by Jacobian Regularization" (ICML 2021). A DEQ's output is
the fixed point z* = f(z*, x) of one tanh cell, found by Anderson or Broyden iterations and differentiated
implicitly. Its cost is the number of solver steps, which grows as training makes the cell's Jacobian J_f(z*) less
contractive. The regulariser gamma ||eps^T J_f(z*)||^2 / D (Hutchinson, on a random fraction of steps) keeps it
small. Every gamma trains the same seeds (same initialisations and batch orders); after every epoch the flow probes
them: solver steps and residuals forward and backward, ||J_f||_F^2 / D, the spectral radius of J_f at z*, and the
accuracy and residual when inference is capped at a fixed number of iterations. The claim to check: the regulariser
cuts the steps to convergence at similar accuracy, and keeps ||J_f|| and the residual from growing in training.
Beside them, the explicit networks the paper compares with (`baselines`), on the same data, seeds and epochs: the
DEQ's cell unrolled L times with tied weights and an untied L-layer network of its width; every arm's accuracy,
seconds and memory of a training step go to deq_costs.parquet, to check that the DEQ matches them at a memory that
stays flat as L grows.
"""
from __future__ import annotations

from typing import Literal

from prefect import flow
from pydantic import Field, field_validator, model_validator

from core.config import Config, RuntimeConfig
from core.data.config import DatasetConfig
from core.models.names import parse_model_name
from core.training.config import TrainConfig
from flows.common import check_whole_set_fits, checked_data_root, distinct_values

FLOW = "deq"


class SolverConfig(Config):
    """The fixed-point solver of training and of the per-epoch probes, forward and backward."""

    name: Literal["anderson", "broyden"] = Field("anderson", description="Anderson acceleration (memory 5) or "
                                                 "Broyden's method")
    tol: float = Field(1e-3, gt=0, lt=1, description="a row stops once ||f(z) - z|| / ||f(z)|| <= tol")
    max_iter: int = Field(30, ge=1, le=1000, description="iteration cap of the forward solve (a row that hits it is "
                          "reported as not converged)")
    backward_tol: float = Field(1e-3, gt=0, lt=1, description="tol of the implicit backward's solve")
    backward_max_iter: int = Field(30, ge=1, le=1000, description="iteration cap of the implicit backward's solve")


class PenaltyConfig(Config):
    """How the Jacobian regulariser gamma ||eps^T J_f(z*)||^2 / D is applied in training."""

    fraction: float = Field(0.5, gt=0, le=1, description="chance that a training step carries the penalty, drawn per "
                            "model and step (1: every step)")
    samples: int = Field(1, ge=1, le=64, description="Gaussian probes eps per penalised step (the paper: 1)")


class MonitorConfig(Config):
    """What is measured after every epoch, on the first test examples."""

    examples: int = Field(1000, ge=1, description="first test examples probed (all, when the test set is smaller)")
    samples: int = Field(8, ge=1, le=256, description="Hutchinson probes of the ||J_f||_F^2 / D estimate")
    power_iters: int = Field(30, ge=1, le=1000, description="power iterations of the spectral radius of J_f(z*)")
    caps: list[int] = Field([1, 2, 4, 8, 16, 32], min_length=1, description="iteration caps of capped inference "
                            "(no tolerance: exactly this many solver iterations)")

    @field_validator("caps")
    @classmethod
    def _distinct_positive(cls, caps: list[int]) -> list[int]:
        return distinct_values(caps, lambda c: 1 <= c <= 1000, "distinct iteration counts from 1 to 1000")


class BaselinesConfig(Config):
    """The explicit networks (core.models.unrolled) trained beside the DEQs at the DEQ's width."""

    depths: list[int] = Field([2, 4, 8, 16], description="L of each baseline: the DEQ's cell run L times from z = 0 "
                              "with tied weights and plain backprop (unrolled{L}_w{width}); [] trains none")
    untied: bool = Field(True, description="also train, at each L, an untied L-layer network of the same width "
                         "(explicit{L}_w{width}: each layer its own W and b, the input weight U shared)")

    @field_validator("depths")
    @classmethod
    def _distinct_depths(cls, depths: list[int]) -> list[int]:
        return distinct_values(depths, lambda d: 1 <= d <= 1000, "distinct depths from 1 to 1000")

    def networks(self) -> list[tuple[str, int]]:
        """(network, depth) of every baseline: the tied ones, then the untied ones."""
        return [(network, d) for network in ("unrolled", "explicit")[: 1 + self.untied] for d in self.depths]


class DEQFlowConfig(Config):
    """DEQ classifiers at several Jacobian-regularisation strengths, every seed at each, probed every epoch."""

    dataset: DatasetConfig = Field(DatasetConfig(name="mnist1d"), description="what to train on (synthetic: a small "
                                   "generated problem of 20 features, the paper's toy setting in spirit)")
    model: str = Field("deq_w64", description="registry name of the DEQ classifier: deq_w{width} (flatten, one DEQ "
                       "block of `width` tanh units, linear) or deq_conv_c{channels} (one conv DEQ block on images, "
                       "pooling, linear; baselines.depths must be [] for it)")
    gammas: list[float] = Field([0.0, 2.0], min_length=1, description="regularisation strengths; 0 trains without "
                                "the regulariser. Every gamma trains every seed")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="seed indices: a seed's initialisation and batch "
                             "order are the same at every gamma")
    solver: SolverConfig = Field(SolverConfig(), description="fixed-point solver settings")
    penalty: PenaltyConfig = Field(PenaltyConfig(), description="how the regulariser is applied")
    monitor: MonitorConfig = Field(MonitorConfig(), description="the per-epoch probes")
    baselines: BaselinesConfig = Field(BaselinesConfig(), description="explicit networks trained beside the DEQs")
    train: TrainConfig = Field(TrainConfig(epochs=30, batch_size=128, lr=0.1), description="optimiser and schedule")
    seed: int = Field(0, ge=0, description="run seed: model seeds, batch orders and penalty draws derive from it")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="execution settings; not part of the run id")

    @field_validator("model")
    @classmethod
    def _a_deq(cls, name: str) -> str:
        if parse_model_name(name).family not in ("deq", "deq_conv"):  # raises with the list of valid patterns
            raise ValueError(f"{name!r} is not a DEQ classifier; use deq_w<width> or deq_conv_c<channels>, e.g. "
                             "deq_w64")
        return name

    @model_validator(mode="after")
    def _baselines_of_the_tanh_cell(self) -> DEQFlowConfig:
        # the explicit baselines unroll the tanh cell of deq_w<width>: a conv DEQ has none of its own yet
        if parse_model_name(self.model).family == "deq_conv" and self.baselines.depths:
            raise ValueError(f"baselines.depths must be [] for the conv DEQ {self.model}: the explicit baselines "
                             "unroll deq_w<width>'s tanh cell; set baselines: {depths: []}")
        return self

    @field_validator("gammas", "seeds")
    @classmethod
    def _distinct_and_sorted(cls, values: list, info) -> list:
        return distinct_values(values, lambda v: v >= 0, f"distinct non-negative {info.field_name} (a repeated one "
                               "repeats rows)")


@flow(name=FLOW, description="Deep equilibrium classifiers with and without Jacobian regularisation: solver steps, "
                             "residuals, ||J||_F, spectral radius and capped-inference accuracy per epoch.")
def deq_flow(config: DEQFlowConfig = DEQFlowConfig(), data_root: str | None = None) -> str:
    """Run (or resume) the comparison of `config`; returns the run folder."""
    import pandas as pd

    from core.methods.deq import deq_findings, deq_summary, explicit_baseline_findings
    from core.methods.deq_costs import cost_findings
    from core.plots.deq import capped_inference_curves, deq_training_curves
    from core.runs.files import dataset_cache
    from core.runs.store import RunStore
    from flows.common import run_scope
    from flows.report import publish
    from flows.runner import configure_runtime, run_shards
    from tasks.common import combine_shards, shared_dataset
    from tasks.deq import BASELINE_SHARDS, COST_SHARDS, EPOCH_SHARDS, INFERENCE_SHARDS, train_baseline, train_gamma

    data_root = checked_data_root(data_root)  # a deployment parameter may not point outside
    configure_runtime(config.runtime)
    dataset = shared_dataset(config.dataset, dataset_cache(data_root))
    check_whole_set_fits(config.model, config.train.batch_size, dataset)
    store = RunStore.open(FLOW, config, data_root, inputs={"dataset": dataset.fingerprint})
    shards = run_shards(train_gamma, [{"store": store, "gamma": g} for g in config.gammas], config.runtime, "gammas")
    arms = [{"store": store, "network": network, "depth": depth} for network, depth in config.baselines.networks()]
    shards += run_shards(train_baseline, arms, config.runtime, "baselines") if arms else []
    keys = [("gamma", "ascending"), ("seed", "ascending"), ("epoch", "ascending")]
    written = [name for names in shards for name in names]
    arm_keys = [("network", "ascending"), ("depth", "ascending")]
    combine_shards(store, [n for n in written if n.startswith(COST_SHARDS)], "deq_costs.parquet",
                   [*arm_keys, ("gamma", "ascending"), ("seed", "ascending")])
    baselines = None
    if arms:
        combine_shards(store, [n for n in written if n.startswith(BASELINE_SHARDS)], "deq_baselines.parquet",
                       [*arm_keys, ("seed", "ascending"), ("epoch", "ascending")])
        baselines = store.read_table("deq_baselines.parquet")
    combine_shards(store, [n for n in written if n.startswith(EPOCH_SHARDS)], "deq_epochs.parquet", keys)
    combine_shards(store, [n for n in written if n.startswith(INFERENCE_SHARDS)], "deq_inference.parquet",
                   [*keys, ("cap", "ascending")])
    epochs, inference = store.read_table("deq_epochs.parquet"), store.read_table("deq_inference.parquet")
    folder = store.root / "figures"
    figures = store.figures(lambda: [deq_training_curves(epochs, folder / "solver_and_jacobian_by_epoch.png"),
                                     capped_inference_curves(inference, folder / "capped_inference.png")])
    scope = run_scope(config, dataset)
    costs = store.read_table("deq_costs.parquet")
    findings = pd.concat([deq_findings(epochs, inference, scope),
                          explicit_baseline_findings(epochs, baselines, costs, scope, config.model),
                          cost_findings(epochs, baselines, costs, scope, config.model)], ignore_index=True)
    publish(store, deq_summary(epochs, inference), figures, f"{config.model} on {config.dataset.name}, "
            f"{config.solver.name} solver: gamma {', '.join(f'{g:g}' for g in config.gammas)} x {len(config.seeds)} "
            f"seeds, {config.train.epochs} epochs", findings=findings)
    return str(store.root)
