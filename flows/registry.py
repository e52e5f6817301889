"""The flows the CLI and the deployments know, imported only when used (prefect loads late)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class FlowEntry:
    """Where a flow and its config class live, what the flow does in one line, what its tables hold (for its report),
    and how the CLI checks that its models fit the data before any work."""

    module: str
    function: str
    config: str
    summary: str
    question: str = ""  # the common question the run answers, and which column of which table answers it
    tables: dict[str, str] = field(default_factory=dict)  # table name -> what one row is and what its numbers are
    fits: str | None = None  # a function (config, dataset) of the flow module that fails on data its models cannot take
    report_summary: str = ""  # what the rows and cells of the summary table in the flow's report are
    # the settings that tell this flow's runs apart in `regularity ls`, beside the dataset, model and training ones
    # (`core.runs.catalog.config_summary`); naming one of those places it
    summary_keys: tuple[str, ...] = ()
    # a config that fails a check of its own soon after the flow starts, so that a flow that does not call the
    # data-root guard yet stops before it writes anything (tests/test_hostile_input.py); required, so that a new
    # flow cannot skip that test by leaving it out ({} where the default config itself fails early)
    early_failure: dict[str, Any] = field(kw_only=True)

    def load(self) -> tuple[Any, type]:
        """The flow object and its pydantic config class."""
        module = importlib.import_module(self.module)
        return getattr(module, self.function), getattr(module, self.config)

    def config_class(self) -> type:
        """The pydantic config class (imports the flow module)."""
        return self.load()[1]

    def check_fits(self) -> Callable[[Any, Any], None]:
        """The flow's check that its models take the dataset: `fits`, else one model (`config.model`) and one batch
        (`config.train.batch_size`) against the whole training set, where the config has them."""
        if self.fits:
            return getattr(importlib.import_module(self.module), self.fits)
        from flows.common import check_whole_set_fits

        def whole_set_fits(config: Any, dataset: Any) -> None:
            batch_size = getattr(getattr(config, "train", None), "batch_size", None)
            if isinstance(getattr(config, "model", None), str) and batch_size is not None:
                check_whole_set_fits(config.model, batch_size, dataset)

        return whole_set_fits


# Shared sentences: tables several flows write alike.
EXAMPLES = ("one row per training and test example: which example each position of the per-example list columns "
            "refers to, its `example_id`, its `source` (the file, or the array and row, of your data that holds it), "
            "its label, true label, `is_noisy` and `is_foreign` (mixed in by dataset.foreign)")
NOISE_DETECTION = ("one row per score: how well a low score finds the mislabeled examples (AUROC, average precision, "
                   "precision at k = the number of noisy examples)")

FLOWS: dict[str, FlowEntry] = {
    "train": FlowEntry(
        "flows.train", "train_flow", "TrainFlowConfig",
        "train many models at once on seeded subsets; one Parquet row per model",
        summary_keys=("n_models",),
        question="How well and how consistently does this model learn the data? Read `test_accuracy` in "
                 "`models.parquet`, one row per model, or its mean and spread in `summary.parquet`.",
        tables={"models.parquet": "one row per model: its seed and subset size, accuracy on its subset, on the "
                                  "held-out rest, on the whole training set and on the test set, test loss, and per "
                                  "example whether it was in the subset and predicted correctly",
                "summary.parquet": "one row per metric (the accuracies and `test_loss`): mean, std, min and max "
                                   "over the models",
                "examples.parquet": EXAMPLES},
        report_summary="Each row is a metric of `models.parquet` (accuracies are fractions in 0..1, `test_loss` "
                       "is cross-entropy); the columns are its mean, std, min and max over the models.",
        early_failure={"dataset": {"name": "digits", "n_train": 10}}),
    "cscore": FlowEntry(
        "flows.cscore", "cscore_flow", "CScoreFlowConfig",
        "C-scores by holdout resampling: per-example consistency, memorization, reliability",
        summary_keys=("runs_per_ratio", "ratios"),
        question="Which examples are atypical or mislabeled? Sort `cscores.parquet` by `cscore` (ascending): "
                 "the lowest are the examples held-out models get wrong.",
        tables={"cscores.parquet": "one row per training example: its C-score (`cscore`, the held-out accuracy "
                                   "averaged over the subset ratios, 0..1, higher = more regular), its standard error "
                                   "`cscore_se`, `memorization`, how often it was held out, and the soft C-scores "
                                   "`cscore_soft` (the same average of the given label's probability) and "
                                   "`cscore_margin` (of its logit margin)",
                "heldout_probabilities.parquet": "one row per training example: the softmax of the models that held "
                                                 "it out, averaged like the C-score, its argmax, and cleanlab's label "
                                                 "quality and issue flag with them as pred_probs (with cleanlab)",
                "cscore_by_ratio.parquet": "one row per (training example, ratio): its held-out accuracy at that "
                                           "subset ratio (`score`) and the models that held it out",
                "test_cscores.parquet": "one row per test example: its C-score over all models (every model holds "
                                        "the test set out)",
                "runs.parquet": "one row per holdout model: its ratio and run, its accuracies, and per example "
                                "whether it trained on it and got it right",
                "summary.parquet": "one row for all examples (class -1), then one per class: mean and median "
                                   "C-score, memorization, split-half Spearman reliability and the 90th percentile "
                                   "of the standard error",
                "noise_detection.parquet": NOISE_DETECTION + ", for the C-score, its soft forms and cleanlab on the "
                                           "held-out probabilities",
                "ood_detection.parquet": "the same rows for the foreign examples mixed in by dataset.foreign (AUROC, "
                                         "average precision, precision at k = their number)",
                "examples.parquet": EXAMPLES},
        report_summary="One row for all examples (class -1), then one per class: the mean and median C-score "
                       "(held-out accuracy, 0..1), memorization, `split_half_spearman` (agreement of the C-scores of "
                       "the even and the odd runs; near 1 = reliable) and `cscore_se_p90` (90th percentile of the "
                       "per-example standard error).",
        early_failure={"dataset": {"name": "digits", "n_train": 10}}),
    "proxies": FlowEntry(
        "flows.proxies", "proxies_flow", "ProxiesFlowConfig",
        "cheap C-score proxies: learning speed, forgetting, AUM, EL2N, densities, LOF",
        summary_keys=("n_models", "train.epochs", "train.lr", "cscore_run"),
        question="Which labels are likely wrong? Sort `proxies.parquet` by `aum` (ascending; or "
                 "`cleanlab_label_quality`, or filter on `cleanlab_issue`): every proxy is oriented so that low means "
                 "irregular.",
        tables={"proxies.parquet": "one row per training example: each proxy of its regularity (learning speed "
                                   "`cum_accuracy`, `neg_forgetting`, `aum`, `neg_el2n`, `neg_final_loss`, input and "
                                   "hidden-space densities, `input_lof`, cleanlab's label quality), higher = more "
                                   "regular",
                "proxy_correlations.parquet": "one row per proxy (with `cscore_run`): its Spearman and Kendall "
                                              "correlation with the C-score, with bootstrap 95% intervals",
                "dynamics.parquet": "one row per (epoch, C-score bin) (with `cscore_run`): the training accuracy of "
                                    "the examples of that bin, lowest C-scores in bin 0",
                "out_of_sample.parquet": "one row per training example (with cleanlab): its fold and the softmax "
                                         "of the fold model that did not train on it",
                "noise_detection.parquet": NOISE_DETECTION + ", for every proxy (and the C-score, with `cscore_run`)",
                "ood_detection.parquet": "the same, for the foreign examples mixed in by dataset.foreign",
                "examples.parquet": EXAMPLES},
        report_summary="With `cscore_run`: one row per proxy, its Spearman and Kendall rank correlation with the "
                       "C-score (and 95% bootstrap bounds); without it: the distribution (count, mean, std, "
                       "quartiles) of each column of `proxies.parquet`.",
        early_failure={"dataset": {"name": "digits", "n_train": 10}, "cleanlab_folds": 0}),
    "filter_retrain": FlowEntry(
        "flows.filter_retrain", "filter_retrain_flow", "FilterRetrainFlowConfig",
        "remove the lowest-scoring examples (random / highest as controls), retrain, compare",
        summary_keys=("fractions", "arms", "train.epochs", "train.lr", "scores"),
        question="Does removing the lowest-scoring examples help? Compare `mean_test_accuracy` in "
                 "`filtering_summary.parquet` across arms at each `fraction_removed` (arm `none` is fraction 0).",
        tables={"filtering_summary.parquet": "one row per (arm, fraction removed): the mean test accuracy of the "
                                             "retrained models, its standard error, and how many models",
                "filtering.parquet": "one row per retrained model: arm, fraction removed, examples kept, mislabeled "
                                     "examples removed, test accuracy and loss",
                "scores.parquet": "one row per training example: the score removals were ranked by (low first)",
                "models.parquet": "one row per retrained model, with the `train` flow's columns (per-example "
                                  "lists included) plus its arm and fraction removed",
                "examples.parquet": EXAMPLES},
        report_summary="One row per (arm, fraction of the training set removed): the mean test accuracy (0..1) of "
                       "the retrained models, its standard error over seeds, and the number of models.",
        early_failure={"dataset": {"name": "digits", "n_train": 10}}),
    "card": FlowEntry(
        "flows.card", "card_flow", "CardFlowConfig",
        "the data card: every per-example score of a cscore and a proxies run in one table, and the data map",
        summary_keys=("cscore_run", "proxies_run"),
        question="Which examples should I look at? Sort `examples.parquet` by any `<name>_score` (ascending: low = "
                 "likely an issue), filter on `is_cleanlab_holdout_issue` or `is_cleanlab_issue`, and look at the "
                 "data map: wrong labels sit at low confidence and low variability.",
        tables={"examples.parquet": "one row per training example: `example_id`, `source`, `given_label`, "
                                    "`predicted_label` (held-out models' averaged probabilities), every score as "
                                    "`<name>_score` (low = likely an issue), cleanlab's flags as `is_<name>_issue`, the "
                                    "known `is_noisy` and `is_foreign`, and the cartography coordinates `confidence`, "
                                    "`variability` and `correctness` (with a proxies run)",
                "summary.parquet": "one row per score of the card: its mean, the examples its rule flags, and the "
                                   "AUROC of a low score for the wrong labels and for the foreign examples"},
        report_summary="One row per score of the card: its mean, how many examples its rule flags (cleanlab's "
                       "scores only), and, where the dataset marks them, the AUROC of a low score for the wrong labels "
                       "(`auroc_noisy`) and for the foreign examples (`auroc_foreign`); 0.5 is chance.",
        early_failure={}),
    "prune_grid": FlowEntry(
        "flows.prune_grid", "prune_grid_flow", "PruneGridFlowConfig",
        "iterative magnitude pruning with rewinding over width x depth x data-fraction grids",
        summary_keys=("family", "widths", "depths", "data_fractions", "seeds", "pruning.levels"),
        question="How does error grow as networks are pruned? Plot `test_error` against `density` in "
                 "`prune_errors.parquet`, per `network` and `data_fraction`; fit it with the scaling_law flow.",
        tables={"prune_errors.parquet": "one row per (network, data fraction, seed, pruning level): the density "
                                        "kept, parameters remaining, and the train and test error (0..1)",
                "weights/*/level-*.safetensors": "the trained weights and masks of each network at each level"},
        fits="check_grid",
        report_summary="One row per pruning level (0 = dense), one column per network: the mean test error (0..1) "
                       "over seeds and data fractions at that level.",
        early_failure={"dataset": {"name": "digits", "n_train": 10}}),
    "scaling_law": FlowEntry(
        "flows.scaling_law", "scaling_law_flow", "ScalingLawFlowConfig",
        "fit the error-vs-density law per network and jointly; extrapolate to the largest",
        summary_keys=("prune_run",),
        question="Does the law fit, and does it extrapolate? Read `sigma` and `sigma_over_spread` (near 1 = within "
                 "seed noise) of the scopes `joint` and `extrapolation` in `scaling_fit.parquet`.",
        tables={"scaling_fit.parquet": "one row per (scope, parameter): each fit's parameters with bootstrap 95% "
                                       "intervals, and its fit quality `mu`, `sigma` (relative error of the "
                                       "predictions) and `sigma_over_spread`",
                "scaling_predictions.parquet": "one row per seed mean (network, data fraction, level): the measured "
                                               "test error beside each fit's prediction"},
        report_summary="One row per scope (a curve `<network>@<data fraction>`, `joint`, `extrapolation`...): `mu` "
                       "and `sigma`, the mean and standard deviation of the relative prediction error "
                       "(predicted - measured) / measured, and `sigma_over_spread`, sigma over the seed-to-seed spread "
                       "`seed_spread` (near 1 = the fit is as good as the noise allows); a `warning` says why a "
                       "row's fit may be no result.",
        early_failure={}),
    "weight_correlation": FlowEntry(
        "flows.weight_correlation", "weight_correlation_flow", "WeightCorrelationFlowConfig",
        "R_p across learning rates; lottery ticket vs rewinding vs pruning and fine-tuning",
        summary_keys=("seeds", "pruning.levels", "learning_rates"),
        question="Is a lottery ticket better than pruning and fine-tuning at each learning rate? Compare "
                 "`test_accuracy` by `method` and `density` in `lt_vs_pf.parquet`; `r_p` in "
                 "`weight_correlation.parquet` says how much of the initial weight order training kept.",
        tables={"lt_vs_pf.parquet": "one row per (learning rate, method, pruning round, seed): density, the "
                                    "updates behind the network, and its test accuracy (0..1)",
                "weight_correlation.parquet": "one row per (learning rate, p, seed): R_p, the share of the top-p "
                                              "weights at initialisation still in the top p after dense training "
                                              "(about p = no correlation, 1 = order kept)",
                "weights/round-*.safetensors": "the weights and masks of every method after each round"},
        fits="check_sweep",
        report_summary="One row per learning rate: the dense test accuracy, the mean accuracy gaps lottery ticket - "
                       "random re-initialisation, fine-tune - lottery ticket and rewind - lottery ticket over the "
                       "pruned rounds (paired by seed and round; `_sem` = standard error over seeds), and R_p at each "
                       "p (`r_p@p`).",
        early_failure={"dataset": {"name": "digits", "n_train": 10}}),
    "dct_sparse": FlowEntry(
        "flows.dct_sparse", "dct_sparse_flow", "DCTSparseFlowConfig",
        "dense vs sparse vs DCT+Sparse layers, sparse from initialisation (random and SNIP/GraSP/SynFlow masks), "
        "down to extreme sparsity",
        summary_keys=("seeds", "layer_types", "mask_rules", "densities", "heuristic"),
        question="Does DCT+Sparse keep accuracy where a plain sparse layer loses it, and do its random masks match "
                 "the prune-at-initialisation ones? Compare `test_accuracy` by `layer_type` and `mask_rule` at each "
                 "`density` in `dct_sparse.parquet` (or against `trainable_params`).",
        tables={"dct_sparse.parquet": "one row per (layer type, mask rule, density, seed): trainable parameters, "
                                      "stored bytes, test accuracy (0..1) and final training loss"},
        report_summary="One row per density, one column per layer type and mask rule: the mean test accuracy (0..1) "
                       "over seeds (the `dense` column is the dense network at density 1).",
        early_failure={"dataset": {"name": "digits", "n_train": 10}}),
    "subspaces": FlowEntry(
        "flows.subspaces", "subspaces_flow", "SubspacesFlowConfig",
        "lines, curves and simplexes of networks vs standard training, accuracy and calibration",
        summary_keys=("seeds", "methods", "label_noise"),
        question="Does a subspace's midpoint beat standard training? Read `accuracy_gain` and `ece_change` per "
                 "`method` and `noise` in the summary below, or `accuracy` by `point` in `subspace_summary.parquet`.",
        tables={"subspace_summary.parquet": "one row per (method, noise, seed, point, members): test accuracy, "
                                            "mean confidence and ECE of the midpoint, the ends, the ends' ensemble, "
                                            "and of standard training and of SWA (method `swa`, point `model`), after "
                                            "the last epoch; points `midpoint_best` and `model_best`: the same at the "
                                            "best validation epoch (early-stopped)",
                "subspace_epochs.parquet": "one row per (method, noise, seed, epoch, point): accuracy on the "
                                           "validation split (noisy labels, like training's) and test accuracy, mean "
                                           "confidence and ECE after `epoch` epochs, of the standard model and SWA's "
                                           "average (point `model`, SWA from swa_start on) and of each subspace's "
                                           "midpoint (BatchNorm recomputed on 2048 training examples)",
                "subspace_alpha.parquet": "one row per (method, alpha, noise, seed): test accuracy and ECE of the "
                                          "network at that point along the path"},
        fits="check_sweep",
        report_summary="One row per (label noise, method): midpoint minus standard training in test accuracy "
                       "(`accuracy_gain`) and in expected calibration error (`ece_change`, lower = better "
                       "calibrated), the ends' ensemble minus a standard ensemble of as many members "
                       "(`ensemble_gain`), the midpoint's accuracy gain with each at its best validation epoch "
                       "(`early_stopped_gain`), each paired by seed with its standard error (`_sem`), beside the "
                       "means they come from.",
        early_failure={"dataset": {"name": "digits", "n_train": 10}}),
    "deq": FlowEntry(
        "flows.deq", "deq_flow", "DEQFlowConfig",
        "deep equilibrium models with and without Jacobian regularisation: solver steps, ||J||, accuracy",
        summary_keys=("seeds", "gammas"),
        question="Does Jacobian regularisation make the equilibrium easier to find? Compare `train_forward_steps`, "
                 "`jacobian_frobenius` and `accuracy` across `gamma` (0 = none) by `epoch` in `deq_epochs.parquet`.",
        tables={"deq_epochs.parquet": "one row per (gamma, seed, epoch): training loss, solver steps and residuals "
                                      "forward and backward, ||J_f||_F^2 / D, spectral radius and test accuracy",
                "deq_inference.parquet": "one row per (gamma, seed, epoch, cap): test accuracy and residual when the "
                                         "solver may take only `cap` iterations",
                "deq_baselines.parquet": "one row per (network, depth, seed, epoch) of the explicit baselines "
                                         "(`unrolled`: the DEQ's cell run `depth` times, tied; `explicit`: untied "
                                         "layers): training loss, test accuracy and epoch seconds",
                "deq_costs.parquet": "one row per (network, gamma, depth, seed), the DEQ (`deq`, depth 0) at every "
                                     "gamma and each baseline (gamma NaN): parameters, last-epoch test accuracy, "
                                     "mean epoch seconds (all seeds together), one model's inference seconds over "
                                     "the test set and memory of one training step (`memory_method`: CUDA's "
                                     "allocator peak or, on the CPU, the bytes autograd saves for the backward)"},
        report_summary="One row per gamma (weight of the Jacobian regulariser, 0 = none) at the last epoch: means "
                       "over seeds of test accuracy, solver steps forward and backward, ||J_f||_F^2 / D, spectral "
                       "radius and epoch seconds (`_sem` = standard error), and the residual at each solver cap "
                       "(`residual_cap<c>`).",
        early_failure={"dataset": {"name": "digits", "n_train": 10}}),
    "lime_data": FlowEntry(
        "flows.lime_data", "lime_data_flow", "LimeDataFlowConfig",
        "LIME's Deduct/Abduct/Induct examples (Mixed; copy, reverse controls) to sharded Parquet",
        summary_keys=("task", "examples"),
        question="What did it generate? Read the examples as one table from `examples/` (token ids in `source` and "
                 "`target`, the `task` of each); `lime_shards.parquet` counts them per shard and task.",
        tables={"examples/part-*.parquet": "one row per example, one file per shard: its index, task, and the token "
                                           "ids of its source and target",
                "lime_shards.parquet": "one row per (shard, task): the examples of that task in the shard and their "
                                       "mean and longest source and target, in tokens"},
        report_summary="One row per task over all shards: examples, their share of the run, and the mean and "
                       "longest source and target, in tokens.",
        early_failure={"examples": 10**12, "shard_size": 10**9}),  # ~240 TB of Parquet: more than the disk holds
    "lime_pretrain": FlowEntry(
        "flows.lime_pretrain", "lime_pretrain_flow", "LimePretrainFlowConfig",
        "transformer pretrained on LIME vs a control vs scratch, fine-tuned on term rewriting",
        summary_keys=("seeds", "arms"),
        question="Does LIME pretraining help? Compare `examples_needed` per `task` and `arm` (fewer = better) in "
                 "`lime_sample_efficiency.parquet`, or `exact_match` by `train_examples` in "
                 "`lime_finetune_curves.parquet`.",
        tables={"lime_sample_efficiency.parquet": "one row per (downstream task, arm, seed, exact-match threshold): "
                                                  "the downstream training-set size needed to reach it",
                "lime_finetune_curves.parquet": "one row per (downstream task, arm, seed, training-set size, step) of "
                                                "fine-tuning: training loss, test exact match and token accuracy "
                                                "(0..1)",
                "lime_pretrain_curves.parquet": "one row per (arm, seed, step) of pretraining: training loss, "
                                                "held-out exact match and token accuracy",
                "pretrained/*.safetensors": "the pretrained weights of each arm and seed"},
        report_summary="One row per (downstream task, arm, training-set size): the test exact match (0..1) after "
                       "fine-tuning, its standard error, min and max over seeds, and `examples_for_<t>`, the median "
                       "training-set size at which a seed reached exact match t.",
        early_failure={"lime": {"case_length": [2, 64], "rule_math": [5, 200]}}),  # sequences past the positions
}
