"""`dct_sparse` flow: networks sparse from initialisation, with and without a frozen DCT offset, down to extreme sparsity.

Price & Tanner, "Dense for the Price of Sparse: Improved Performance of Sparsely Initialized Networks via a
Subspace Offset" (ICML 2021). Every Linear/Conv layer of `model` is
  dense       the plain layer, all weights trained;
  sparse      the plain layer with a random mask fixed at initialisation (per-layer densities by `heuristic`);
  dct_sparse  y = alpha * D x + S x + b: D a frozen orthonormal DCT-II shared by all models, S trained under the
              same mask as `sparse` of the same seed, alpha a trained scalar.
Masks are random (the paper's DCT+Sparse: per-layer densities by a heuristic) or chosen by a prune-at-initialisation
score of the plain network (SNIP, GraSP, SynFlow: the paper's competitors; `core.methods.prune_at_init`).
The claims to check: at extreme sparsity DCT+Sparse keeps training where plain sparse layers collapse, and with random
masks it matches the competitors' masks on plain layers.
"""
from __future__ import annotations

from typing import Literal

from prefect import flow
from pydantic import Field, field_validator

from core.config import Config, RuntimeConfig
from core.data.config import DatasetConfig
from core.training.config import TrainConfig
from flows.common import check_whole_set_fits, checked_data_root, distinct_values, plain_stackable_model

FLOW = "dct_sparse"
LayerType = Literal["dense", "sparse", "dct_sparse"]
MaskRule = Literal["random", "snip", "grasp", "synflow"]


class DCTSparseFlowConfig(Config):
    """One network trained dense, sparse and DCT+Sparse at a sweep of densities fixed at initialisation."""

    dataset: DatasetConfig = Field(DatasetConfig(name="mnist1d"), description="what to train on")
    model: str = Field("mlp_w256_d2", description="registry name of the plain network (no dct_ prefix): "
                       "mlp_w256_d2, mlp_h300-100, lenet_300_100, cnn1d_w32_d2, cnn_w16_d2")
    layer_types: list[LayerType] = Field(["dct_sparse", "dense", "sparse"], min_length=1,  # as the validator sorts
                                         description="how every Linear/Conv layer is built (one task each)")
    densities: list[float] = Field([0.1, 0.03, 0.01, 0.003, 0.001, 0.0003], min_length=1,
                                   description="fractions of each network's Linear/Conv weights that train (sparse "
                                   "and dct_sparse); every layer keeps at least one")
    mask_rules: list[MaskRule] = Field(
        ["grasp", "random", "snip", "synflow"], min_length=1,  # as the validator sorts
        description="how the sparse and dct_sparse masks are chosen (one task per layer type and rule): random (the "
        "paper's DCT+Sparse: positions at random, per-layer densities by heuristic), or the highest scores over all "
        "layers of the plain network at the same initial weights: snip (|grad x weight| on 10 examples per class), "
        "grasp (weight x Hessian-gradient product) or synflow (data-free, 100 rounds): the paper's competitors")
    heuristic: Literal["uniform", "erk", "epl"] = Field(
        "erk", description="how a random mask's density is split over layers: uniform (every layer alike), erk "
        "(Erdős–Rényi-Kernel: ~ (fan-in + fan-out + kernel) / weights) or epl (equal nonzeros per layer)")
    capping: Literal["authors", "redistribute"] = Field(
        "authors", description="a layer whose share would pass density 1: authors caps it as DCTpS does (erk: the "
        "excess is lost; epl: the last layer takes it), redistribute gives the excess to the other layers (RigL's "
        "ERK: the flow's earlier split)")
    patch_order: Literal["authors", "torch"] = Field(
        "authors", description="a DCT+Sparse conv's D applies to each input patch flattened as the authors' DCTconv2d "
        "does (kernel positions, channels fastest) or in PyTorch's weight order (channels, then kernel positions: the "
        "flow's earlier order); linear layers have no patch")
    sparse_init: Literal["zeros", "plain"] = Field(
        "zeros", description="where DCT+Sparse layers' S starts: zeros (the authors' DCT+Sparse runs, DCTpS's --init "
        "zeros) or plain (the plain layer's initial weights, this flow's earlier default); sparse and dense networks "
        "keep the plain initialisation")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="seed indices; every layer type and density trains "
                             "once per seed, sparse and dct_sparse of one seed on the same mask")
    train: TrainConfig = Field(TrainConfig(epochs=20, batch_size=128, lr=0.1), description="optimiser and schedule")
    seed: int = Field(0, ge=0, description="run seed: model seeds, masks and batch orders derive from it")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="execution settings; not part of the run id")

    @field_validator("model")
    @classmethod
    def _plain_stackable_model(cls, name: str) -> str:
        return plain_stackable_model(name, "layer_types decides which layers it gets (dct_sparse builds dct_<model>)")

    @field_validator("layer_types", "mask_rules", "densities", "seeds")
    @classmethod
    def _distinct_and_sorted(cls, values: list, info) -> list:
        return distinct_values(values, *SWEEP_LISTS[info.field_name], descending=info.field_name == "densities")


