"""A convolutional DEQ cell, small, in the spirit of the paper's image models (Bai, Koltun & Kolter's MDEQ and the
implicit-layers tutorial's ResNetLayer): z* = f(z*, x), f(z, x) = GroupNorm(relu(conv(z) + inj(x))), with a 3x3
conv on the state z (bias-free, drawn N(0, 0.01) as the authors draw their cells' convs, so f starts close to
constant in z and both solvers converge) and a 3x3 conv injection of the image x (with a bias; stride 2 on images
of side 16 or more, as MDEQ's stem downsamples before its cells, so that the state stays small).

The solvers see each (model, example) state flattened, `[K, B, C*H*W]`: GroupNorm normalises each example's
channel groups apart, so f acts on each row alone, as core.models.deq's solvers require. All K models run as one
grouped conv and one group_norm over K*C channels (groups never straddle models: each model's groups are its own
consecutive channels).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.models.deq import DEQBlock
from core.models.fixed_point import BlockMap, Map

GROUPS = 4  # GroupNorm groups per model (MDEQ's NUM_GROUPS)
INIT_STD = 0.01  # the state conv's initial weights: N(0, INIT_STD), as the authors' cells


def injection_stride(side: int) -> int:
    """2 on images whose smaller side is 16 or more (e.g. 28x28 -> 14x14 states), else 1 (8x8 digits stay 8x8)."""
    return 2 if side >= 16 else 1


class DEQConv2d(DEQBlock):
    """z* = GroupNorm(relu(conv(z*) + inj(x))) of `channels` channels on images `[in_channels, H, W]`; its output is
    z* `[B, channels, H', W']` (H' = H / stride). Parameters: `weight` (the state conv), `input_weight` and `bias`
    (the injection), `norm_weight` and `norm_bias` (GroupNorm's affine)."""

    stacked_layout = "channels"  # core.training.ensemble's stacked fast path: [B, K*C, H, W]

    def __init__(self, in_channels: int, channels: int, stride: int = 1, solver: str = "anderson", tol: float = 1e-4,
                 max_iter: int = 30, backward_tol: float = 1e-4, backward_max_iter: int = 30, device=None,
                 dtype=None):
        super().__init__(solver, tol, max_iter, backward_tol, backward_max_iter)
        if channels % GROUPS:
            raise ValueError(f"a conv DEQ's channels must be a multiple of {GROUPS} (its GroupNorm groups), "
                             f"not {channels}")
        self.in_channels, self.channels, self.stride = in_channels, channels, stride
        cell = torch.empty(channels, channels, 3, 3).normal_(0, INIT_STD)
        injection = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1)
        self.weight = nn.Parameter(cell.to(device, dtype))
        self.input_weight = nn.Parameter(injection.weight.detach().to(device, dtype))
        self.bias = nn.Parameter(injection.bias.detach().to(device, dtype))
        self.norm_weight = nn.Parameter(torch.ones(channels, device=device, dtype=dtype))
        self.norm_bias = nn.Parameter(torch.zeros(channels, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        """One model on `[B, in_channels, H, W]` -> `[B, channels, H', W']`."""
        params = {name: p.unsqueeze(0) for name, p in self.named_parameters()}
        return self.forward_stacked(x, params, 1)

    def forward_stacked(self, x: Tensor, params: dict[str, Tensor], k: int) -> Tensor:
        """All K models on `[B, K*in_channels, H, W]` -> `[B, K*channels, H', W']`: one solve for all K models and B
        examples."""
        injection = F.conv2d(x, params["input_weight"].flatten(0, 1), params["bias"].flatten(), stride=self.stride,
                             padding=1, groups=k)
        batch, _, height, width = injection.shape

        def cell(injection: Tensor, weight: Tensor, norm_weight: Tensor, norm_bias: Tensor) -> Map:
            """f(z, x) for states `[k, b, C*H'*W']`, given the k models' parameters and the b examples' injection."""
            k, batch = len(weight), len(injection)

            def f(z: Tensor) -> Tensor:
                maps = z.reshape(k, batch, -1, height, width).transpose(0, 1).reshape(batch, -1, height, width)
                out = F.relu(F.conv2d(maps, weight.flatten(0, 1), padding=1, groups=k) + injection)
                out = F.group_norm(out, k * GROUPS, norm_weight.flatten(), norm_bias.flatten())
                return out.reshape(batch, k, -1).transpose(0, 1)
            return f

        models_params = params["weight"], params["norm_weight"], params["norm_bias"]
        by_model = injection.unflatten(1, (k, self.channels))  # [B, K, C, H', W']

        def block(models: Tensor, examples: Tensor) -> Map:
            """f on the rows of `models` x `examples` alone (the solver's rows still iterating)."""
            rows = by_model.index_select(0, examples).index_select(1, models).flatten(1, 2)
            return cell(rows, *(p.index_select(0, models) for p in models_params))

        z0 = injection.new_zeros(k, batch, self.channels * height * width)
        z = self.solve(BlockMap(cell(injection, *models_params), block), z0)
        return z.reshape(k, batch, self.channels, height, width).transpose(0, 1).reshape(batch, -1, height, width)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, channels={self.channels}, stride={self.stride}, "
                f"solver={self.solver}, tol={self.tol}, max_iter={self.max_iter}")
