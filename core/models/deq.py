"""Deep equilibrium models with Jacobian regularisation (Bai, Koltun & Kolter, ICML 2021): the math.

A DEQ layer outputs the fixed point z* = f(z*, x) of one weight-tied cell, found by a root solver (Anderson
acceleration or Broyden's method) instead of by stacking layers, and differentiated implicitly: the gradient
dl/dx = u^T df/dx at z*, where u^T = u^T J_f(z*) + dl/dz*, is one more fixed point, solved from vector-Jacobian
products alone, so no graph of the solver's iterations is kept. The paper keeps J_f(z*) well conditioned (fast,
stable solves) by adding gamma ||J_f||_F^2 / d to the loss, estimated by Hutchinson's trick (`jacobian_frobenius`).

Solvers work on `[K, B, D]`: K models times B examples, each (model, example) row its own fixed-point problem with
its own stopping (relative residual ||f(z) - z|| / (||f(z)|| + tiny) <= tol), so f must act on each row alone, as
a DEQ cell does. A row that stops keeps its value while the others go on; a row that never meets tol returns its
lowest-residual iterate, as the authors' solvers do.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from core.models.stacked import stacked_linear

TINY = 1e-12  # keeps a zero f(z) from dividing by zero: its residual is then ||z|| / tiny, or 0 at z = 0

Map = Callable[[Tensor], Tensor]


@dataclass
class Solution:
    """What a solver found, per (model, example) row."""

    z: Tensor  # [K, B, D] the row's lowest-residual iterate: its last one where it converged
    steps: Tensor  # [K, B] long: evaluations of f the row took (1: z0 already met tol)
    residual: Tensor  # [K, B] relative residual of z; inf where even f(z0) was not finite
    converged: Tensor  # [K, B] bool: residual <= tol

    def means(self, direction: str) -> dict[str, Tensor]:
        """`[K]` float64 mean over examples of steps, residual and converged, keyed `<direction>_<field>`."""
        return {f"{direction}_{field}": getattr(self, field).double().mean(-1) for field in SolverLog.FIELDS}


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


class SolverLog:
    """Per-model sums over many solves (a training epoch's): each solve adds its mean over examples of steps,
    residual and converged, per direction (forward, backward). Every model of a stacked solve counts, so it reads
    true per-model figures when every model takes every step (the same training set size and batch size)."""

    FIELDS = ("steps", "residual", "converged")

    def __init__(self):
        self.sums: dict[str, Tensor] = {}
        self.solves = {"forward": 0, "backward": 0}

    def add(self, direction: str, solution: Solution) -> None:
        """Count one solve's `[K, B]` rows of `direction`."""
        for key, value in solution.means(direction).items():
            value = value.cpu()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.solves[direction] += 1

    def means(self) -> dict[str, Tensor]:
        """`[K]` mean per solve of every field seen, keyed `<direction>_<field>` (e.g. forward_steps)."""
        return {key: total / self.solves[key.split("_")[0]] for key, total in self.sums.items()}


def relative_residual(fz: Tensor, z: Tensor) -> Tensor:
    """||f(z) - z|| / (||f(z)|| + tiny) over the last dim; NaN (an overflowed row) reads inf."""
    residual = (fz - z).norm(dim=-1) / (fz.norm(dim=-1) + TINY)
    return residual.nan_to_num(nan=float("inf"))


def _solve(f: Map, z0: Tensor, tol: float, max_iter: int, propose: Callable[[Tensor, Tensor, int], Tensor]) -> Solution:
    """The driver both solvers share: `propose(z, fz, n)` gives iteration n's next iterate of rows `[R, D]`; rows
    that met tol, or stopped being finite (they never will), are frozen. Each row returns its lowest-residual
    iterate: where it converged, that is its last one (every earlier residual was above tol)."""
    shape = z0.shape
    rows = lambda t: t.reshape(-1, shape[-1])  # noqa: E731
    g = lambda z: rows(f(z.view(shape)))  # noqa: E731
    z = rows(z0).clone()
    fz = g(z)
    residual = relative_residual(fz, z)
    best_z, best_residual = z, residual
    steps = torch.ones_like(residual, dtype=torch.long)
    done = (residual <= tol) | residual.isinf()
    for n in range(1, max_iter):
        if bool(done.all()):
            break
        active = ~done
        z = torch.where(active[:, None], propose(z, fz, n), z)
        fz = torch.where(active[:, None], g(z), fz)
        residual = torch.where(active, relative_residual(fz, z), residual)
        # as locuslab/deq's broyden and anderson (lib/solvers.py: `if diff < lowest: lowest_xest = x_est`): keep the
        # iterate whose residual is strictly below every earlier one (the first of equals), and return it with that
        # residual. Theirs ranks the whole batch by one norm and leaves z0 out; ours ranks each row, z0 included
        best = residual < best_residual
        best_z, best_residual = torch.where(best[:, None], z, best_z), torch.where(best, residual, best_residual)
        steps += active
        done = (residual <= tol) | residual.isinf()
    per_row = shape[:-1]
    return Solution(best_z.view(shape), steps.view(per_row), best_residual.view(per_row),
                    (best_residual <= tol).view(per_row))


@torch.no_grad()
def anderson(f: Map, z0: Tensor, tol: float, max_iter: int, memory: int = 5, damping: float = 1.0,
             regularization: float = 1e-4) -> Solution:
    """Anderson acceleration: each row's next iterate mixes its last `memory` pairs (z_i, f(z_i)) with the weights
    alpha (sum 1) that minimise ||sum_i alpha_i (f(z_i) - z_i)||; `damping` beta takes beta f + (1 - beta) z."""
    history_z = z0.new_zeros(z0.shape[:-1].numel(), memory, z0.shape[-1])
    history_f = torch.zeros_like(history_z)

    def propose(z: Tensor, fz: Tensor, n: int) -> Tensor:
        history_z[:, (n - 1) % memory], history_f[:, (n - 1) % memory] = z, fz
        xs, fs = history_z[:, : min(n, memory)], history_f[:, : min(n, memory)]
        residuals = fs - xs
        gram = residuals @ residuals.transpose(1, 2)
        # ridge relative to the row's own scale: an absolute one would swamp the Gram matrix near convergence
        ridge = regularization * gram.diagonal(dim1=1, dim2=2).mean(1) + TINY
        gram = gram + ridge[:, None, None] * torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device)
        weights = torch.linalg.solve_ex(gram, torch.ones_like(gram[..., :1]))[0]  # no raise: a NaN row stays its own
        alpha = weights / weights.sum(1, keepdim=True)  # min alpha^T G alpha s.t. sum alpha = 1
        mixed_f, mixed_z = (alpha.transpose(1, 2) @ fs).squeeze(1), (alpha.transpose(1, 2) @ xs).squeeze(1)
        return damping * mixed_f + (1 - damping) * mixed_z

    return _solve(f, z0, tol, max_iter, propose)


