"""Deep equilibrium models with Jacobian regularisation (Bai, Koltun & Kolter, ICML 2021): the math.

A DEQ layer outputs the fixed point z* = f(z*, x) of one weight-tied cell, found by a root solver (Anderson
acceleration or Broyden's method) instead of by stacking layers, and differentiated implicitly: the gradient
dl/dx = u^T df/dx at z*, where u^T = u^T J_f(z*) + dl/dz*, is one more fixed point, solved from vector-Jacobian
products alone, so no graph of the solver's iterations is kept. The paper keeps J_f(z*) well conditioned (fast,
stable solves) by adding gamma ||J_f||_F^2 / d to the loss, estimated by Hutchinson's trick (`jacobian_frobenius`).

The solvers (`core.models.fixed_point`) work on `[K, B, D]`: K models times B examples, each (model, example) row
its own fixed-point problem with its own stopping.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from core.models.fixed_point import SOLVERS, TINY, BlockMap, Map, Solution, SolverLog
from core.models.stacked import stacked_linear


@dataclass
class SolverStats:
    """The last forward solve and, once a backward ran, the backward's solve (dl/dz* -> u); also the solve's map f
    (`cell`), attached to the parameters, for what acts at the fixed point (the Jacobian regulariser)."""

    forward: Solution | None = None
    backward: Solution | None = None
    cell: Map | None = None

    def __deepcopy__(self, memo: dict) -> SolverStats:
        """A copy without `cell`, whose closure holds the last forward's tensors (copying a module copies this)."""
        return SolverStats(copy.deepcopy(self.forward, memo), copy.deepcopy(self.backward, memo))

    def at_fixed_point(self) -> tuple[Tensor, Tensor]:
        """(f(z*), z*): z* a fresh leaf, f(z*) a graph of its own attached to the parameters."""
        z = self.forward.z.clone().requires_grad_()
        return self.cell(z), z


def equilibrium(f: Map, z0: Tensor, solver: str = "anderson", tol: float = 1e-4, max_iter: int = 30,
                backward_tol: float = 1e-4, backward_max_iter: int = 30, stats: SolverStats | None = None,
                log: SolverLog | None = None) -> Tensor:
    """z* = f(z*) from `z0` (`[K, B, D]`; f closes over its input and parameters), differentiable implicitly:
    the backward solves u = J_f(z*)^T u + dl/dz* with the same solver (so the same driver: a backward that misses
    its tol also gives its lowest-residual u). `stats` receives both solves' Solution and f; `log`, when given,
    counts both solves."""
    stats = stats if stats is not None else SolverStats()
    solve = SOLVERS[solver]
    stats.forward, stats.cell = solve(f, z0.detach(), tol, max_iter), f
    if log is not None:
        log.add("forward", stats.forward)
    z = f(stats.forward.z)  # one attached step: with the hook below its gradient is u^T df/dtheta, the implicit one
    if not z.requires_grad:
        return z
    z_leaf = stats.forward.z.clone().requires_grad_()
    fz = f(z_leaf)  # a graph of its own for the backward's vector-Jacobian products

    def implicit(grad: Tensor) -> Tensor:
        """dl/dz* -> u, the fixed point of u -> J^T u + dl/dz*."""
        stats.backward = solve(_transposed(f, fz, z_leaf, grad), grad, backward_tol, backward_max_iter)
        if log is not None:
            log.add("backward", stats.backward)
        return stats.backward.z

    z.register_hook(implicit)
    return z


def _transposed(f: Map, fz: Tensor, z: Tensor, grad: Tensor) -> Map:
    """u -> J_f(z)^T u + grad by vector-Jacobian products of `fz` = f(z) (z a leaf); a BlockMap where f is one: a
    block's map is a graph of f on that block's rows alone, built when the backward's solve narrows to it."""
    full = lambda u: torch.autograd.grad(fz, z, u, retain_graph=True)[0] + grad  # noqa: E731
    if not isinstance(f, BlockMap):
        return full

    def block(models: Tensor, examples: Tensor) -> Map:
        """The map of the rows of `models` x `examples`."""
        with torch.enable_grad():  # the solvers run without grad
            leaf = z.detach().index_select(0, models).index_select(1, examples).requires_grad_()
            out = f.block(models, examples)(leaf)
        rows_grad = grad.index_select(0, models).index_select(1, examples)
        return lambda u: torch.autograd.grad(out, leaf, u, retain_graph=True)[0] + rows_grad

    return BlockMap(full, block)


