"""BatchNorm running statistics recomputed after training: exact over a set of examples, per model of an ensemble
(SWA's update_bn, and each evaluated point of a subspace)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from core.models.stacked import BatchNormMoments, batch_norm_calibration
from core.training.ensemble import Ensemble


def _batch_norm_layers(template: nn.Module) -> list[str]:
    """Names of the layers that keep BatchNorm running statistics (buffers `running_mean` and `running_var`)."""
    return [name for name, module in template.named_modules()
            if all(isinstance(getattr(module, stat, None), Tensor) for stat in ("running_mean", "running_var"))]


def calibration_chunks(n: int, batch_size: int) -> list[slice]:
    """Slices of range(n) in order, `batch_size` examples each; a last chunk of one example joins the one before
    (training-mode BatchNorm of a single example has no variance)."""
    if batch_size < 2 or n < 2:
        raise ValueError(f"BatchNorm recalibration needs two or more examples per chunk; got batch_size={batch_size} "
                         f"and {n} examples")
    bounds = [*range(0, n, batch_size), n]
    if bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]


@torch.no_grad()
def recalibrate_batchnorm(ensemble: Ensemble | nn.Module, x: Tensor, batch_size: int = 128) -> None:
    """Set every BatchNorm layer's running mean and unbiased variance, per model, to those of its input over all of
    `x` (`[N, ...]`, shared by all models), as every model sees it in training mode on `x` in order, in chunks of
    `batch_size` (`calibration_chunks`): each layer normalises with its chunk's statistics, as in training (SWA's
    update_bn), but the statistics kept are exact over `x`, not a momentum average. num_batches_tracked counts the
    chunks. A network without BatchNorm is left as it is; a plain nn.Module runs as a one-model ensemble."""
    if isinstance(ensemble, nn.Module):
        return _recalibrate_one_model(ensemble, x, batch_size)
    layers = _batch_norm_layers(ensemble.template)
    if not layers:
        return
    if not ensemble.stacked:
        raise ValueError("BatchNorm recalibration runs in the stacked fast path; this network runs through vmap")
    for name in layers:
        ensemble.buffers[f"{name}.running_mean"].zero_()
        ensemble.buffers[f"{name}.running_var"].fill_(1)
        ensemble.buffers[f"{name}.num_batches_tracked"].zero_()
    moments: dict[int, BatchNormMoments] = {}
    token = batch_norm_calibration.set(moments)
    try:
        for rows in calibration_chunks(len(x), batch_size):
            ensemble(x[rows].to(ensemble.device, non_blocking=True), shared=True, train=True)
    finally:
        batch_norm_calibration.reset(token)
    if len(moments) != len(layers):  # a layer with running statistics that stacked_batch_norm never ran
        raise ValueError(f"{len(layers) - len(moments)} of the BatchNorm layers {layers} did not run through "
                         "stacked_batch_norm; their statistics cannot be recalibrated")
    for layer in moments.values():
        layer.write()


def _recalibrate_one_model(model: nn.Module, x: Tensor, batch_size: int) -> None:
    """`recalibrate_batchnorm` of one plain model (in place), through a one-model ensemble."""
    if not _batch_norm_layers(model):
        return
    ensemble = Ensemble.from_models([model])
    recalibrate_batchnorm(ensemble, x, batch_size)
    for name, buffer in ensemble.buffers.items():
        model.get_buffer(name).copy_(buffer[0])
