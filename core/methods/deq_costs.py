"""What a DEQ and its explicit baselines (core.models.unrolled) cost, per model: the peak memory of one training
step and the seconds of inference, each measured on one model of a trained ensemble, alone.

Peak memory: on CUDA the caching allocator's peak counter (`torch.cuda.max_memory_allocated`) above what was
allocated before the step: exact, and only torch's tensors. On the CPU torch's allocations are invisible to
tracemalloc, and the process's peak resident set (VmHWM) does not see them either once the allocator reuses freed
memory (measured: 0 bytes for most steps of deq_w64 and unrolled16_w64 alike), so there the figure is the bytes of
the distinct tensors autograd keeps for the backward (`saved_tensors_hooks`), parameters left out: the graph, which
is what grows with the depth L; it leaves out transient buffers such as the solver's Anderson history.
`memory_method` says which a row holds.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

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

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
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
