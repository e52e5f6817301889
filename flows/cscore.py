"""`cscore` flow: C-scores by holdout resampling (Jiang, Zhang, Talwar, Mozer, ICML 2021).

For each subset ratio s and run r, a model trains on floor(s*N) of the training examples and
predicts every training and test example. By default the subsets of a ratio are balanced: their
held-out sets are consecutive blocks of one chain of seeded permutations, so every example is held
out by floor or ceil of (1 - s) * runs models. Drawn independently, an example falls into every
subset of ratio s with probability s^runs and loses that ratio (its most accurate one).
An example's score at ratio s is its held-out accuracy over the models that did not train on it;
its C-score is the mean over ratios.

Batches: each epoch drops the last partial batch (see core/training/trainer.py), so every step of every
model sees exactly `train.batch_size` examples, whatever the ratio.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from prefect import flow, get_run_logger
from pydantic import Field, field_validator, model_validator

from core.data.config import DatasetConfig
from core.training.config import TrainConfig
from flows.common import SubsetTrainingConfig, check_fits, checked_data_root, chunks, write_examples_table

if TYPE_CHECKING:  # annotations only: these load torch and pandas, which reading a config must not
    from core.runs.store import RunStore


FLOW = "cscore"
DETECTION_TABLES = {"noise_detection.parquet": "is_noisy", "ood_detection.parquet": "is_foreign"}
MARKED = {"is_noisy": "mislabeled examples", "is_foreign": "foreign examples"}  # what each detection finds
DEFAULT_RATIOS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


class CScoreFlowConfig(SubsetTrainingConfig):
    """Holdout resampling: `runs_per_ratio` models at each subset ratio."""

    dataset: DatasetConfig = Field(DatasetConfig(name="digits"), description="what to score")
    model: str = Field("mlp_w128_d2", description="registry name, e.g. mlp_w128_d2, cnn1d_w32_d3, cnn_w16_d4, or the "
                       "name of an installed package's regularity.models entry point")
    train: TrainConfig = Field(TrainConfig(epochs=15, batch_size=32, lr=0.05), description="optimiser and schedule")
    ratios: list[float] = Field(DEFAULT_RATIOS, min_length=1, description="subset ratios s in (0, 1): each model trains on floor(s*N) examples")
    runs_per_ratio: int = Field(16, ge=2, description="models (own subsets and seeds) per ratio; at least 2 for split-half reliability")
    holdout_design: Literal["balanced", "independent"] = Field(
        "balanced", description="balanced: at each ratio every example is held out by floor or ceil of (1 - s) x runs "
        "models (none misses a ratio); independent: each model draws its own random subset")
    shard_size: int = Field(64, ge=1, description="models trained together in one task (all of one ratio)")
    target_se: float | None = Field(
        None, gt=0, lt=0.5, description="precision on request: train rounds of runs_per_ratio models per ratio until "
        "the 90th percentile of the per-example C-score standard error is at most this (e.g. 0.03); empty = one round")
    max_runs_per_ratio: int = Field(256, ge=2, description="with target_se: stop after this many models per ratio "
                                    "even if the target is not met")

    @model_validator(mode="after")
    def _rounds_fit(self) -> "CScoreFlowConfig":
        if self.target_se is not None and self.max_runs_per_ratio < self.runs_per_ratio:
            raise ValueError(f"max_runs_per_ratio={self.max_runs_per_ratio} is below runs_per_ratio="
                             f"{self.runs_per_ratio}, the size of one round; raise it or lower runs_per_ratio")
        return self

    def max_runs(self) -> int:
        """Models per ratio when every round runs (also the stride of model ids between ratios)."""
        return self.runs_per_ratio if self.target_se is None else self.max_runs_per_ratio

    def max_rounds(self) -> int:
        """Rounds of runs_per_ratio models per ratio (the last one may be smaller)."""
        return -(-self.max_runs() // self.runs_per_ratio)

    @field_validator("ratios")
    @classmethod
    def _valid_ratios(cls, ratios: list[float]) -> list[float]:
        bad = [r for r in ratios if not 0 < r < 1]
        if bad:
            raise ValueError(f"every ratio must lie strictly between 0 and 1; got {bad}")
        if len(set(ratios)) != len(ratios):
            raise ValueError(f"ratios must be distinct; got {ratios}")
        return sorted(ratios)


def plan_shards(config: CScoreFlowConfig, n_train: int, rounds: int = 1) -> list[dict]:
    """Task parameters of rounds 0..rounds-1, numbered in that order; model id = ratio index * max_runs + run.
    Shards never mix ratios or rounds."""
    from core.training.experiment import ratio_seed, subset_size

    shards = []
    for round_ in range(rounds):
        first, stop = round_ * config.runs_per_ratio, min((round_ + 1) * config.runs_per_ratio, config.max_runs())
        for i, ratio in enumerate(config.ratios):
            for chunk in chunks(list(range(first, stop)), config.shard_size):
                shards.append({"model_ids": [i * config.max_runs() + r for r in chunk], "runs": chunk,
                               "ratio": ratio, "subset_size": subset_size(ratio, n_train), "round_index": round_,
                               "design": config.holdout_design, "design_seed": ratio_seed(config.seed, i)})
    return [{"shard": s, **p} for s, p in enumerate(shards)]


@flow(name=FLOW, description="C-scores by holdout resampling: many subset-trained models per ratio.")
def cscore_flow(config: CScoreFlowConfig = CScoreFlowConfig(), data_root: str | None = None) -> str:
    """Run (or resume) the holdout pipeline of `config`; returns the run folder."""
    import pandas as pd
    import pyarrow.parquet as pq
    from core.methods.cscore import coverage_warning, cscore_findings, rounds_until_precise
    from core.methods.proxies import detection_metrics
    from core.runs.files import dataset_cache
    from core.runs.store import RunStore
    from core.training.experiment import subset_size
    from flows.common import run_scope
    from flows.report import publish
    from flows.runner import configure_runtime, run_shards
    from tasks.common import combine_shards, shared_dataset
    from tasks.cscore import average_heldout_probabilities, holdout_outcomes, holdout_shard, score_runs

    data_root = checked_data_root(data_root)  # a deployment parameter may not point outside
    configure_runtime(config.runtime)
    dataset = shared_dataset(config.dataset, dataset_cache(data_root))
    smallest = subset_size(config.ratios[0], dataset.n_train)
    check_fits(config, dataset, smallest, f"ratios={config.ratios[0]}")  # before the run folder exists
    uncovered = coverage_warning(config.holdout_design, dataset.n_train, config.ratios, config.runs_per_ratio,
                                 config.target_se, config.max_runs_per_ratio)
    if uncovered:  # before any training: the tables would show it only in n_missing_ratios
        get_run_logger().warning(uncovered)
    store = RunStore.open(FLOW, config, data_root, inputs={"dataset": dataset.fingerprint})
    write_examples_table(store, dataset)
    names: list[str] = []

    def run_round(round_: int):
        """Train (or find) the shards of one round; a function that reads their outcomes."""
        plan = [{"store": store, **p} for p in plan_shards(config, dataset.n_train, round_ + 1) if p["round_index"] == round_]
        shards = run_shards(holdout_shard, plan, config.runtime, f"holdout shards, round {round_ + 1}")
        names.extend(shards)
        return lambda: holdout_outcomes(store, shards)

    def report(rounds: int, se: float) -> None:
        get_run_logger().info("round %d: %d models per ratio, 90th percentile of the C-score SE %.4f (target %s)", rounds,
                              min(rounds * config.runs_per_ratio, config.max_runs()), se, config.target_se)

    precision = rounds_until_precise(run_round, config.max_rounds(), config.target_se, report)
    combine_shards(store, names, "runs.parquet", "model_id")
    score_runs(store, dataset.class_names)
    probabilities = average_heldout_probabilities(store, names)
    scored_from = ["cscores.parquet", *([probabilities] if probabilities else [])]
    for table, marks in DETECTION_TABLES.items():  # how well each low score finds the mislabeled, the foreign examples
        store.remove_corrupt(table)
        if getattr(dataset, marks).any() and not store.is_complete(table, scored_from):
            scores = detection_scores(store, probabilities)
            detection = [{"score": name, **detection_metrics(values, scores[marks])}
                         for name, values in scores.drop(columns=list(MARKED)).items()]
            store.write_table(table, pd.DataFrame(detection), built_from=scored_from)
    figures = store.figures(lambda: draw_figures(store, dataset))
    summary = store.read_table("summary.parquet")
    overall = summary.iloc[0]
    target = "" if config.target_se is None else f" (target {config.target_se}: {'met' if precision.met else 'not met'})"
    runs = pq.read_table(store.path("runs.parquet"), columns=["run", "ratio", "in_subset", "train_correct"])
    findings = cscore_findings(runs, store.read_table("cscores.parquet"), run_scope(config, dataset))
    publish(store, summary, figures, f"C-scores of {dataset.n_train} {config.dataset.name} examples, "
            f"{len(config.ratios)} ratios x {overall['runs_per_ratio']} runs of {config.model}; 90th percentile "
            f"of the per-example SE {overall['cscore_se_p90']:.4f}{target}", findings=findings)
    return str(store.root)


CURVES = {"cscore": "C-score", "cscore_soft": "soft C-score", "cscore_margin": "margin C-score"}
DETECTION_SCORES = ("cscore", "cscore_soft", "cscore_margin", "cleanlab_holdout_label_quality")  # low = an issue


def detection_scores(store: RunStore, probabilities: str | None):
    """The run's scores where a low one marks an issue (those it has), one column each, beside is_noisy and
    is_foreign (all False when the run's examples table predates it)."""
    scores = store.read_table("cscores.parquet")
    if probabilities:
        scores = scores.merge(store.read_table(probabilities).drop(columns=["label"]), on="example_id", how="left")
    present = [name for name in DETECTION_SCORES if name in scores]
    return scores.reindex(columns=[*present, *MARKED]).fillna({marks: False for marks in MARKED})


def draw_figures(store: RunStore, dataset) -> list:
    """Score histograms per class, extreme examples per class, held-out accuracy by ratio."""
    from core.plots.cscore import detection_curves, extreme_examples, heldout_accuracy_by_ratio, per_class_histograms

    scores = store.read_table("cscores.parquet")
    by_ratio = store.read_table("cscore_by_ratio.parquet").groupby("ratio")["score"].mean()
    runs = store.read_table("runs.parquet")
    test_by_ratio = runs.groupby("ratio")["test_accuracy"].mean().reindex(by_ratio.index)
    labels, values = scores["label"].to_numpy(), scores["cscore"].to_numpy()
    folder = store.root / "figures"
    curves = {label: scores[name].to_numpy() for name, label in CURVES.items() if name in scores}
    extra = [detection_curves(curves, scores[marks].to_numpy(), folder / table.replace(".parquet", ".png"), MARKED[marks])
             for table, marks in DETECTION_TABLES.items() if marks in scores and scores[marks].any()]
    return extra + [
        per_class_histograms(values, labels, dataset.class_names, "C-score", folder / "cscore_histograms.png"),
        extreme_examples(dataset.x_train.numpy(), values, labels, dataset.class_names, folder / "extremes.png",
                         title="C-score: lowest 5 (red) and highest 5 (green) per class; score, example_id, source",
                         ids=scores["example_id"].to_numpy(), sources=scores["source"].to_numpy()),
        heldout_accuracy_by_ratio(by_ratio.index.to_numpy(), by_ratio.to_numpy(), test_by_ratio.to_numpy(),
                                  folder / "heldout_by_ratio.png"),
    ]
