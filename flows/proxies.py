"""`proxies` flow: cheap proxies of the C-score from a few full-data training runs.

Learning-speed proxies (cumulative label probability and accuracy, forgetting events, AUM, EL2N,
final loss) come from what the trainer records on each minibatch; kernel-density proxies and the
local outlier factor from input space and from the models' penultimate layer. Given a `cscore`
run on the same data, the flow also measures how well each proxy tracks the C-score, and the
learning dynamics of each C-score bin; with label noise, how well each score finds it. With the
optional cleanlab installed, K fold models (trained together) give each example out-of-sample
probabilities, and cleanlab's label-quality score and `find_label_issues` join the same tables.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import Field, model_validator

from core.config import RUN_REFERENCE
from core.data.config import DatasetConfig
from core.training.config import TrainConfig
from flows.common import (SubsetTrainingConfig, check_fits, checked_data_root, chunks, upstream_table,
                          write_examples_table)

if TYPE_CHECKING:  # annotations only: these load torch and pandas, which reading a config must not
    import pandas as pd
    from core.data.datasets import Dataset
    from core.runs.store import RunStore


FLOW = "proxies"


class ProxiesFlowConfig(SubsetTrainingConfig):
    """Full-data models with per-example records, and the proxies computed from them."""

    dataset: DatasetConfig = Field(DatasetConfig(name="digits"), description="what to score")
    model: str = Field("mlp_w128_d2", description="registry name, e.g. mlp_w128_d2, cnn1d_w32_d3, cnn_w16_d4, or the "
                       "name of an installed package's regularity.models entry point")
    train: TrainConfig = Field(TrainConfig(epochs=15, batch_size=32, lr=0.05), description="optimiser and schedule")
    n_models: int = Field(4, ge=1, description="full-data models whose records are averaged")
    shard_size: int = Field(4, ge=1, description="models trained together in one task")
    el2n_epoch: int = Field(2, ge=1, description="epoch (1-based) whose recorded error-vector norms give EL2N")
    kde_bandwidth: float | None = Field(None, gt=0, description="RBF bandwidth; empty = median pairwise distance")
    kde_chunk: int = Field(1024, ge=1, description="rows of the kernel matrix computed at once (memory: chunk x N)")
    lof_neighbors: int = Field(20, ge=1, description="neighbours of the local outlier factor (input space)")
    cscore_run: Annotated[str | None, RUN_REFERENCE] = Field(None, description="run id of a cscore run on the same data, for correlations and dynamics")
    dynamics_bins: int = Field(5, ge=2, description="C-score quantile bins of the learning-dynamics table")
    n_bootstrap: int = Field(200, ge=0, description="bootstrap resamples of the correlation intervals")
    cleanlab_folds: int = Field(5, ge=0, description="K of the K-fold models whose out-of-sample probabilities "
                                "feed cleanlab (with the cleanlab extra installed); 0 = none")

    @model_validator(mode="after")
    def _el2n_within_training(self):
        if self.el2n_epoch > self.train.epochs:
            raise ValueError(f"el2n_epoch={self.el2n_epoch} is after the last epoch (train.epochs={self.train.epochs})")
        if self.cleanlab_folds == 1:
            raise ValueError("cleanlab_folds=1 leaves no example out of sample: use 0 (no cleanlab) or 2 or more")
        return self


@flow(name=FLOW, description="Cheap proxies of the C-score: learning speed, forgetting, AUM, EL2N, densities, LOF.")
def proxies_flow(config: ProxiesFlowConfig = ProxiesFlowConfig(), data_root: str | None = None) -> str:
    """Run (or resume) the proxies pipeline of `config`; returns the run folder."""
    from core.runs.files import dataset_cache
    from core.runs.store import RunStore
    from flows.common import run_scope
    from flows.report import publish
    from flows.runner import configure_runtime, run_shards
    from tasks.common import shared_dataset
    from tasks.proxies import compute_proxies, fold_shard, record_shard

    data_root = checked_data_root(data_root)  # a deployment parameter may not point outside
    configure_runtime(config.runtime)
    dataset = shared_dataset(config.dataset, dataset_cache(data_root))
    check_fits(config, dataset, dataset.n_train, "dataset.n_train")
    cleanlab = use_cleanlab(config, dataset)
    cscores = (str(upstream_table("cscore_run", config.cscore_run, {"cscore": "cscores.parquet"}, data_root,
                                  config.dataset, dataset.fingerprint)) if config.cscore_run else None)
    store = RunStore.open(FLOW, config, data_root, inputs={"dataset": dataset.fingerprint})
    write_examples_table(store, dataset)
    shards = chunks(list(range(config.n_models)), config.shard_size)
    plan = [{"store": store, "shard": s, "model_ids": ids} for s, ids in enumerate(shards)]
    names = run_shards(record_shard, plan, config.runtime, "recorded training")
    out_of_sample = run_shards(fold_shard, [{"store": store}], config.runtime, "fold models")[0] if cleanlab else None
    compute_proxies(store, [r for r, _ in names], [f for _, f in names], cscores, out_of_sample)
    figures = store.figures(lambda: draw_figures(store, cscores))
    summary = (store.read_table("proxy_correlations.parquet") if cscores
               else store.read_table("proxies.parquet").describe().T.reset_index())
    findings = check_claims(store, names, cscores, run_scope(config, dataset))
    publish(store, summary, figures, f"C-score proxies of {dataset.n_train} {config.dataset.name} examples",
            findings=findings)
    return str(store.root)


def check_claims(store: RunStore, names: list[tuple[str, str]], cscores: str | None, scope: str) -> pd.DataFrame:
    """The paper's claims on proxies (`core.methods.proxies.proxies_findings`), one recorded model per seed."""
    from core.methods.proxies import proxies_findings
    from tasks.proxies import aligned_cscore, read_finals, read_records

    proxies = store.read_table("proxies.parquet")
    records = read_records(store, [r for r, _ in names])
    hidden = read_finals(store, [f for _, f in names])["hidden_label_contrast"]
    cscore = aligned_cscore(proxies["example_id"], cscores) if cscores else None
    return proxies_findings(proxies, records, hidden, cscore, store.config.dynamics_bins, scope)


