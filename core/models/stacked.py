"""The stacked primitives: one layer of K models, parameters stacked along a leading model axis `[K, ...]`, run as
one batched kernel. Linear layers take activations `[K, F, B]` ("features"); convs and BatchNorm take
`[B, K*C, *spatial]` stored channels-last ("channels").

core.training.ensemble's fast path and the layer types with their own `forward_stacked` (core.models.dct_sparse,
core.models.deq, core.models.subspaces) are built from these; this module imports neither of them.
"""
from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def stacked_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`[K, out, B]` from `[K, in, B]`: W @ x needs no transposed weight, so its gradient needs no copy."""
    return torch.bmm(weight, x) if bias is None else torch.baddbmm(bias.unsqueeze(2), weight, x)


def stacked_conv(layer: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None, k: int) -> Tensor:
    """All K models' conv layer (`weight` `[K, out, in, *kernel]`; `layer` gives stride and padding) as one grouped
    conv; a 1-D conv runs as a 2-D one of height 1 (channels-last)."""
    weight, bias = weight.flatten(0, 1), None if bias is None else bias.flatten()
    if weight.dim() == 4:  # [K*out, in, kh, kw]: a 2-D conv
        return F.conv2d(x, weight, bias, stride=layer.stride, padding=layer.padding, groups=k)
    padding = layer.padding if isinstance(layer.padding, str) else (0, *layer.padding)
    out = F.conv2d(x.unsqueeze(2), weight.unsqueeze(2), bias, stride=(1, *layer.stride), padding=padding, groups=k)
    return out.squeeze(2)


@dataclass
class BatchNormMoments:
    """One BatchNorm layer's float64 count, sum and sum of squares per model and channel (`[K, C]`) of all the
    inputs it normalised, and the running statistics they are written to."""

    running_mean: Tensor
    running_var: Tensor
    count: int = 0
    total: Tensor | float = 0.0
    squares: Tensor | float = 0.0

    def add(self, x: Tensor) -> None:
        """Count in the channels of `x` (`[B, K*C, *spatial]`)."""
        dims, x = [0, *range(2, x.dim())], x.double()
        self.count += x.numel() // x.shape[1]
        self.total = self.total + x.sum(dims).view_as(self.running_mean)
        self.squares = self.squares + x.square().sum(dims).view_as(self.running_mean)

    def write(self) -> None:
        """Set the running mean and variance to the mean and unbiased variance of all that was counted."""
        mean = self.total / self.count
        self.running_mean.copy_(mean)
        # sum x^2 - n mean^2 cancels digits, but float64 holds ~9 more than float32 activations have
        self.running_var.copy_((self.squares - self.count * mean.square()) / (self.count - 1))


# set by core.training.recalibration.recalibrate_batchnorm: each layer's BatchNormMoments by id of its stacked running
# mean; a context variable, so another thread's forward passes never feed it
batch_norm_calibration: ContextVar[dict[int, BatchNormMoments] | None] = ContextVar("calibration", default=None)


def stacked_batch_norm(layer: nn.Module, x: Tensor, weight: Tensor, bias: Tensor, state: dict[str, Tensor]) -> Tensor:
    """All K models' BatchNorm on `[B, K*C, *spatial]`: one F.batch_norm over K*C channels with affine `weight`,
    `bias` `[K, C]` and `state`'s running statistics `[K, C]` (flat views: torch updates them in place), `layer`
    giving eps, momentum and the mode; in training mode it counts the batch in `state`'s `[K]` num_batches_tracked."""
    running_mean, running_var = state["running_mean"], state["running_var"]
    if layer.training:
        state["num_batches_tracked"].add_(1)
        if (calibration := batch_norm_calibration.get()) is not None:
            calibration.setdefault(id(running_mean), BatchNormMoments(running_mean, running_var)).add(x)
    one_d = x.dim() == 3  # [B, K*C, L] channels-last runs as 2-D of height 1, as the convs and pools do
    out = F.batch_norm(x.unsqueeze(2) if one_d else x, running_mean.view(-1), running_var.view(-1), weight.flatten(),
                       bias.flatten(), layer.training, layer.momentum, layer.eps)
    return out.squeeze(2) if one_d else out
