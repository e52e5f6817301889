"""DCT plus Sparse layers (Price & Tanner, ICML 2021, "Dense for the Price of Sparse"): y = alpha * D x + S x + b.

D is the frozen orthonormal DCT-II (scipy.fft.dct(norm="ortho")) of size n = max(in, out), cut to `[out, in]`: x is
zero-padded to length n, transformed, and the first `out` coefficients are kept. It is a constant held once per
(size, device, dtype) in a cache and shared by every layer and all K models of an ensemble: never a parameter, never
a buffer, never copied per model. S (the layer's `weight`) trains and is kept sparse by the trainer's masks
(`core.models.sparse_masks`); alpha is a trainable scalar.
"""
from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair, _single

from core.models.stacked import stacked_conv, stacked_linear

Transform = Literal["auto", "fft", "matrix"]
Offset = Literal["auto", "fold", "shared"]  # how a linear layer's stacked step adds alpha D x (folds)

# "auto" runs D[:out, :in] by FFT when the dense D's multiply-adds per row, in x out, reach FFT_WORK_RATIO times the
# FFT's n log2 n (n = max(in, out)), else by the matmul. Measured by `.venv/bin/python -m bench.dct_sparse` (2-core
# AVX2 CPU, 2 threads, stacked [K*B = 8192, in] activations, forward and forward+backward, medians of 5 interleaved,
# two runs): where the FFT was faster (squares from n = 256 to 4096, 784 -> 300, 1024 -> 300), in x out / n log2 n
# is 30 or more; where the matmul was (squares up to 128, 40 -> 256, 256 -> 10, 300 -> 100, 512 -> 128), 18 or
# less. 24 lies between, so "auto" picked the faster side on every measured shape (bench/README.md). A size alone
# would not do: a 256 -> 10 layer needs 10 rows of D, which the matmul applies 5x faster than a 256-point FFT.
FFT_WORK_RATIO = 24
# "auto" folds alpha D into each model's weight (W_k = S_k + alpha_k D, one batched matmul) where that was faster in
# `.venv/bin/python -m bench.dct_sparse` (K = 64, 8 / 32 / 128 rows per model, forward and backward, medians of 5
# interleaved, quiet machine; bench/README.md): against the shared D by matmul at every measured shape from 8 rows on
# (0.63-0.96x; 1.00x once), so from FOLD_MIN_ROWS rows; against the shared D by FFT only with many rows on small
# layers (0.78-0.93x at 128 rows for n <= 512 and the 784/1024 -> 300 layers, 1.03-2.1x at 8-32 rows, 1.0x at 128 for
# n = 784, 1024), where forming K big weights costs more than the FFT: there when in x out x FOLD_FFT_RATIO <= rows x
# FFT_WORK_RATIO n log2 n, which picks the faster side (or a tie within 1%) on every measured shape.
FOLD_MIN_ROWS = 8
FOLD_FFT_RATIO = 40


