"""The unit of work every pipeline shards: train K models on their own subsets, evaluate everywhere.

`train_on_subsets(dataset, model, seeds, subsets, train) -> ShardOutcome` is a pure function of its
arguments (seeds fix init and batch order), so a shard recomputed after a crash gives the same rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from core.config import derive_seed
from core.data.datasets import Dataset
from core.runs.rows import pack_bool_rows, pack_float_rows, pack_half_rows
from core.training.config import TrainConfig
from core.training.ensemble import Ensemble, Evaluation, evaluate
from core.training.trainer import TrainingRecord, TrainResult, train

# independent random streams derived from one model seed (a second initialisation; a sparse mask; a subspace's
# per-step coefficient draws or penalty draws; the other members of a seed's ensemble; probes of a run's monitor)
(INIT_STREAM, ORDER_STREAM, SUBSET_STREAM, REINIT_STREAM, MASK_STREAM, DRAW_STREAM, MEMBER_STREAM,
 MONITOR_STREAM) = range(8)


def model_seed(run_seed: int, model_id: int) -> int:
    """The seed of model `model_id` in a run seeded with `run_seed`."""
    return derive_seed(run_seed, model_id)


def ratio_seed(run_seed: int, ratio_index: int) -> int:
    """The seed of the balanced holdout design at ratio `ratio_index` of a run seeded with `run_seed`."""
    return derive_seed(run_seed, ratio_index, SUBSET_STREAM)


def subset_size(ratio: float, n: int) -> int:
    """floor(ratio * n), without floating-point loss: 0.7 * 90 is 62.99999999999999 but gives 63."""
    return math.floor(round(ratio * n, 9))


def subset_mask(n: int, size: int, seed: int) -> Tensor:
    """Bool `[n]` marking a seeded random choice of `size` of the n examples."""
    if not 0 < size <= n:
        raise ValueError(f"a subset of {size} examples cannot be drawn from {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, SUBSET_STREAM)))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[:size]] = True
    return mask


def random_subsets(n: int, size: int, seeds: list[int]) -> Tensor:
    """Bool `[K, n]`: row k is `subset_mask(n, size, seeds[k])`."""
    return torch.stack([subset_mask(n, size, seed) for seed in seeds])


def holdout_chain(n: int, held: int, blocks: int, seed: int) -> np.ndarray:
    """The first `blocks * held` entries of a chain of seeded permutations of range(n), cut so that no
    block of `held` consecutive entries repeats an example.

    Permutation j comes from `derive_seed(seed, j)`. Where a block straddles two permutations, the
    examples of the first permutation's tail move behind the block in the second (a stable
    reordering): each permutation still holds every example once, so any first r blocks hold each
    example floor(r * held / n) or ceil(r * held / n) times.
    """
    if not 0 < held < n:
        raise ValueError(f"a held-out block of {held} examples must leave 1 to {n - 1} of {n} in the subset")
    chain: list[np.ndarray] = []
    filled = 0
    for j in range(-(-blocks * held // n)):
        permutation = np.random.default_rng(derive_seed(seed, j)).permutation(n)
        tail = chain[-1][n - filled % held:] if filled % held else np.empty(0, np.int64)
        if len(tail):  # this block began in the previous permutation: keep its tail's examples out of its head
            clash = np.isin(permutation, tail)
            head = permutation[~clash][: held - len(tail)]
            permutation = np.concatenate([head, permutation[~np.isin(permutation, head)]])
        chain.append(permutation)
        filled += n
    return np.concatenate(chain)[: blocks * held] if chain else np.empty(0, np.int64)


def balanced_subsets(n: int, size: int, runs: list[int], seed: int) -> Tensor:
    """Bool `[K, n]`: run r trains on all but block r of `holdout_chain` (its `n - size` held-out examples).

    A pure function of (n, size, run, seed): the same run gets the same subset whatever else is asked,
    and runs 0..R-1 hold every example out floor((n - size) R / n) or ceil((n - size) R / n) times.
    """
    held = n - size
    chain = holdout_chain(n, held, max(runs) + 1, seed)
    subsets = torch.ones(len(runs), n, dtype=torch.bool)
    for row, run in enumerate(runs):
        subsets[row, torch.from_numpy(chain[run * held : (run + 1) * held])] = False
    return subsets


def holdout_subsets(design: str, n: int, size: int, runs: list[int], seeds: list[int], design_seed: int) -> Tensor:
    """Bool `[K, n]` subsets of `size` for `runs`: balanced (blocks of one holdout chain per ratio) or
    independent (one random subset per model seed)."""
    if design == "balanced":
        return balanced_subsets(n, size, runs, design_seed)
    return random_subsets(n, size, seeds)


@dataclass
class ShardOutcome:
    """Trained models and their outcomes on every training and test example."""

    ensemble: Ensemble
    train: Evaluation  # [K, N] on the whole training set, in and out of each subset
    test: Evaluation  # [K, M]
    result: TrainResult

    @property
    def record(self) -> TrainingRecord | None:
        """Per-epoch outcomes recorded during training, when asked for."""
        return self.result.record


def train_on_subsets(
    dataset: Dataset,
    model: str,
    seeds: list[int],
    subsets: Tensor,
    config: TrainConfig,
    device: torch.device | str = "cpu",
    record: bool = False,
    masks: dict[str, Tensor] | None = None,
    progress: bool = False,
    precision: str = "fp32",
) -> ShardOutcome:
    """Train model k (init and batch order from `seeds[k]`) on the examples where `subsets[k]`, at `precision`."""
    init_seeds = [derive_seed(s, INIT_STREAM) for s in seeds]
    order_seeds = [derive_seed(s, ORDER_STREAM) for s in seeds]
    ensemble = Ensemble.init(model, dataset.input_shape, dataset.num_classes, init_seeds, device, precision)
    result = train(ensemble, dataset.x_train, dataset.y_train, subsets, order_seeds, config,
                   masks=masks, record=record, progress=progress)
    # the held-out models' summed probabilities come from the same forward pass (cleanlab's pred_probs, averaged later)
    return ShardOutcome(ensemble, evaluate(ensemble, dataset.x_train, dataset.y_train, sum_probabilities_of=~subsets),
                        evaluate(ensemble, dataset.x_test, dataset.y_test), result)


def masked_row_mean(values: Tensor, mask: Tensor) -> np.ndarray:
    """Row means over the entries where `mask` is True (NaN for rows with none)."""
    counts = mask.sum(1)
    sums = (values.float() * mask).sum(1)
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.nan).numpy()


def outcome_table(model_ids: list[int], seeds: list[int], subsets: Tensor, outcome: ShardOutcome) -> pa.Table:
    """One row per model: accuracies, loss curve, and dense per-example membership and correctness."""
    train_correct, test_correct = outcome.train.correct, outcome.test.correct
    return pa.table({
        "model_id": pa.array(model_ids, pa.int64()),
        "seed": pa.array(seeds, pa.int64()),
        "n_subset": pa.array(subsets.sum(1).numpy(), pa.int64()),
        "steps": pa.array(outcome.result.steps.numpy(), pa.int64()),
        "subset_accuracy": pa.array(masked_row_mean(train_correct, subsets), pa.float64()),
        "heldout_accuracy": pa.array(masked_row_mean(train_correct, ~subsets), pa.float64()),
        "train_accuracy": pa.array(train_correct.float().mean(1).numpy(), pa.float64()),
        "test_accuracy": pa.array(test_correct.float().mean(1).numpy(), pa.float64()),
        "test_loss": pa.array(outcome.test.loss.mean(1).numpy(), pa.float64()),
        "epoch_loss": pack_float_rows(outcome.result.losses.numpy()),
        "in_subset": pack_bool_rows(subsets.numpy()),
        "train_correct": pack_bool_rows(train_correct.numpy()),
        "test_correct": pack_bool_rows(test_correct.numpy()),
        # the soft C-scores' inputs: probability of the given label, logit margin over the best other label
        "train_label_prob": pack_half_rows(outcome.train.label_prob.numpy()),
        "train_margin": pack_half_rows(outcome.train.margin.numpy()),
    })


def heldout_probability_table(subsets: Tensor, outcome: ShardOutcome) -> pa.Table:
    """One row per training example: how many of the shard's models held it out, and the sum of their softmax
    probabilities (`[C]`), which averaged over a ratio's shards are out-of-sample predictions."""
    sums = outcome.train.probability_sum.numpy().astype(np.float32)
    return pa.table({"n_heldout": pa.array((~subsets).sum(0).numpy(), pa.int32()),
                     "probability_sum": pa.FixedSizeListArray.from_arrays(pa.array(sums.ravel()), sums.shape[1])})