SWEEP_LISTS = {
    "layer_types": (lambda v: True, "distinct layer types"),
    "mask_rules": (lambda v: True, "distinct mask rules"),
    "densities": (lambda v: 0 < v < 1, "distinct fractions in (0, 1)"),
    "seeds": (lambda v: v >= 0, "distinct non-negative integers (a repeated seed repeats rows)"),
}


@flow(name=FLOW, description="Sparse-at-initialisation networks, plain and DCT+Sparse, at densities down to 0.03%.")
def dct_sparse_flow(config: DCTSparseFlowConfig = DCTSparseFlowConfig(), data_root: str | None = None) -> str:
    """Run (or resume) the sweep of `config`; returns the run folder."""
    from core.methods.dct_sparse import dct_sparse_findings
    from core.plots.dct_sparse import accuracy_vs_trainable_params
    from core.runs.files import dataset_cache
    from core.runs.store import RunStore
    from flows.common import run_scope
    from flows.report import publish
    from flows.runner import configure_runtime, run_shards
    from tasks.common import combine_shards, shared_dataset
    from tasks.dct_sparse import train_layer_type

    data_root = checked_data_root(data_root)  # a deployment parameter may not point outside
    configure_runtime(config.runtime)
    dataset = shared_dataset(config.dataset, dataset_cache(data_root))
    check_whole_set_fits(config.model, config.train.batch_size, dataset)
    store = RunStore.open(FLOW, config, data_root, inputs={"dataset": dataset.fingerprint})
    plan = [{"store": store, "layer_type": layer_type, "mask_rule": rule} for layer_type in config.layer_types
            for rule in (["none"] if layer_type == "dense" else config.mask_rules)]
    shards = run_shards(train_layer_type, plan, config.runtime, "layer types x mask rules")
    combine_shards(store, shards, "dct_sparse.parquet", [("layer_type", "ascending"), ("mask_rule", "ascending"),
                                                         ("density", "descending"), ("seed", "ascending")])
    results = store.read_table("dct_sparse.parquet")
    figures = store.figures(lambda: [accuracy_vs_trainable_params(
        results, 1 / dataset.num_classes, store.root / "figures" / "accuracy_vs_trainable_params.png")])
    summary = results.pivot_table(index="density", columns=["layer_type", "mask_rule"], values="test_accuracy")
    summary.columns = [t if rule == "none" else f"{t} ({rule})" for t, rule in summary.columns]
    summary = summary.sort_index(ascending=False).reset_index()
    findings = dct_sparse_findings(results, run_scope(config, dataset), config.sparse_init)
    publish(store, summary, figures, f"{config.model} on {config.dataset.name}: {', '.join(config.layer_types)} on "
            f"{', '.join(config.mask_rules)} masks at {len(config.densities)} densities (random: {config.heuristic}) x "
            f"{len(config.seeds)} seeds", findings=findings)
    return str(store.root)