@functools.cache
def _dct_basis(n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The `[n, n]` orthonormal DCT-II matrix, row k = c_k cos(pi k (2j + 1) / 2n), computed in float64."""
    with torch.inference_mode(False), torch.no_grad():  # a normal tensor even if first asked for in inference mode
        k, j = torch.arange(n, dtype=torch.float64).unsqueeze(1), torch.arange(n, dtype=torch.float64)
        basis = torch.cos(math.pi * k * (2 * j + 1) / (2 * n)) * math.sqrt(2 / n)
        basis[0] /= math.sqrt(2)
        return basis.to(device, dtype)


@functools.cache
def dct_matrix(out_features: int, in_features: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """D = the first `out_features` rows and `in_features` columns of the DCT-II of size max(in, out): a view of
    the one cached basis, and the same tensor object on every call (pass a tensor's own `.device` and `.dtype`)."""
    return _dct_basis(max(in_features, out_features), device, dtype)[:out_features, :in_features]


PatchOrder = Literal["authors", "torch"]  # how a conv's input patch is flattened before D applies to it


@functools.cache
def dct_kernel(out_channels: int, in_channels: int, kernel_size: tuple[int, ...], device: torch.device,
               dtype: torch.dtype, patch_order: PatchOrder = "authors") -> Tensor:
    """The conv kernel `[out, in, *kernel_size]` whose conv applies D of size max(in * prod(kernel), out) to each
    input patch flattened (kernel positions, then channels fastest: `authors`, DCTpS's DCTconv2d) or in PyTorch's
    order of a conv weight (channels, then kernel positions: `torch`); a view of the cached basis, one per size."""
    patch = in_channels * math.prod(kernel_size)
    d = dct_matrix(out_channels, patch, device, dtype)
    if patch_order == "torch":
        return d.view(out_channels, in_channels, *kernel_size)
    if patch_order != "authors":
        raise ValueError(f"patch_order must be 'authors' or 'torch', not {patch_order!r}")
    spatial = range(1, len(kernel_size) + 1)
    return d.view(out_channels, *kernel_size, in_channels).permute(0, len(kernel_size) + 1, *spatial)


@functools.cache
def _makhoul_order(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The even samples, then the odd ones reversed (the sequence whose DFT yields the DCT-II), and where each
    sample lands in it (the inverse permutation)."""
    order = torch.cat([torch.arange(0, n, 2), torch.arange(1, n, 2).flip(0)])
    return order.to(device), order.argsort().to(device)


@functools.cache
def _twiddles(n: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """t_k = c_k e^{-i pi k / 2n} for k <= n/2 (c_k the ortho scale) and 1 / t_k, complex, of `dtype`'s precision."""
    with torch.inference_mode(False):
        k = torch.arange(n // 2 + 1, dtype=torch.float64)
        scale = torch.full_like(k, math.sqrt(2 / n))
        scale[0] = math.sqrt(1 / n)
        twiddle = torch.polar(scale, -math.pi * k / (2 * n))
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        return twiddle.to(device, complex_dtype), (1 / twiddle).to(device, complex_dtype)


def _along(values: Tensor, x: Tensor, dim: int) -> Tensor:
    """`[n]` values viewed to broadcast along `dim` of `x`."""
    return values.view(-1, *[1] * (x.dim() - 1 - dim))


def _pad_along(x: Tensor, dim: int, length: int) -> Tensor:
    """`x` zero-padded at the end of `dim` to `length`."""
    return F.pad(x, (0, 0) * (x.dim() - 1 - dim) + (0, length - x.shape[dim]))


def _dct_fft(x: Tensor, out_features: int, dim: int) -> Tensor:
    """D x along `dim` in O(n log n): Makhoul's (1980) reordering, one real FFT V, z_k = t_k V_k; then the
    coefficients are X_k = Re z_k for k <= n/2 and X_{n-k} = -Im z_k above (V_{n-k} = conj(V_k))."""
    n = max(x.shape[dim], out_features)
    half = n // 2 + 1
    x = _pad_along(x, dim, n) if n > x.shape[dim] else x
    twiddle, _ = _twiddles(n, x.device, x.dtype)
    # along `dim` itself (the stacked [K, n, B]): 42 ms forward and backward at K = 64, n = 784, against 61 ms
    # through a moved view along the last dim (2 threads)
    z = torch.fft.rfft(x.index_select(dim, _makhoul_order(n, x.device)[0]), dim=dim) * _along(twiddle, x, dim)
    low = z.narrow(dim, 0, min(out_features, half)).real
    if out_features <= half:
        return low
    high = z.narrow(dim, n - out_features + 1, out_features - half).imag.flip(dim)  # k = half .. out - 1
    return torch.cat([low, high.neg()], dim)


def _dct_transposed_fft(g: Tensor, in_features: int, dim: int) -> Tensor:
    """D^T g along `dim` by FFT, `g` holding `out` coefficients: D is orthonormal, so D^T g is the inverse DCT of
    g zero-padded to n, cut to `in_features`; it undoes `_dct_fft` step by step (z_k = X_k - i X_{n-k})."""
    n = max(g.shape[dim], in_features)
    half = n // 2 + 1
    padded = _pad_along(g, dim, n + 1)  # X_k = 0 for k >= out, and X_n = 0
    z = torch.complex(padded.narrow(dim, 0, half), -padded.narrow(dim, n - half + 1, half).flip(dim))
    _, inverse = _twiddles(n, g.device, g.dtype)
    reordered = torch.fft.irfft(z * _along(inverse, g, dim), n=n, dim=dim)
    return reordered.index_select(dim, _makhoul_order(n, g.device)[1][:in_features])


class _DCTByFFT(torch.autograd.Function):
    """D x by FFT, with the backward D^T g by FFT too: half the time of autograd through rfft (bench/README.md)."""

    generate_vmap_rule = True  # so that the vmap fallback of core.training.ensemble can run it

    @staticmethod
    def forward(x: Tensor, out_features: int, dim: int) -> Tensor:
        return _dct_fft(x, out_features, dim)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, _, dim = inputs
        ctx.in_features, ctx.dim = x.shape[dim], dim

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        return _dct_transposed_fft(grad, ctx.in_features, ctx.dim), None, None


def _dct_by_matrix(x: Tensor, out_features: int, dim: int) -> Tensor:
    """D x along `dim` by the cached dense D: one matmul for all rows (of all models) at once."""
    basis = dct_matrix(out_features, x.shape[dim], x.device, x.dtype)
    if dim == x.dim() - 1:
        return F.linear(x, basis)
    return torch.matmul(basis, x.movedim(dim, -2)).movedim(-2, dim)  # [K, n, B]: one bmm, D broadcast, x not copied


def uses_fft(in_features: int, out_features: int, transform: Transform) -> bool:
    """Whether `transform` runs D[:out, :in] by FFT ("auto": when in x out >= FFT_WORK_RATIO x n log2 n)."""
    if transform not in ("auto", "fft", "matrix"):
        raise ValueError(f"transform must be 'auto', 'fft' or 'matrix', not {transform!r}")
    n = max(in_features, out_features)
    fft_work = n * math.log2(max(n, 2))
    return transform == "fft" or (transform == "auto" and in_features * out_features >= FFT_WORK_RATIO * fft_work)


def folds(in_features: int, out_features: int, batch: int, offset: Offset, transform: Transform = "auto") -> bool:
    """Whether a linear layer adds alpha D x by folding: W_k = S_k + alpha_k D, one batched matmul (`fold`), rather
    than by one shared transform of every model's input (`shared`); "auto": as measured (FOLD_MIN_ROWS and
    FOLD_FFT_RATIO), by the `batch` rows per model and whether the shared D would run by FFT."""
    if offset not in ("auto", "fold", "shared"):
        raise ValueError(f"offset must be 'auto', 'fold' or 'shared', not {offset!r}")
    if offset != "auto":
        return offset == "fold"
    if not uses_fft(in_features, out_features, transform):
        return batch >= FOLD_MIN_ROWS
    n = max(in_features, out_features)
    return in_features * out_features * FOLD_FFT_RATIO <= batch * FFT_WORK_RATIO * n * math.log2(n)


def dct(x: Tensor, out_features: int | None = None, dim: int = -1, transform: Transform = "auto") -> Tensor:
    """D[:out, :in] applied along `dim`: the first `out_features` (default: in) orthonormal DCT-II coefficients of
    `x` zero-padded to max(in, out) along `dim`, by the dense matrix or by FFT (`transform`)."""
    dim = dim % x.dim()
    out_features = out_features or x.shape[dim]
    if uses_fft(x.shape[dim], out_features, transform):
        exact = x if x.dtype in (torch.float32, torch.float64) else x.float()  # torch.fft has no bf16 (autocast's)
        return _DCTByFFT.apply(exact, out_features, dim).to(x.dtype)
    return _dct_by_matrix(x, out_features, dim)


def _default_init(layer: nn.Module) -> None:
    """nn.Linear's default init of `layer.weight` and `layer.bias` (Kaiming-uniform, bias in +-1/sqrt(fan_in));
    nn.Conv's is the same code. It reads nothing but those two attributes."""
    nn.Linear.reset_parameters(layer)


def _copied(layer: nn.Module, source: nn.Module) -> nn.Module:
    """`layer` with S and b set to copies of `source`'s weight and bias (alpha stays 1)."""
    with torch.no_grad():
        layer.weight.copy_(source.weight)
        if source.bias is not None:
            layer.bias.copy_(source.bias)
    return layer


class DCTPlusSparseLinear(nn.Module):
    """y = alpha * D x + S x + b, with D the shared DCT `[out, in]`, S = `weight` (sparse through masks)."""

    stacked_layout = "features"  # core.training.ensemble's stacked fast path: forward_stacked takes and gives [K, F, B]

    def __init__(self, in_features: int, out_features: int, bias: bool = True, transform: Transform = "auto",
                 device=None, dtype=None, offset: Offset = "auto"):
        super().__init__()
        folds(in_features, out_features, 1, offset, transform)  # refuses an unknown setting now, not mid-training
        self.in_features, self.out_features, self.transform, self.offset = in_features, out_features, transform, offset
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        self.alpha = nn.Parameter(torch.ones((), device=device, dtype=dtype))
        _default_init(self)

    @classmethod
    def from_linear(cls, linear: nn.Linear, transform: Transform = "auto") -> DCTPlusSparseLinear:
        """The DCT+Sparse version of `linear`: S and b are copies of its weight and bias, alpha = 1."""
        return _copied(cls(linear.in_features, linear.out_features, linear.bias is not None, transform,
                           linear.weight.device, linear.weight.dtype), linear)

    def _folds(self, batch: int) -> bool:
        """Whether a batch of `batch` rows per model runs folded (see `folds`)."""
        return folds(self.in_features, self.out_features, batch, self.offset, self.transform)

    def _folded(self, weight: Tensor, alpha: Tensor) -> Tensor:
        """S + alpha D: `weight` `[..., out, in]`, `alpha` broadcast against it; D the cached shared matrix."""
        d = dct_matrix(self.out_features, self.in_features, weight.device, weight.dtype)
        return torch.addcmul(weight, alpha, d)

    def forward(self, x: Tensor) -> Tensor:
        """One model on `[..., in]`."""
        if self._folds(x[..., 0].numel()):
            return F.linear(x, self._folded(self.weight, self.alpha), self.bias)
        return self.alpha * dct(x, self.out_features, -1, self.transform) + F.linear(x, self.weight, self.bias)

    def forward_stacked(self, x: Tensor, params: dict[str, Tensor], k: int) -> Tensor:
        """All K models on `[K, in, B]`: folded, one batched matmul by S_k + alpha_k D; or shared, S x + b by one
        batched matmul and D x by one transform of all K models' inputs."""
        if self._folds(x.shape[2]):
            return stacked_linear(x, self._folded(params["weight"], params["alpha"].view(k, 1, 1)), params["bias"])
        transformed = dct(x, self.out_features, 1, self.transform)
        return torch.addcmul(stacked_linear(x, params["weight"], params["bias"]), params["alpha"].view(k, 1, 1),
                             transformed)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, transform={self.transform}, "
                f"offset={self.offset}")


class DCTPlusSparseConv(nn.Module):
    """y = alpha * conv(x, D_kernel) + conv(x, S) + b for 1-D or 2-D inputs, D_kernel the shared `dct_kernel`."""

    stacked_layout = "channels"  # core.training.ensemble's stacked fast path: [B, K*C, *spatial], channels-last

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True,
                 spatial_dims: int = 2, device=None, dtype=None):
        super().__init__()
        as_tuple = {1: _single, 2: _pair}[spatial_dims]
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = as_tuple(kernel_size), as_tuple(stride)
        self.padding = padding if isinstance(padding, str) else as_tuple(padding)  # as nn.Conv keeps them
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype)) if bias else None
        self.alpha = nn.Parameter(torch.ones((), device=device, dtype=dtype))
        self.patch_order: PatchOrder = "authors"  # D's patch order (dct_kernel); a setting, not a parameter
        _default_init(self)

    @classmethod
    def from_conv(cls, conv: nn.Conv1d | nn.Conv2d) -> DCTPlusSparseConv:
        """The DCT+Sparse version of `conv` (zero padding, no groups or dilation): S, b copied, alpha = 1."""
        if conv.groups != 1 or conv.padding_mode != "zeros" or set(conv.dilation) != {1}:
            raise ValueError(f"DCT+Sparse convs have zero padding, one group and no dilation; got {conv}")
        return _copied(cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           conv.bias is not None, len(conv.kernel_size), conv.weight.device, conv.weight.dtype), conv)

    def _shared_kernel(self, x: Tensor) -> Tensor:
        """D_kernel for this layer's sizes and `patch_order` on `x`'s device and dtype (the cached one)."""
        return dct_kernel(self.out_channels, self.in_channels, self.kernel_size, x.device, x.dtype, self.patch_order)

    def forward(self, x: Tensor) -> Tensor:
        """One model on `[B, C, *spatial]`: a conv is linear in its kernel, so one conv with S + alpha D_kernel."""
        conv = F.conv1d if len(self.kernel_size) == 1 else F.conv2d
        return conv(x, self.weight + self.alpha * self._shared_kernel(x), self.bias, self.stride, self.padding)

    def forward_stacked(self, x: Tensor, params: dict[str, Tensor], k: int) -> Tensor:
        """All K models on `[B, K*C, *spatial]` as one grouped conv with kernels S_k + alpha_k D_kernel.

        The grouped conv needs a kernel per group, so the shared D_kernel is expanded K times here, inside this
        transient `[K, out, in, *kernel]` sum (freed after the backward; never stored). One conv with the summed
        kernel costs what the S conv alone costs, half of two convs.
        """
        d_kernel = self._shared_kernel(x)
        kernels = torch.addcmul(params["weight"], params["alpha"].view(k, *[1] * d_kernel.dim()), d_kernel)
        return stacked_conv(self, x, kernels, params["bias"], k)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, patch_order={self.patch_order}")


def dct_plus_sparse(model: nn.Module, transform: Transform = "auto") -> nn.Module:
    """`model` with every nn.Linear, nn.Conv1d and nn.Conv2d replaced (in place) by its DCT+Sparse version."""
    for name, child in model.named_children():
        if isinstance(child, nn.Linear):
            setattr(model, name, DCTPlusSparseLinear.from_linear(child, transform))
        elif isinstance(child, (nn.Conv1d, nn.Conv2d)):
            setattr(model, name, DCTPlusSparseConv.from_conv(child))
        else:
            dct_plus_sparse(child, transform)
    return model


def sparse_weight_names(model: nn.Module) -> list[str]:
    """The S (`weight`) of every DCT+Sparse layer of `model`, in layer order: what the authors' DCT+Sparse runs start
    at zero (DCTpS's `--init zeros`, which their README asks for with an offset)."""
    return [f"{name}.weight" for name, module in model.named_modules()
            if isinstance(module, (DCTPlusSparseLinear, DCTPlusSparseConv))]
