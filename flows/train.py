"""`train` flow: shards of models of one architecture on one dataset, one Parquet row per model.

The smallest end-to-end pipeline (config -> dataset -> shards of training -> per-shard Parquet ->
aggregate -> figure and artifacts) and the pattern the other flows follow.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import flow
from pydantic import Field

from core.data.config import DatasetConfig
from flows.common import SubsetTrainingConfig, check_fits, checked_data_root, chunks, write_examples_table

if TYPE_CHECKING:  # annotations only: these load torch and pandas, which reading a config must not
    import pandas as pd


FLOW = "train"


class TrainFlowConfig(SubsetTrainingConfig):
    """Train `n_models` seeds of one model on random subsets of one dataset."""

    dataset: DatasetConfig = Field(DatasetConfig(name="mnist1d"), description="what to train on")
    n_models: int = Field(16, ge=1, description="number of models (model ids 0..n_models-1)")
    subset_ratio: float = Field(1.0, gt=0, le=1, description="fraction of the training set each model trains on (seeded per model)")


def summarise(models: pd.DataFrame) -> pd.DataFrame:
    """Mean, std, min and max over models of each accuracy."""
    columns = ["subset_accuracy", "heldout_accuracy", "test_accuracy", "test_loss"]
    return models[columns].agg(["mean", "std", "min", "max"]).T.rename_axis("metric").reset_index()


@flow(name=FLOW, description="Train many models at once on seeded subsets; one Parquet row per model.")
def train_flow(config: TrainFlowConfig = TrainFlowConfig(), data_root: str | None = None) -> str:
    """Run (or resume) the `train` pipeline of `config`; returns the run folder."""
    from core.findings import findings_table
    from core.plots.train import training_summary
    from core.runs.files import dataset_cache
    from core.runs.rows import unpack_float_rows
    from core.runs.store import RunStore
    from core.training.experiment import subset_size
    from flows.report import publish
    from flows.runner import configure_runtime, run_shards
    from tasks.common import combine_shards, shared_dataset
    from tasks.train import train_shard

    data_root = checked_data_root(data_root)  # a deployment parameter may not point outside
    configure_runtime(config.runtime)
    dataset = shared_dataset(config.dataset, dataset_cache(data_root))
    size = subset_size(config.subset_ratio, dataset.n_train)
    check_fits(config, dataset, size, f"subset_ratio={config.subset_ratio}")  # before the run folder exists
    store = RunStore.open(FLOW, config, data_root, inputs={"dataset": dataset.fingerprint})
    write_examples_table(store, dataset)
    shards = chunks(list(range(config.n_models)), config.shard_size)
    parameters = [{"store": store, "shard": s, "model_ids": ids, "subset_size": size} for s, ids in enumerate(shards)]
    names = run_shards(train_shard, parameters, config.runtime, "train shards")
    combine_shards(store, names, "models.parquet", "model_id")
    models = store.read_table("models.parquet")
    store.remove_corrupt("summary.parquet")
    if not store.is_complete("summary.parquet", ["models.parquet"]):
        store.write_table("summary.parquet", summarise(models), built_from=["models.parquet"])
    summary = store.read_table("summary.parquet")
    figures = store.figures(lambda: [training_summary(
        unpack_float_rows(models["epoch_loss"]), models["test_accuracy"].to_numpy(), f"{config.model} on {config.dataset.name}",
        store.root / "figures" / "training.png")])
    publish(store, summary, figures, f"{config.n_models} x {config.model} on {config.dataset.name}",
            findings=findings_table([]))  # a protocol, not a paper's claim: the flows that use its models check those
    return str(store.root)
