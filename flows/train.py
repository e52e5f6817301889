"""`train` flow: shards of models of one architecture on one dataset, one Parquet row per model.

The smallest end-to-end pipeline (config -> dataset -> shards of training -> per-shard Parquet ->
aggregate -> figure and artifacts) and the pattern the other flows follow.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow
from pydantic import Field, field_validator

from core.config import Config, RuntimeConfig
from core.data import Dataset, DatasetConfig
from core.models import init_model, parse_model_name
from core.plots import training_summary
from core.store import RunStore, dataset_cache, unpack_float_rows
from core.training import TrainConfig
from flows.report import publish
from flows.runner import configure_threads, run_shards
from tasks.common import combine_shards, shared_dataset
from tasks.train import shard_name, train_shard

FLOW = "train"


class TrainFlowConfig(Config):
    """Train `n_models` seeds of one model on random subsets of one dataset."""

    dataset: DatasetConfig = Field(DatasetConfig(name="mnist1d"), description="what to train on")
    model: str = Field("mlp_w64_d2", description="registry name, e.g. mlp_w64_d2, cnn1d_w32_d3, cnn_w16_d4, lenet_300_100")
    train: TrainConfig = Field(TrainConfig(), description="optimiser and schedule")
    n_models: int = Field(16, ge=1, description="number of models (model ids 0..n_models-1)")
    subset_ratio: float = Field(1.0, gt=0, le=1, description="fraction of the training set each model trains on (seeded per model)")
    seed: int = Field(0, ge=0, description="run seed; model k's seed is derived from (seed, k)")
    shard_size: int = Field(16, ge=1, description="models trained together in one task (one vectorized pass)")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="execution settings; not part of the run id")

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        parse_model_name(name)  # raises with the list of valid patterns
        return name


def check_fits(config: TrainFlowConfig, dataset: Dataset) -> None:
    """Fail before any work when the model or subset size cannot work with this dataset."""
    init_model(config.model, dataset.input_shape, dataset.num_classes, 0)
    size = int(config.subset_ratio * dataset.n_train)
    if size < config.train.batch_size:
        raise ValueError(
            f"subset_ratio={config.subset_ratio} gives {size} of {dataset.n_train} examples per model, fewer than "
            f"train.batch_size={config.train.batch_size}; raise subset_ratio or lower train.batch_size"
        )


def examples_table(dataset: Dataset) -> pd.DataFrame:
    """Which example each position of the per-example list columns refers to."""
    return pd.concat([
        pd.DataFrame({"split": "train", "position": np.arange(dataset.n_train), "example_id": dataset.train_ids,
                      "label": dataset.y_train, "true_label": dataset.true_label, "is_noisy": dataset.is_noisy}),
        pd.DataFrame({"split": "test", "position": np.arange(dataset.n_test), "example_id": dataset.test_ids,
                      "label": dataset.y_test, "true_label": dataset.y_test, "is_noisy": False}),
    ], ignore_index=True)


def summarise(models: pd.DataFrame) -> pd.DataFrame:
    """Mean, std, min and max over models of each accuracy."""
    columns = ["subset_accuracy", "heldout_accuracy", "test_accuracy", "test_loss"]
    return models[columns].agg(["mean", "std", "min", "max"]).T.rename_axis("metric").reset_index()


@flow(name=FLOW, description="Train many models at once on seeded subsets; one Parquet row per model.")
def train_flow(config: TrainFlowConfig = TrainFlowConfig(), data_root: str | None = None) -> str:
    """Run (or resume) the `train` pipeline of `config`; returns the run folder."""
    configure_threads(config.runtime)
    dataset = shared_dataset(config.dataset, dataset_cache(data_root))
    check_fits(config, dataset)  # bad input fails here, before the run folder exists
    store = RunStore.open(FLOW, config, data_root)
    if not store.is_complete("examples.parquet"):
        store.write_table("examples.parquet", examples_table(dataset))
    ids = list(range(config.n_models))
    shards = [ids[i : i + config.shard_size] for i in range(0, len(ids), config.shard_size)]
    names = run_shards(train_shard, [{"store": store, "shard": s, "model_ids": m} for s, m in enumerate(shards)],
                       config.runtime, "train shards")
    combine_shards(store, names, "models.parquet", "model_id")
    models = store.read_table("models.parquet")
    summary = summarise(models)
    store.write_table("summary.parquet", summary)
    figure = training_summary(unpack_float_rows(models["epoch_loss"]), models["test_accuracy"].to_numpy(),
                              f"{config.model} on {config.dataset.name}", store.root / "figures" / "training.png")
    publish(store, summary, [figure], f"{config.n_models} x {config.model} on {config.dataset.name}")
    return str(store.root)