@torch.no_grad()
def broyden(f: Map, z0: Tensor, tol: float, max_iter: int, memory: int | None = None) -> Solution:
    """Broyden's ("good") method on g(z) = f(z) - z: Newton steps z - H g with the inverse Jacobian H = -I +
    sum_i u_i v_i^T, one rank-one update a step, the oldest dropped past `memory` (default: max_iter)."""
    memory = memory or max_iter
    count, width = z0.shape[:-1].numel(), z0.shape[-1]
    us, vs = z0.new_zeros(count, memory, width), z0.new_zeros(count, memory, width)
    last: dict[str, Tensor] = {}

    def inverse(v: Tensor) -> Tensor:
        """H v for rows `[R, D]`."""
        return -v + ((vs @ v.unsqueeze(2)).transpose(1, 2) @ us).squeeze(1)

    def propose(z: Tensor, fz: Tensor, n: int) -> Tensor:
        g = fz - z
        if n > 1:
            dz, h_dg = z - last["z"], inverse(g - last["g"])
            denominator = (dz * h_dg).sum(1, keepdim=True)
            usable = denominator.abs() > TINY  # frozen rows have dz = 0: they get no update, not a NaN one
            u = torch.where(usable, (dz - h_dg) / torch.where(usable, denominator, 1.0), 0.0)
            v = -dz + ((us @ dz.unsqueeze(2)).transpose(1, 2) @ vs).squeeze(1)  # H^T dz
            us[:, (n - 2) % memory], vs[:, (n - 2) % memory] = u, v
        last["z"], last["g"] = z, g
        return z - inverse(g)

    return _solve(f, z0, tol, max_iter, propose)


SOLVERS = {"anderson": anderson, "broyden": broyden}


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
        transposed = lambda u: torch.autograd.grad(fz, z_leaf, u, retain_graph=True)[0] + grad  # noqa: E731
        stats.backward = solve(transposed, grad, backward_tol, backward_max_iter)
        if log is not None:
            log.add("backward", stats.backward)
        return stats.backward.z

    z.register_hook(implicit)
    return z


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
        cell = lambda z: torch.tanh(torch.baddbmm(injection, z, weight.transpose(1, 2)))  # noqa: E731
        return self.solve(cell, torch.zeros_like(injection))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, features={self.features}, solver={self.solver}, tol={self.tol}, "
                f"max_iter={self.max_iter}")
