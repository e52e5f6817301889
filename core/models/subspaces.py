"""Learning Neural Network Subspaces (Wortsman et al., ICML 2021): lines, curves and simplexes of networks.

A subspace layer holds m endpoint weight sets W_1..W_m (`weight` `[m, out, in, *kernel]`, `bias` `[m, out]`), each
initialised independently, and runs with the weights sum_i c_i W_i for coefficients c set on it before the forward
(`coefficients`: `[m]` for one model, `[K, m]` on a stacked ensemble's template). Each training step draws c from a
generator per model (a line, a quadratic Bezier curve with a trained control point, or a uniform point of the
simplex; one draw for the network or one per layer) through core.training.trainer.train's `hooks.step`, and adds
beta cos^2(w_i, w_j) of a random endpoint pair through its `hooks.regularizer`. One backward trains every endpoint: the
gradient of W_i is c_i times that of the combined weight.

BatchNorm's affine weight and bias are interpolated the same way (`SubspaceBatchNorm`); its running statistics are
one set per model, meaningful only at the point they were gathered at, so every evaluated point recomputes them
from the training set (core.training.recalibration.recalibrate_batchnorm). The cos^2 regulariser is on the weights of
the linear and conv layers only: it measures how far apart the endpoints point, and BatchNorm's per-channel scales
start equal (all ones) at every endpoint, so they stay out of it.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair, _single

from core.models.names import Kind
from core.models.stacked import stacked_batch_norm, stacked_conv, stacked_linear

ENDPOINTS = {"line": 2, "curve": 3}  # a simplex takes any m >= 2


class _SubspaceLayer(nn.Module):
    """What subspace linear, conv and BatchNorm layers share: m endpoints, their coefficients, their combination."""

    def _endpoints(self, m: int, shape: tuple[int, ...], bias: bool, device, dtype) -> None:
        """Parameters `weight` `[m, *shape]` and `bias` `[m, out]`, endpoint after endpoint drawn as nn.Linear and
        nn.Conv draw their default init (the same code), from the global RNG."""
        self.endpoints, self.coefficients = m, None  # coefficients: set per step, not a parameter
        self.weight = nn.Parameter(torch.empty(m, *shape, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(m, shape[0], device=device, dtype=dtype)) if bias else None
        with torch.no_grad():
            for i in range(m):
                nn.Linear.reset_parameters(SimpleNamespace(weight=self.weight[i],
                                                           bias=None if self.bias is None else self.bias[i]))

    def _combined(self) -> tuple[Tensor, Tensor | None]:
        """This one model's weight and bias at its coefficients `[m]`."""
        c = self.coefficients
        if c is None or c.shape != (self.endpoints,):
            raise ValueError(f"a single subspace model needs coefficients of shape [{self.endpoints}] (set_coefficients"
                             f" or fix_coefficients), not {None if c is None else list(c.shape)}")
        return torch.tensordot(c, self.weight, 1), None if self.bias is None else torch.tensordot(c, self.bias, 1)

    def _combined_stacked(self, params: dict[str, Tensor], k: int) -> tuple[Tensor, Tensor | None]:
        """All K models' weights and biases `[K, ...]` from `[K, m, ...]` endpoints, by one einsum each; with
        `wants_gram` set, the weight's endpoint Gram `[K, m, m]` too, kept for `step_gram`."""
        if self.coefficients is None:
            raise ValueError("set the subspace coefficients before the forward (set_coefficients or fix_coefficients)")
        c = self.coefficients.expand(k, self.endpoints)  # [m]: every model at the same point
        weight, bias = params["weight"], params.get("bias")
        if getattr(self, "wants_gram", False) and torch.is_grad_enabled():
            combined, gram = _CombineEndpointsWithGram.apply(c, weight)
            self._gram = (gram, weight, weight._version)
        else:
            combined = _CombineEndpoints.apply(c, weight)
        return combined, None if bias is None else _CombineEndpoints.apply(c, bias)

    def step_gram(self, weight: Tensor) -> Tensor:
        """`[K, m, m]` endpoint Gram of `weight` (this layer's stacked endpoints): the one this step's forward made
        where it made one of these very weights (same tensor, not updated since), else a fresh `_EndpointGram`."""
        gram, of, version = getattr(self, "_gram", None) or (None, None, None)
        self._gram = None  # used once: a later step's forward makes the next
        if of is weight and version == weight._version:
            return gram
        return _EndpointGram.apply(weight)


