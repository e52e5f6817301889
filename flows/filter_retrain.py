"""`filter_retrain` flow: remove the lowest-scoring fraction of the training set, retrain, compare.

Controls at every fraction: the same number of examples removed at random, and the highest-scoring
ones. Model i of every arm shares its seed (initialisation and batch order), so arms are compared
pairwise; at fraction 0 nothing is removed and one set of models ("none") serves every arm.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from prefect import flow
from pydantic import Field, field_validator

from core.config import RUN_REFERENCE
from flows.common import (SubsetTrainingConfig, check_fits, checked_data_root, chunks, upstream_table,
                          write_examples_table)

if TYPE_CHECKING:  # annotations only: these load torch and pandas, which reading a config must not
    import pandas as pd
    from core.data.datasets import Dataset


FLOW = "filter_retrain"
SCORE_TABLES = {"cscore": "cscores.parquet", "proxies": "proxies.parquet"}
FILTERED_FROM = ["models.parquet", "examples.parquet"]


class FilterRetrainFlowConfig(SubsetTrainingConfig):
    """Retrain after removing fractions of the training set by a per-example score."""

    scores: Annotated[str | None, RUN_REFERENCE] = Field(None, description="run id of a cscore or proxies run on the same dataset "
                               "(e.g. cscore-1a2b3c4d5e6f), or a Parquet file with example_id and the score column")
    score_column: str = Field("cscore", description="column of the score table; low values are removed first")
    fractions: list[float] = Field([0.0, 0.02, 0.05, 0.1, 0.2], min_length=1,
                                   description="fractions of the training set removed, each in [0, 1)")
    arms: list[Literal["lowest", "random", "highest"]] = Field(
        ["lowest", "random", "highest"], min_length=1, description="which examples each arm removes")
    seeds_per_arm: int = Field(4, ge=1, description="models per arm and fraction")
    shard_size: int = Field(64, ge=1, description="models trained together in one task (one fraction)")

    @field_validator("fractions")
    @classmethod
    def _valid_fractions(cls, fractions: list[float]) -> list[float]:
        bad = [f for f in fractions if not 0 <= f < 1]
        if bad or len(set(fractions)) != len(fractions):
            raise ValueError(f"fractions must be distinct values in [0, 1); got {fractions}")
        return sorted(fractions)


def aligned_scores(config: FilterRetrainFlowConfig, dataset: Dataset, data_root: str | None) -> tuple[pd.DataFrame, Path]:
    """The score of every training example, in dataset order, from the run or file named by `scores`; and the
    absolute path of the table read."""
    import pandas as pd

    if not config.scores:
        raise ValueError("scores is required: the run id of a cscore or proxies run (see `regularity ls`) "
                         "or a Parquet file with example_id and a score column")
    path = Path(config.scores)
    if not path.is_file():
        if config.scores.rsplit("-", 1)[0] not in SCORE_TABLES:
            raise ValueError(f"scores={config.scores!r} is neither a file nor a run id of {', '.join(SCORE_TABLES)}")
        path = upstream_table("scores", config.scores, SCORE_TABLES, data_root, config.dataset, dataset.fingerprint)
    table = pd.read_parquet(path)
    if config.score_column not in table or "example_id" not in table:
        raise ValueError(f"{path} needs columns example_id and {config.score_column!r}; it has {list(table.columns)}")
    ids = pd.DataFrame({"example_id": dataset.train_ids.numpy(), "source": dataset.train_source})
    joined = ids.merge(table[["example_id", config.score_column]], on="example_id", how="left", validate="one_to_one")
    covered = int(joined[config.score_column].notna().sum())
    if covered < len(ids) // 2:
        raise ValueError(f"{path} scores only {covered} of the {len(ids)} training examples: the dataset config "
                         "must match the run that produced the scores")
    return joined.rename(columns={config.score_column: "score"}), path.resolve()


def plan_shards(config: FilterRetrainFlowConfig) -> list[dict]:
    """Per fraction, every arm x seed; model ids run over the whole grid."""
    from core.training.experiment import model_seed

    plan, next_id = [], 0
    for fraction in config.fractions:
        arms = ["none"] if fraction == 0 else list(config.arms)
        models = [(arm, i) for arm in arms for i in range(config.seeds_per_arm)]
        for chunk in chunks(models, config.shard_size):
            ids = list(range(next_id, next_id + len(chunk)))
            next_id += len(chunk)
            plan.append({"model_ids": ids, "fraction": fraction, "arms": [a for a, _ in chunk],
                         "seed_indices": [i for _, i in chunk],
                         "seeds": [model_seed(config.seed, i) for _, i in chunk]})
    return [{"shard": s, **p} for s, p in enumerate(plan)]


def filtering_table(models: pd.DataFrame, examples: pd.DataFrame, score: str) -> pd.DataFrame:
    """One row per model: arm, fraction removed, seed, examples kept, noisy examples removed, accuracy."""
    import pandas as pd
    from core.runs.rows import unpack_bool_rows

    kept = unpack_bool_rows(models["in_subset"])
    noisy = examples.loc[examples["split"] == "train", "is_noisy"].to_numpy()
    return pd.DataFrame({
        "model_id": models["model_id"], "score": score, "arm": models["arm"],
        "fraction_removed": models["fraction_removed"], "seed": models["seed_index"],
        "n_kept": kept.sum(1), "n_noisy_removed": (~kept & noisy).sum(1),
        "test_accuracy": models["test_accuracy"], "test_loss": models["test_loss"],
    })


@flow(name=FLOW, description="Remove the lowest-scoring examples (and random / highest as controls), retrain, compare.")
def filter_retrain_flow(config: FilterRetrainFlowConfig = FilterRetrainFlowConfig(), data_root: str | None = None) -> str:
    """Run (or resume) the filtering pipeline of `config`; returns the run folder."""
    from core.data.fingerprint import fingerprint
    from core.methods.filter_retrain import filter_retrain_findings, filtering_summary
    from core.plots.filter_retrain import filtering_curve
    from core.runs.files import dataset_cache
    from core.runs.store import RunStore
    from flows.common import run_scope
    from flows.report import publish
    from flows.runner import configure_runtime, run_shards
    from tasks.common import combine_shards, shared_dataset
    from tasks.filter_retrain import filter_shard

    data_root = checked_data_root(data_root)  # a deployment parameter may not point outside
    configure_runtime(config.runtime)
    dataset = shared_dataset(config.dataset, dataset_cache(data_root))
    scores, scores_path = aligned_scores(config, dataset, data_root)
    kept = dataset.n_train - round(max(config.fractions) * dataset.n_train)
    check_fits(config, dataset, kept, f"fractions={max(config.fractions)}")
    scores_file = Path(config.scores)  # a file's contents are part of the run's identity; a run's id already is
    inputs = {"dataset": dataset.fingerprint, "scores": fingerprint([scores_file]) if scores_file.is_file() else None}
    store = RunStore.open(FLOW, config, data_root, inputs=inputs)
    write_examples_table(store, dataset)
    source = [str(scores_path)]  # another run's table: when it is recomputed, so is everything after it
    store.remove_corrupt("scores.parquet")
    if not store.is_complete("scores.parquet", source):
        store.write_table("scores.parquet", scores, built_from=source)
    plan = [{"store": store, **p} for p in plan_shards(config)]
    names = run_shards(filter_shard, plan, config.runtime, "filter shards")
    combine_shards(store, names, "models.parquet", "model_id")
    store.remove_corrupt("filtering.parquet", "filtering_summary.parquet")
    if not (store.is_complete("filtering.parquet", FILTERED_FROM) and store.is_complete("filtering_summary.parquet", FILTERED_FROM)):
        table = filtering_table(store.read_table("models.parquet"), store.read_table("examples.parquet"), config.score_column)
        store.write_table("filtering.parquet", table, built_from=FILTERED_FROM)
        store.write_table("filtering_summary.parquet", filtering_summary(table), built_from=FILTERED_FROM)
    summary = store.read_table("filtering_summary.parquet")
    none = summary[summary["arm"] == "none"]
    baseline = (float(none["mean_test_accuracy"].iloc[0]), float(np.nan_to_num(none["se_test_accuracy"].iloc[0]))) if len(none) else None
    figures = store.figures(lambda: [filtering_curve(summary, baseline, config.score_column,
                                                     store.root / "figures" / "filtering.png")])
    findings = filter_retrain_findings(store.read_table("filtering.parquet"), int(dataset.is_noisy.sum()),
                                       run_scope(config, dataset))
    publish(store, summary, figures,
            f"filtering {dataset.n_train} {config.dataset.name} examples by {config.score_column}", findings=findings)
    return str(store.root)
