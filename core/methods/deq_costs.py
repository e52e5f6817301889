"""What a DEQ and its explicit baselines (core.models.unrolled) cost, per model: the peak memory of one training
step and the seconds of inference, each measured on one model of a trained ensemble, alone.

Peak memory: on CUDA the caching allocator's peak counter (`torch.cuda.max_memory_allocated`) above what was
allocated before the step: exact, and only torch's tensors. On the CPU torch's allocations are invisible to
tracemalloc, and the process's peak resident set (VmHWM) does not see them either once the allocator reuses freed
memory (measured: 0 bytes for most steps of deq_w64 and unrolled16_w64 alike), so there the figure is the bytes of
the distinct tensors autograd keeps for the backward (`saved_tensors_hooks`), parameters left out: the graph, which
is what grows with the depth L; it leaves out transient buffers such as the solver's Anderson history.
`memory_method` says which a row holds.

Then the findings on what they cost: the regulariser's seconds per epoch, and the DEQ's against the explicit networks'.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from core.findings import Claim, findings_table, not_testable, ratio_below
from core.methods.deq import DEQ_PAPER, no_baselines
from core.training.ensemble import Ensemble

CUDA_PEAK, SAVED_FOR_BACKWARD = "cuda_max_memory_allocated", "autograd_saved_bytes"


def one_model(ensemble: Ensemble, k: int) -> Ensemble:
    """Model `k` of `ensemble` as an ensemble of one (its parameters and buffers shared, not copied)."""
    params = {name: p.detach()[k : k + 1] for name, p in ensemble.params.items()}
    buffers = {name: b[k : k + 1] for name, b in ensemble.buffers.items()}
    return Ensemble(ensemble.template, params, buffers, ensemble.precision)


def parameter_count(ensemble: Ensemble) -> int:
    """Trainable parameters of one model of `ensemble`."""
    return sum(p[0].numel() for p in ensemble.params.values())


def training_step(ensemble: Ensemble, x: Tensor, y: Tensor,
                  regularizer: Callable[[dict[str, Tensor]], Tensor] | None = None) -> None:
    """One training step's forward and backward (core.training.trainer.train's loss) on the batch (x, y), shared by
    every model, without the update."""
    logits = ensemble(x, shared=True, train=True)
    per_model = F.cross_entropy(logits.transpose(1, 2), y.expand(ensemble.size, -1), reduction="none").mean(1)
    if regularizer is not None:
        per_model = per_model + regularizer(ensemble.params)
    per_model.sum().backward()
    for p in ensemble.params.values():
        p.grad = None


def peak_memory(run: Callable[[], None], device: torch.device, parameters: set[int]) -> tuple[int, str]:
    """Bytes by which memory peaks above its level before `run()`, and the method (module docstring); `parameters`:
    the storage addresses of the parameters (not counted on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, CUDA_PEAK
    saved: dict[int, int] = {}  # storage address: bytes
    held: list[Tensor] = []  # every saved tensor stays alive until the count: no freed address is reused and merged

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
            held.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(saved.values()), SAVED_FOR_BACKWARD


@torch.no_grad()
def inference_seconds(ensemble: Ensemble, x: Tensor, batch_size: int) -> float:
    """Seconds the models of `ensemble` take to give logits for all of `x`, `batch_size` examples at a time."""
    synchronize = torch.cuda.synchronize if ensemble.device.type == "cuda" else (lambda: None)
    synchronize()
    start = time.perf_counter()
    for first in range(0, len(x), batch_size):
        ensemble(x[first : first + batch_size].to(ensemble.device), shared=True)
    synchronize()
    return time.perf_counter() - start


def model_costs(ensemble: Ensemble, x_step: Tensor, y_step: Tensor, x_test: Tensor, batch_size: int,
                regularizer_for: Callable[[Ensemble, int], Callable | None] = lambda one, k: None) -> dict[str, list]:
    """Per model k of `ensemble`, alone: trainable parameters, inference seconds over `x_test`, and the peak memory of
    one training step on (x_step, y_step), with `regularizer_for(one, k)` added to its loss (e.g. the DEQ's Jacobian
    penalty; None: the cross-entropy alone). A step runs once before it is measured (lazy initialisations)."""
    # a batch of its own, as the trainer gathers one: a slice would count its whole dataset's storage as saved
    x_step, y_step = x_step.to(ensemble.device).clone(), y_step.to(ensemble.device).clone()
    costs: dict[str, list] = {"parameters": [], "inference_seconds": [], "step_memory_bytes": [], "memory_method": []}
    for k in range(ensemble.size):
        one = one_model(ensemble, k)
        regularizer = regularizer_for(one, k)
        training_step(one, x_step, y_step, regularizer)
        addresses = {p.untyped_storage().data_ptr() for p in one.params.values()}
        peak, method = peak_memory(lambda: training_step(one, x_step, y_step, regularizer), ensemble.device, addresses)
        costs["parameters"].append(parameter_count(one))
        costs["inference_seconds"].append(inference_seconds(one, x_test, batch_size))
        costs["step_memory_bytes"].append(peak)
        costs["memory_method"].append(method)
    return costs


# Findings: the papers' cost claims, checked on deq_epochs, deq_baselines and deq_costs (tasks.deq writes them)


MINIMAL_COST = Claim(DEQ_PAPER, "This regularization adds only minimal computational cost.",
                     "training seconds of an epoch of the DEQs with the regulariser (gamma {gamma}, on the run's "
                     "penalty.fraction of the steps) over those without it (gamma 0), the same epoch")
AS_FAST = "DEQs run with approximately the same speed as conventional deep networks."
AS_FAST_IN_TRAINING = Claim(DEQ_PAPER, AS_FAST, "training seconds of an epoch of the DEQs (gamma {gamma}) over those "
                            "of the tied unrolled networks of depth {depth} (the same cell and parameters), the same "
                            "epoch")
AS_FAST_IN_INFERENCE = Claim(DEQ_PAPER, AS_FAST, "seconds of inference on the test set of one DEQ (gamma {gamma}) over "
                             "those of the tied unrolled network of depth {depth} of the same seed, each model alone")
REGULARISER_COST_THRESHOLD = 1.2  # "only minimal": under 1.2x the unregularised epoch (ours: the paper gives none)
SPEED_THRESHOLD = 1.5  # "approximately the same speed": under 1.5x the explicit network's (ours: the paper gives none)
THRESHOLD_IS_OURS = "the threshold {threshold:g} is ours (the paper gives no number)"
EPOCHS_PAIRED = ("replicates: the epochs, paired (an arm trains all its seeds in one pass, the same number in every "
                 "arm, so one seed's time is not separable; n_seeds: the seeds trained); wall-clock seconds of the "
                 "training steps alone (not the per-epoch probes) on the run's own machine, with other shards "
                 "possibly running beside them: noisy")
SEEDS_PAIRED = ("replicates: the seeds, each model timed alone with the run's solver settings, paired; wall-clock "
                "seconds on the run's own machine: noisy")
DEEPEST = ("against the deepest tied unrolled network trained: the conventional network of the DEQ's own size (its "
           "cell and parameters, run L times with plain backprop), and the deepest, as the paper's conventional "
           "networks (e.g. ResNet-101) are deep")


def cost_findings(epochs: pd.DataFrame, baselines: pd.DataFrame | None, costs: pd.DataFrame, scope: str,
                  model: str) -> pd.DataFrame:
    """Per regularised DEQ (gamma > 0): its epoch's training seconds over gamma 0's, paired by epoch; then its
    training seconds (paired by epoch) and inference seconds (paired by seed) over the deepest tied unrolled
    network's. `epochs`, `baselines`, `costs`: deq_epochs, deq_baselines (None: none trained) and deq_costs;
    `model`: the DEQ's registry name."""
    seeds, gammas = epochs["seed"].nunique(), sorted(set(epochs["gamma"]))
    regularised = [g for g in gammas if g > 0]
    per_epoch = epochs.drop_duplicates(["gamma", "epoch"]).set_index(["gamma", "epoch"])["epoch_seconds"]
    no_gamma = None if regularised else "gammas holds no positive gamma: add one such as 2.0"
    if no_gamma or 0 not in gammas:
        why = no_gamma or "gammas has no 0: add 0.0 (the unregularised DEQ) to gammas"
        rows = [not_testable(cost_claim(MINIMAL_COST, "> 0"), why, scope, seeds)]
    else:
        rows = [threshold_row(cost_claim(MINIMAL_COST, f"{gamma:g}"), per_epoch.loc[gamma] / per_epoch.loc[0.0],
                              scope, seeds, REGULARISER_COST_THRESHOLD, "epochs", EPOCHS_PAIRED)
                for gamma in regularised]
    why = no_baselines(model) if no_gamma is None and (baselines is None or baselines.empty) else no_gamma
    if why is not None:
        claims = (AS_FAST_IN_TRAINING, AS_FAST_IN_INFERENCE)
        return findings_table(rows + [not_testable(cost_claim(c, "> 0", "the largest"), why, scope, seeds)
                                      for c in claims])
    unrolled = baselines[baselines["network"] == "unrolled"]
    deepest = int(unrolled["depth"].max())
    explicit = unrolled[unrolled["depth"] == deepest].drop_duplicates("epoch").set_index("epoch")["epoch_seconds"]
    inference = costs.set_index(["network", "depth", "seed"])["inference_seconds"].sort_index()
    deq_inference = costs[costs["network"] == "deq"].set_index(["gamma", "seed"])["inference_seconds"]
    for gamma in regularised:
        training = per_epoch.loc[gamma] / explicit.reindex(per_epoch.loc[gamma].index)
        rows.append(threshold_row(cost_claim(AS_FAST_IN_TRAINING, f"{gamma:g}", deepest), training, scope, seeds,
                                  SPEED_THRESHOLD, "epochs", f"{EPOCHS_PAIRED}; {DEEPEST}"))
        mine = deq_inference.loc[gamma]
        rows.append(threshold_row(cost_claim(AS_FAST_IN_INFERENCE, f"{gamma:g}", deepest),
                                  mine / inference.loc["unrolled", deepest].reindex(mine.index), scope, seeds,
                                  SPEED_THRESHOLD, "seeds", f"{SEEDS_PAIRED}; {DEEPEST}"))
    return findings_table(rows)


def threshold_row(claim: Claim, ratios: pd.Series, scope: str, seeds: int, threshold: float, replicates: str,
                  why_these: str) -> dict:
    """`ratio_below` the threshold, its rule saying which replicates, why, and that the threshold is ours."""
    row = ratio_below(claim, ratios, scope, threshold, replicates, seeds)
    return {**row, "rule": f"{row['rule']}; {why_these}; {THRESHOLD_IS_OURS.format(threshold=threshold)}"}


def cost_claim(claim: Claim, gamma: str, depth: int | str = "") -> Claim:
    """`claim` with its measure naming the regularisation strength (and the unrolled network's depth)."""
    return replace(claim, measure=claim.measure.format(gamma=gamma, depth=depth))
