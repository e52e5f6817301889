"""`toy` flow: a method written the way a real one is, outside flows/, to show that registering a method needs no edit
to any shared module (tests/test_toy_method.py registers `ENTRY` into `flows.registry.FLOWS`).

It trains nothing: one task of its own counts the training examples of each class, the flow writes that table and
publishes its report.
"""
from __future__ import annotations

from prefect import flow, task
from pydantic import Field

from core.config import Config, RuntimeConfig
from core.data.config import DatasetConfig
from core.findings import Claim
from flows.common import checked_data_root, run_scope
from flows.registry import FlowEntry

FLOW = "toy"
CLASS_COUNTS = ("one row per class: its label, how many training examples carry it (`n_examples`) and, with `share`, "
                "their fraction of the training set")


class ToyFlowConfig(Config):
    """Count the training examples of each class of one dataset."""

    dataset: DatasetConfig = Field(DatasetConfig(name="digits", n_train=40), description="what to count")
    share: bool = Field(True, description="also write each class's share of the training set")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="execution settings; not part of the run id")


@task
def count_classes(labels: list[int], share: bool):
    """One row per class present in `labels`: the label, its count and, with `share`, its fraction."""
    import pandas as pd

    counts = pd.Series(labels).value_counts().sort_index()
    table = pd.DataFrame({"label": counts.index.astype("int64"), "n_examples": counts.to_numpy()})
    return table.assign(share=table["n_examples"] / len(labels)) if share else table


BALANCED = Claim("The toy's own paper (a test)", "The classes of the training set are balanced.",
                 "largest minus smallest share of a class")


def toy_findings(counts, scope: str):
    """The toy's claim by a rule of its own: supported when the shares differ by less than 0.05, else not."""
    from core.findings import NOT_SUPPORTED, SUPPORTED, findings_table, row

    shares = counts["n_examples"] / counts["n_examples"].sum()
    spread = float(shares.max() - shares.min())
    verdict = SUPPORTED if spread < 0.05 else NOT_SUPPORTED
    return findings_table([row(BALANCED, spread, 0.0, 1, verdict, "shares differ by < 0.05: supported; else not",
                               scope)])


@flow(name=FLOW, description="Count the training examples of each class (a toy method).")
def toy_flow(config: ToyFlowConfig = ToyFlowConfig(), data_root: str | None = None) -> str:
    """Run the toy pipeline of `config`; returns the run folder."""
    from core.runs.files import dataset_cache
    from core.runs.store import RunStore
    from flows.report import publish
    from flows.runner import configure_runtime
    from tasks.common import shared_dataset

    data_root = checked_data_root(data_root)  # a deployment parameter may not point outside
    configure_runtime(config.runtime)
    dataset = shared_dataset(config.dataset, dataset_cache(data_root))
    store = RunStore.open(FLOW, config, data_root, inputs={"dataset": dataset.fingerprint})
    if not store.is_complete("class_counts.parquet"):
        store.write_table("class_counts.parquet", count_classes(dataset.y_train.tolist(), config.share))
    counts = store.read_table("class_counts.parquet")
    publish(store, counts, [], f"class counts of {dataset.n_train} {config.dataset.name} training examples",
            findings=toy_findings(counts, run_scope(config, dataset)))
    return str(store.root)


ENTRY = FlowEntry(
    "toy_method", "toy_flow", "ToyFlowConfig",
    "count the training examples of each class (a toy method registered from a test)",
    summary_keys=("share",),
    question="How many examples has each class? Read `n_examples` in `class_counts.parquet`.",
    tables={"class_counts.parquet": CLASS_COUNTS},
    report_summary="One row per class: its label, its training examples and their share of the training set.",
    early_failure={"dataset": {"name": "digits", "n_train": 10**9}})