class _CombineEndpoints(torch.autograd.Function):
    """`[K, ...]` sum_i c[k, i] W[k, i] of coefficients `[K, m]` and endpoints `[K, m, ...]`; the endpoints' gradient
    is one broadcast product c[k, i] * grad[k] (einsum's own backward runs an outer-product bmm, several times
    slower on the CPU; the values are the same single products)."""

    @staticmethod
    def forward(ctx, coefficients: Tensor, endpoints: Tensor) -> Tensor:
        ctx.save_for_backward(coefficients, endpoints)
        return torch.einsum("km,km...->k...", coefficients, endpoints)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        coefficients, endpoints = ctx.saved_tensors
        grad_coefficients = torch.einsum("k...,km...->km", grad, endpoints) if ctx.needs_input_grad[0] else None
        grad_endpoints = None
        if ctx.needs_input_grad[1]:
            grad_endpoints = coefficients.view(*coefficients.shape, *(1,) * (grad.dim() - 1)) * grad.unsqueeze(1)
        return grad_coefficients, grad_endpoints


class _CombineEndpointsWithGram(torch.autograd.Function):
    """`_CombineEndpoints` and `_EndpointGram` of the same endpoints in one: the cos^2 regulariser's Gram is taken
    where the combination reads the endpoints anyway, and the backward writes the endpoints' gradient
    c[k, i] grad[k] + (g + g^T) W in one product and one in-place bmm, not two tensors autograd then adds (the MLP
    line's step spent a quarter of its time in that add, K = 32)."""

    @staticmethod
    def forward(ctx, coefficients: Tensor, endpoints: Tensor) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(coefficients, endpoints)
        flat = endpoints.flatten(2)
        return torch.einsum("km,km...->k...", coefficients, endpoints), torch.bmm(flat, flat.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: Tensor | None, grad_gram: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        coefficients, endpoints = ctx.saved_tensors
        grad_coefficients = grad_endpoints = None
        if ctx.needs_input_grad[0] and grad is not None:
            grad_coefficients = torch.einsum("k...,km...->km", grad, endpoints)
        if ctx.needs_input_grad[1]:
            flat = endpoints.flatten(2)
            if grad is None:
                grad_endpoints = torch.zeros_like(endpoints)
            else:
                grad_endpoints = coefficients.view(*coefficients.shape, *(1,) * (grad.dim() - 1)) * grad.unsqueeze(1)
            if grad_gram is not None:  # contiguous, so that flatten is a view the bmm writes through (a conv's
                grad_endpoints = grad_endpoints.contiguous()  # weight gradient comes with two axes swapped)
                grad_endpoints.flatten(2).baddbmm_(grad_gram + grad_gram.transpose(1, 2), flat)
        return grad_coefficients, grad_endpoints


class SubspaceLinear(_SubspaceLayer):
    """nn.Linear with weights sum_i c_i W_i over m endpoints."""

    stacked_layout = "features"  # core.training.ensemble's stacked fast path: [K, F, B]
    stacked_output_fresh = True  # its output is baddbmm's own, unread by any backward: a ReLU may overwrite it

    def __init__(self, in_features: int, out_features: int, endpoints: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._endpoints(endpoints, (out_features, in_features), bias, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        """One model on `[..., in]`."""
        return F.linear(x, *self._combined())

    def forward_stacked(self, x: Tensor, params: dict[str, Tensor], k: int) -> Tensor:
        """All K models on `[K, in, B]`: one batched matmul with each model's combined weight."""
        return stacked_linear(x, *self._combined_stacked(params, k))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, endpoints={self.endpoints}"


class SubspaceConv(_SubspaceLayer):
    """nn.Conv1d / nn.Conv2d (zero padding, one group, no dilation) with kernels sum_i c_i W_i over m endpoints."""

    stacked_layout = "channels"  # core.training.ensemble's stacked fast path: [B, K*C, *spatial], channels-last

    def __init__(self, in_channels: int, out_channels: int, kernel_size, endpoints: int, stride=1, padding=0,
                 bias: bool = True, spatial_dims: int = 2, device=None, dtype=None):
        super().__init__()
        as_tuple = {1: _single, 2: _pair}[spatial_dims]
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = as_tuple(kernel_size), as_tuple(stride)
        self.padding = padding if isinstance(padding, str) else as_tuple(padding)  # as nn.Conv keeps them
        self._endpoints(endpoints, (out_channels, in_channels, *self.kernel_size), bias, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        """One model on `[B, C, *spatial]`."""
        conv = F.conv1d if len(self.kernel_size) == 1 else F.conv2d
        return conv(x, *self._combined(), self.stride, self.padding)

    def forward_stacked(self, x: Tensor, params: dict[str, Tensor], k: int) -> Tensor:
        """All K models on `[B, K*C, *spatial]`: one grouped conv with each model's combined kernel."""
        return stacked_conv(self, x, *self._combined_stacked(params, k), k)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, endpoints={self.endpoints}{', bias=False' if self.bias is None else ''}")


class SubspaceBatchNorm(_SubspaceLayer):
    """nn.BatchNorm1d / nn.BatchNorm2d (affine, running statistics, a momentum) with affine weight and bias
    sum_i c_i of m endpoints (`weight` `[m, C]` of ones, `bias` `[m, C]` of zeros); its running statistics
    (`running_mean`, `running_var` `[C]`, `num_batches_tracked`) are one model's, updated as nn.BatchNorm does."""

    stacked_layout = "channels"  # core.training.ensemble's stacked fast path: [B, K*C, *spatial], channels-last

    def __init__(self, num_features: int, endpoints: int, eps: float = 1e-5, momentum: float = 0.1,
                 spatial_dims: int = 2, device=None, dtype=None):
        super().__init__()
        if spatial_dims not in (1, 2):
            raise ValueError(f"spatial_dims is 1 (BatchNorm1d) or 2 (BatchNorm2d), not {spatial_dims}")
        self.num_features, self.eps, self.momentum, self.spatial_dims = num_features, eps, momentum, spatial_dims
        self.endpoints, self.coefficients = endpoints, None  # coefficients: set per step, not a parameter
        self.weight = nn.Parameter(torch.ones(endpoints, num_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(endpoints, num_features, device=device, dtype=dtype))
        self.register_buffer("running_mean", torch.zeros(num_features, device=device, dtype=dtype))
        self.register_buffer("running_var", torch.ones(num_features, device=device, dtype=dtype))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))

    def forward(self, x: Tensor) -> Tensor:
        """One model on `[B, C]` or `[B, C, L]` (spatial_dims 1) or `[B, C, H, W]` (2)."""
        ranks = (2, 3) if self.spatial_dims == 1 else (4,)
        if x.dim() not in ranks:
            raise ValueError(f"expected a {' or '.join(map(str, ranks))}-D input, got {x.dim()}-D")
        weight, bias = self._combined()
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean, self.running_var, weight, bias, self.training, self.momentum,
                            self.eps)

    def forward_stacked(self, x: Tensor, params: dict[str, Tensor], k: int) -> Tensor:
        """All K models on `[B, K*C, *spatial]`: one BatchNorm over K*C channels with each model's combined affine
        parameters, updating the stacked running statistics in `params`."""
        return stacked_batch_norm(self, x, *self._combined_stacked(params, k), params)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, endpoints={self.endpoints}"


def _subspace_batch_norm(norm: nn.BatchNorm1d | nn.BatchNorm2d, endpoints: int) -> SubspaceBatchNorm:
    """The subspace version of `norm`, which must be affine, keep running statistics and have a momentum."""
    if not (norm.affine and norm.track_running_stats and norm.momentum is not None):
        raise ValueError(f"subspace BatchNorm is affine, keeps running statistics and has a momentum; got {norm}")
    return SubspaceBatchNorm(norm.num_features, endpoints, norm.eps, norm.momentum,
                             1 if isinstance(norm, nn.BatchNorm1d) else 2)


def subspace_network(model: nn.Module, endpoints: int) -> nn.Module:
    """`model` with every nn.Linear, nn.Conv1d and nn.Conv2d replaced (in place, in layer order) by a subspace layer
    of the same shape with `endpoints` fresh endpoints drawn from the global RNG (the plain weights are dropped), and
    every nn.BatchNorm1d / nn.BatchNorm2d by a SubspaceBatchNorm (endpoints of ones and zeros, fresh statistics)."""
    for name, child in model.named_children():
        if isinstance(child, nn.Linear):
            layer = SubspaceLinear(child.in_features, child.out_features, endpoints, child.bias is not None)
        elif isinstance(child, (nn.Conv1d, nn.Conv2d)):
            if child.groups != 1 or child.padding_mode != "zeros" or set(child.dilation) != {1}:
                raise ValueError(f"subspace convs have zero padding, one group and no dilation; got {child}")
            layer = SubspaceConv(child.in_channels, child.out_channels, child.kernel_size, endpoints, child.stride,
                                 child.padding, child.bias is not None, len(child.kernel_size))
        elif isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            layer = _subspace_batch_norm(child, endpoints)
        else:
            layer = subspace_network(child, endpoints)
        setattr(model, name, layer)
    return model


def subspace_layers(model: nn.Module) -> list[_SubspaceLayer]:
    """The subspace layers of `model` in layer order (the `layers` axis of coefficients)."""
    return [module for module in model.modules() if isinstance(module, _SubspaceLayer)]


def set_coefficients(model: nn.Module, coefficients: Tensor) -> None:
    """Layer l of `model` gets `coefficients[..., l, :]`: `[layers, m]` for one model, `[K, layers, m]` for the
    template of a stacked ensemble."""
    layers = subspace_layers(model)
    coefficients = coefficients.to(layers[0].weight.device, layers[0].weight.dtype)  # one copy to the device a step
    for l, layer in enumerate(layers):
        layer.coefficients = coefficients[..., l, :]


def fix_coefficients(model: nn.Module, coefficients) -> None:
    """Every subspace layer at the same point `coefficients` (`[m]`, or `[K, m]` on an ensemble's template), e.g.
    line_coefficients(0.5) for the midpoint of a line."""
    coefficients = torch.as_tensor(coefficients)
    set_coefficients(model, coefficients.unsqueeze(-2).expand(*coefficients.shape[:-1], len(subspace_layers(model)), -1))


def line_coefficients(t) -> Tensor:
    """`[..., 2]` coefficients (1 - t, t) of the point t of the line from W_0 to W_1."""
    t = torch.as_tensor(t, dtype=torch.get_default_dtype())
    return torch.stack([1 - t, t], -1)


def curve_coefficients(t) -> Tensor:
    """`[..., 3]` coefficients ((1-t)^2, 2t(1-t), t^2) of the point t of the quadratic Bezier curve from W_0 to W_2
    with control point W_1."""
    t = torch.as_tensor(t, dtype=torch.get_default_dtype())
    return torch.stack([(1 - t).square(), 2 * t * (1 - t), t.square()], -1)


def draw_coefficients(kind: Kind, generator: torch.Generator, layers: int, m: int, layerwise: bool) -> Tensor:
    """`[layers, m]` coefficients of one model for one step: one draw for all layers, or one per layer."""
    draws = layers if layerwise else 1
    if kind == "simplex":  # normalised Exp(1) draws: Dirichlet(1, ..., 1), uniform on the simplex
        exponentials = torch.empty(draws, m).exponential_(generator=generator)
        coefficients = exponentials / exponentials.sum(1, keepdim=True)
    else:
        point = {"line": line_coefficients, "curve": curve_coefficients}[kind]
        coefficients = point(torch.rand(draws, generator=generator))
    return coefficients.expand(layers, m)


def sample_coefficients(kind: Kind, generators: list[torch.Generator], takes: Tensor, layers: int, m: int,
                        layerwise: bool, out: Tensor | None = None) -> Tensor:
    """`[K, layers, m]`: model k's `draw_coefficients` from `generators[k]` where `takes[k]` (bool `[K]`); the other
    rows of `out` stay as they were (zeros when `out` is None), and their generators are not touched."""
    out = torch.zeros(len(generators), layers, m) if out is None else out
    for k in takes.nonzero().flatten().tolist():
        out[k] = draw_coefficients(kind, generators[k], layers, m, layerwise)
    return out


def draw_pair(generator: torch.Generator, m: int) -> Tensor:
    """Two distinct endpoints `[2]`, uniform over ordered pairs."""
    return torch.randperm(m, generator=generator)[:2]


def endpoint_cosine_squared(weights: list[Tensor], pairs: Tensor) -> Tensor:
    """`[K]` cos^2(w_i, w_j) for model k's pair (i, j) = `pairs[k]`, w_e = endpoint e's weights of all layers
    (`weights`: stacked `[K, m, ...]` per layer) flattened and concatenated."""
    return pair_cosine_squared([_EndpointGram.apply(weight) for weight in weights], pairs)


def pair_cosine_squared(grams: list[Tensor], pairs: Tensor) -> Tensor:
    """`endpoint_cosine_squared` from each layer's endpoint Gram `[K, m, m]` (their sum: every dot product of two
    endpoints over all layers)."""
    rows, (first, second) = torch.arange(len(pairs), device=pairs.device), pairs.T
    gram = sum(grams)
    return gram[rows, first, second].square() / (gram[rows, first, first] * gram[rows, second, second])


class _EndpointGram(torch.autograd.Function):
    """`[K, m, m]` dot products G[k, i, j] = <W[k, i], W[k, j]> of endpoints `[K, m, ...]`, by one bmm; the gradient
    (g + g^T) W is one more, written straight into `[K, m, ...]` (picking the pair's rows out of the endpoints
    instead costs a zero-filled `[K, m, ...]` gradient per row picked, several times the time on the CPU)."""

    @staticmethod
    def forward(ctx, endpoints: Tensor) -> Tensor:
        ctx.save_for_backward(endpoints)
        flat = endpoints.flatten(2)
        return torch.bmm(flat, flat.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (endpoints,) = ctx.saved_tensors
        return torch.bmm(grad + grad.transpose(1, 2), endpoints.flatten(2)).view_as(endpoints)