def jacobian_frobenius(fz: Tensor, z: Tensor, samples: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """`[K]` Hutchinson estimate of ||J_f(z)||_F^2 / D averaged over the B examples, from `samples` Gaussian eps
    (E ||eps^T J||^2 = ||J||_F^2); `fz` = f(z), z `[K, B, D]` in its graph. Differentiable (create_graph)."""
    probes = torch.randn((samples, *z.shape), generator=generator, dtype=z.dtype)
    return hutchinson(fz, z, probes.to(z.device))


def hutchinson(fz: Tensor, z: Tensor, probes: Tensor) -> Tensor:
    """`[K]` mean over the probes `[M, K, B, D]` and the B examples of ||eps^T J_f(z)||^2 / D (differentiable)."""
    total = fz.new_zeros(fz.shape[0])
    for eps in probes:
        vjp = torch.autograd.grad(fz, z, eps, retain_graph=True, create_graph=True)[0]
        total = total + vjp.square().sum(-1).mean(-1)
    return total / (len(probes) * z.shape[-1])


def spectral_radius(fz: Tensor, z: Tensor, iters: int = 50, generator: torch.Generator | None = None) -> Tensor:
    """`[K, B]` |largest eigenvalue| of J_f(z) per model and example by power iteration on J^T (same eigenvalues),
    from vector-Jacobian products of `fz` = f(z), z `[K, B, D]` in its graph; no grad. Exact in the limit when one
    real eigenvalue dominates (a dominant complex pair makes the estimate oscillate within the pair's modulus)."""
    v = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
    v = v / v.norm(dim=-1, keepdim=True)
    norm = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
    for _ in range(iters):
        w = torch.autograd.grad(fz, z, v, retain_graph=True)[0]
        norm = w.norm(dim=-1)
        v = w / (norm.unsqueeze(-1) + TINY)
    return norm.detach()


class DEQBlock(nn.Module):
    """What every DEQ block shares: its solver settings, `stats` (the last solve's SolverStats: forward; backward once
    a backward ran) for the trainer to read, and `log` (when set, every solve is counted there). core.methods.deq
    finds a network's blocks by this class."""

    def __init__(self, solver: str = "anderson", tol: float = 1e-4, max_iter: int = 30, backward_tol: float = 1e-4,
                 backward_max_iter: int = 30):
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"solver is one of {sorted(SOLVERS)}, not {solver!r}")
        self.solver, self.tol, self.max_iter = solver, tol, max_iter
        self.backward_tol, self.backward_max_iter = backward_tol, backward_max_iter
        self.stats = SolverStats()
        self.log: SolverLog | None = None  # when set, every solve is counted there (training figures per epoch)

    def solve(self, cell: Map, z0: Tensor) -> Tensor:
        """z* = cell(z*) from `z0` `[K, B, D]` at this block's settings, differentiable implicitly."""
        self.stats = SolverStats()
        return equilibrium(cell, z0, self.solver, self.tol, self.max_iter, self.backward_tol, self.backward_max_iter,
                           self.stats, self.log)


class DEQLinear(DEQBlock):
    """z* = tanh(W z* + U x + b), hidden size `features`: tanh is 1-Lipschitz like ReLU but smooth, so J_f(z) varies
    continuously (Broyden's model of it stays good) and z* stays in [-1, 1]. `weight` W is drawn as nn.Linear
    draws, then scaled to spectral norm `contraction` < 1, so f is a contraction at init and both solvers converge."""

    stacked_layout = "features"  # core.training.ensemble's stacked fast path: [K, F, B]

    def __init__(self, in_features: int, features: int, solver: str = "anderson", tol: float = 1e-4,
                 max_iter: int = 30, backward_tol: float = 1e-4, backward_max_iter: int = 30,
                 contraction: float = 0.5, device=None, dtype=None):
        super().__init__(solver, tol, max_iter, backward_tol, backward_max_iter)
        self.in_features, self.features = in_features, features
        cell, injection = nn.Linear(features, features, bias=False), nn.Linear(in_features, features)
        with torch.no_grad():
            cell.weight.mul_(contraction / torch.linalg.matrix_norm(cell.weight, 2))
        self.weight = nn.Parameter(cell.weight.detach().to(device, dtype))
        self.input_weight = nn.Parameter(injection.weight.detach().to(device, dtype))
        self.bias = nn.Parameter(injection.bias.detach().to(device, dtype))

    def forward(self, x: Tensor) -> Tensor:
        """One model on `[..., in]`."""
        injection = nn.functional.linear(x, self.input_weight, self.bias)
        z = self._equilibrium(injection.reshape(1, -1, self.features), self.weight.unsqueeze(0))
        return z.view(injection.shape)

    def forward_stacked(self, x: Tensor, params: dict[str, Tensor], k: int) -> Tensor:
        """All K models on `[K, in, B]` -> `[K, features, B]`: one solve for all K models and B examples."""
        injection = stacked_linear(x, params["input_weight"], params["bias"]).transpose(1, 2)
        return self._equilibrium(injection, params["weight"]).transpose(1, 2)

    def _equilibrium(self, injection: Tensor, weight: Tensor) -> Tensor:
        """z* `[K, B, features]` of tanh(W z + injection) for injections `[K, B, features]` and W `[K, F, F]`."""
        def cell(injection: Tensor, weight: Tensor) -> Map:
            """z -> tanh(W z + injection) for these injections and weights."""
            return lambda z: torch.tanh(torch.baddbmm(injection, z, weight.transpose(1, 2)))

        block = lambda models, examples: cell(  # noqa: E731
            injection.index_select(0, models).index_select(1, examples), weight.index_select(0, models))
        return self.solve(BlockMap(cell(injection, weight), block), torch.zeros_like(injection))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, features={self.features}, solver={self.solver}, tol={self.tol}, "
                f"max_iter={self.max_iter}")