def use_cleanlab(config: ProxiesFlowConfig, dataset: Dataset) -> bool:
    """Whether this run trains fold models for cleanlab: asked for and installed (else a warning); checked to fit."""
    from core.methods.label_quality import cleanlab_installed

    folds, n = config.cleanlab_folds, dataset.n_train
    if not folds:
        return False
    if folds > n:
        raise ValueError(f"cleanlab_folds={folds} is more folds than the {n} training examples")
    check_fits(config, dataset, n - -(-n // folds), f"cleanlab_folds={folds}")  # the largest fold is left out
    if not cleanlab_installed():
        get_run_logger().warning("cleanlab is not installed, so its scores are skipped: pip install -e '.[cleanlab]'")
        return False
    return True


def draw_figures(store: RunStore, cscores: str | None) -> list[Path]:
    """Proxy-vs-C-score scatter and learning dynamics (with a C-score run); detection curves (with noise)."""
    from core.plots.cscore import detection_curves
    from core.plots.proxies import dynamics_curves, proxy_scatter
    from tasks.proxies import FLAGS, aligned_cscore

    folder, figures = store.root / "figures", []
    proxies = store.read_table("proxies.parquet")
    scores = {n: proxies[n].to_numpy() for n in proxies.columns
              if n not in ("example_id", "source", "label", "is_noisy", "is_foreign", *FLAGS)}
    if cscores:
        cscore = aligned_cscore(proxies["example_id"], cscores)
        spearman = store.read_table("proxy_correlations.parquet").set_index("proxy")["spearman"].to_dict()
        figures.append(proxy_scatter(scores, cscore, spearman, folder / "proxy_vs_cscore.png"))
        figures.append(dynamics_curves(store.read_table("dynamics.parquet"), folder / "dynamics.png"))
        scores = {"cscore": cscore, **scores}
    for marks, name, what in (("is_noisy", "noise_detection.png", "mislabeled examples"),
                              ("is_foreign", "ood_detection.png", "foreign examples")):
        if marks in proxies and proxies[marks].any():
            figures.append(detection_curves(scores, proxies[marks].to_numpy(), folder / name, what))
    return figures
