"""The flows the CLI and the deployments know, imported only when used (prefect loads late)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FlowEntry:
    """Where a flow and its config class live, and what the flow does in one line."""

    module: str
    function: str
    config: str
    summary: str

    def load(self) -> tuple[Any, type]:
        """The flow object and its pydantic config class."""
        module = importlib.import_module(self.module)
        return getattr(module, self.function), getattr(module, self.config)

    def config_class(self) -> type:
        """The pydantic config class (imports the flow module)."""
        return self.load()[1]


FLOWS: dict[str, FlowEntry] = {
    "train": FlowEntry("flows.train", "train_flow", "TrainFlowConfig",
                       "train many models at once on seeded subsets; one Parquet row per model"),
    "cscore": FlowEntry("flows.cscore", "cscore_flow", "CScoreFlowConfig",
                        "C-scores by holdout resampling: per-example consistency, memorization, reliability"),
    "proxies": FlowEntry("flows.proxies", "proxies_flow", "ProxiesFlowConfig",
                         "cheap C-score proxies: learning speed, forgetting, AUM, EL2N, densities, LOF"),
    "filter_retrain": FlowEntry("flows.filter_retrain", "filter_retrain_flow", "FilterRetrainFlowConfig",
                                "remove the lowest-scoring examples (random / highest as controls), retrain, compare"),
    "prune_grid": FlowEntry("flows.prune_grid", "prune_grid_flow", "PruneGridFlowConfig",
                            "iterative magnitude pruning with rewinding over width x depth x data-fraction grids"),
    "scaling_law": FlowEntry("flows.scaling_law", "scaling_law_flow", "ScalingLawFlowConfig",
                             "fit the error-vs-density law per network and jointly; extrapolate to the largest"),
    "weight_correlation": FlowEntry("flows.weight_correlation", "weight_correlation_flow", "WeightCorrelationFlowConfig",
                                    "R_p across learning rates; lottery ticket vs rewinding vs pruning and fine-tuning"),
    "dct_sparse": FlowEntry("flows.dct_sparse", "dct_sparse_flow", "DCTSparseFlowConfig",
                            "dense vs sparse vs DCT+Sparse layers, sparse from initialisation, down to extreme sparsity"),
    "subspaces": FlowEntry("flows.subspaces", "subspaces_flow", "SubspacesFlowConfig",
                           "lines, curves and simplexes of networks vs standard training, accuracy and calibration"),
    "deq": FlowEntry("flows.deq", "deq_flow", "DEQFlowConfig",
                     "deep equilibrium models with and without Jacobian regularisation: solver steps, ||J||, accuracy"),
    "lime_data": FlowEntry("flows.lime_data", "lime_data_flow", "LimeDataFlowConfig",
                           "LIME's Deduct/Abduct/Induct examples (Mixed; copy, reverse controls) to sharded Parquet"),
    "lime_pretrain": FlowEntry("flows.lime_pretrain", "lime_pretrain_flow", "LimePretrainFlowConfig",
                               "transformer pretrained on LIME vs a control vs scratch, fine-tuned on term rewriting"),
}
