"""Fixed-point solvers for stacked models: Anderson acceleration and Broyden's method on `[K, B, D]` states.

Each (model, example) row is its own fixed-point problem z = f(z) with its own stopping (relative residual
||f(z) - z|| / (||f(z)|| + tiny) <= tol), so f must act on each row alone, as a DEQ cell does. A row that stops
leaves the iteration while the others go on (on a `BlockMap`, f then runs on the smallest block of models and
examples that holds the rows still going); a row that never meets tol returns its lowest-residual iterate, as the
authors' solvers do (locuslab/deq, lib/solvers.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


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
    return _relative(fz - z, fz)


def _relative(difference: Tensor, fz: Tensor) -> Tensor:
    """relative_residual from f(z) - z already at hand (the solvers need it too)."""
    return (difference.norm(dim=-1) / (fz.norm(dim=-1) + TINY)).nan_to_num(nan=float("inf"))


@dataclass
class BlockMap:
    """A map f of `[K, B, D]` states that also runs on a block of its rows alone: `block(models, examples)` (index
    tensors) is f on the states `[len(models), len(examples), D]` of those models and examples. The solvers then
    evaluate f only on the block of the rows still iterating (a plain Map is always evaluated on every row)."""

    full: Map
    block: Callable[[Tensor, Tensor], Map]

    def __call__(self, z: Tensor) -> Tensor:
        return self.full(z)


SHRINK = 0.75  # a BlockMap is narrowed once the rows still iterating fit a block of at most this share of the last


class _LiveRows:
    """f evaluated on the rows still iterating (`index`, flat model * B + example, ascending) of a solve of `[K, B, D]`
    states: on the smallest block of models and examples that holds them when f is a BlockMap, else on every row.
    The block's other rows hold their last iterate (a stopped row stays where it stopped)."""

    def __init__(self, f: Map, z0: Tensor):
        self.f, self.shape = f, z0.shape
        self.models, self.examples = torch.arange(z0.shape[0]), torch.arange(z0.shape[1])  # the block, on the CPU
        self.map, self.states = f, z0.reshape(-1, z0.shape[-1]).clone()  # f on the block; the block's states
        self.position = torch.arange(len(self.states), device=z0.device)  # each live row's row in the block

    def __call__(self, z: Tensor) -> Tensor:
        """f of the live rows' iterates `[A, D]`."""
        block = (len(self.models), len(self.examples), self.shape[-1])
        if len(z) == len(self.states):  # every row of the block is live, in the block's order
            return self.map(z.view(block)).reshape(z.shape)
        self.states.index_copy_(0, self.position, z)
        return self.map(self.states.view(block)).reshape(self.states.shape).index_select(0, self.position)

    def stop(self, stopping: Tensor, z: Tensor, live: Tensor) -> None:
        """Rows `stopping` (a mask over the live rows) stop at their iterates `z`; `live` (flat indices) go on."""
        self.states.index_copy_(0, self.position[stopping], z[stopping])
        self.position = self.position[~stopping]
        if not isinstance(self.f, BlockMap) or not len(live) or len(live) > SHRINK * len(self.states):
            return  # the block of the live rows holds at least as many rows as they are: no need to look closer
        examples_count = self.shape[1]
        live = live.cpu()
        models, examples = live.div(examples_count, rounding_mode="floor").unique(), (live % examples_count).unique()
        if len(models) * len(examples) > SHRINK * len(self.states):
            return
        block = (len(self.models), len(self.examples), self.shape[-1])
        at_models = torch.searchsorted(self.models, models).to(z.device)  # the new block's rows in the old block
        at_examples = torch.searchsorted(self.examples, examples).to(z.device)
        states = self.states.view(block).index_select(0, at_models).index_select(1, at_examples)
        self.states = states.reshape(-1, block[-1])
        self.models, self.examples = models, examples
        self.map = self.f.block(models.to(z.device), examples.to(z.device))
        local = torch.searchsorted(models, live.div(examples_count, rounding_mode="floor")) * len(examples)
        self.position = (local + torch.searchsorted(examples, live % examples_count)).to(z.device)


def _solve(f: Map, z0: Tensor, tol: float, max_iter: int, method: _Method) -> Solution:
    """The driver both solvers share: `method.propose(z, fz, fz - z, n)` gives iteration n's next iterate of the
    rows `[A, D]` still iterating. A row stops once it meets tol or stops being finite (it never will): it leaves
    the iteration (f and the method see only the rows still going), and returns its lowest-residual iterate; where
    it converged, that is its last one (every earlier residual was above tol)."""
    shape, count = z0.shape, z0.shape[:-1].numel()
    z = z0.reshape(count, shape[-1]).clone()
    evaluate = _LiveRows(f, z0)
    fz = evaluate(z)
    difference = fz - z
    residual = _relative(difference, fz)
    # as locuslab/deq's broyden and anderson (lib/solvers.py: `if diff < lowest: lowest_xest = x_est`): each row keeps
    # the iterate whose residual is strictly below every earlier one (the first of equals), and returns it with that
    # residual. Theirs ranks the whole batch by one norm and leaves z0 out; ours ranks each row, z0 included. The
    # lowest is the last iterate (`best_is_last`) until a residual does not go down: only then is it copied aside
    best_z, best_residual, best_is_last = torch.empty_like(z), residual, torch.ones_like(residual, dtype=torch.bool)
    out_z, out_residual = torch.empty_like(z), torch.empty_like(residual)
    out_steps = torch.empty_like(residual, dtype=torch.long)
    live = torch.arange(count, device=z.device)

    def finish(stopping: Tensor, steps: int) -> None:
        """Rows `stopping` (a mask over the live rows) return their lowest-residual iterate after `steps` of f."""
        rows = live[stopping]
        out_z[rows] = torch.where(best_is_last[stopping, None], z[stopping], best_z[stopping])
        out_residual[rows], out_steps[rows] = best_residual[stopping], steps

    last = max(max_iter, 1)  # f runs at least once
    for n in range(1, last + 1):
        stopping = (residual <= tol) | residual.isinf()
        if n == last:
            stopping = torch.ones_like(stopping)
        if bool(stopping.any()):
            finish(stopping, n)
            going = ~stopping
            live = live[going]
            evaluate.stop(stopping, z, live)
            if not len(live):
                break
            z, fz, difference = z[going], fz[going], difference[going]
            best_z, best_residual, best_is_last = best_z[going], best_residual[going], best_is_last[going]
            method.keep(going)
        previous, z = z, method.propose(z, fz, difference, n)
        fz = evaluate(z)
        difference = fz - z
        residual = _relative(difference, fz)
        lower = residual < best_residual
        stale = best_is_last & ~lower  # the lowest was the previous iterate and is not this one: copy it aside
        if bool(stale.any()):
            best_z[stale] = previous[stale]
        best_residual, best_is_last = torch.where(lower, residual, best_residual), lower
    per_row = shape[:-1]
    return Solution(out_z.view(shape), out_steps.view(per_row), out_residual.view(per_row),
                    (out_residual <= tol).view(per_row))


class _Method:
    """A solver's per-row state between iterations, for the rows still iterating."""

    def propose(self, z: Tensor, fz: Tensor, difference: Tensor, n: int) -> Tensor:
        """Iteration n's next iterate of rows `[A, D]` from z, f(z) and f(z) - z."""
        raise NotImplementedError

    def keep(self, going: Tensor) -> None:
        """Drop the state of the rows that stopped (`going` a mask over the rows)."""
        for name, value in vars(self).items():
            if isinstance(value, Tensor) and value.dim() > 0:
                setattr(self, name, value[going])


class _Anderson(_Method):
    """Anderson acceleration's last `memory` pairs (z_i, f(z_i)) per row, and their residuals f(z_i) - z_i."""

    def __init__(self, z0: Tensor, memory: int, damping: float, regularization: float):
        self.history_z = z0.new_zeros(z0.shape[:-1].numel(), memory, z0.shape[-1])
        self.history_f, self.history_difference = torch.zeros_like(self.history_z), torch.zeros_like(self.history_z)
        self.memory, self.damping, self.regularization = memory, damping, regularization

    def propose(self, z: Tensor, fz: Tensor, difference: Tensor, n: int) -> Tensor:
        slot, used = (n - 1) % self.memory, min(n, self.memory)
        self.history_z[:, slot], self.history_f[:, slot], self.history_difference[:, slot] = z, fz, difference
        xs, fs, residuals = self.history_z[:, :used], self.history_f[:, :used], self.history_difference[:, :used]
        gram = residuals @ residuals.transpose(1, 2)
        # ridge relative to the row's own scale: an absolute one would swamp the Gram matrix near convergence
        ridge = self.regularization * gram.diagonal(dim1=1, dim2=2).mean(1) + TINY
        gram = gram + ridge[:, None, None] * torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device)
        weights = torch.linalg.solve_ex(gram, torch.ones_like(gram[..., :1]))[0]  # no raise: a NaN row stays its own
        alpha = weights / weights.sum(1, keepdim=True)  # min alpha^T G alpha s.t. sum alpha = 1
        mixed_f, mixed_z = (alpha.transpose(1, 2) @ fs).squeeze(1), (alpha.transpose(1, 2) @ xs).squeeze(1)
        return self.damping * mixed_f + (1 - self.damping) * mixed_z


class _Broyden(_Method):
    """Broyden's inverse Jacobian H = -I + sum_i u_i v_i^T per row, and its last iterate and g = f(z) - z."""

    def __init__(self, z0: Tensor, memory: int):
        count, width = z0.shape[:-1].numel(), z0.shape[-1]
        self.us, self.vs = z0.new_zeros(count, memory, width), z0.new_zeros(count, memory, width)
        self.last_z, self.last_g = torch.empty_like(self.us[:, 0]), torch.empty_like(self.us[:, 0])
        self.memory = memory

    def inverse(self, v: Tensor) -> Tensor:
        """H v for rows `[A, D]`."""
        return -v + ((self.vs @ v.unsqueeze(2)).transpose(1, 2) @ self.us).squeeze(1)

    def propose(self, z: Tensor, fz: Tensor, difference: Tensor, n: int) -> Tensor:
        g = difference
        if n > 1:
            dz, h_dg = z - self.last_z, self.inverse(g - self.last_g)
            denominator = (dz * h_dg).sum(1, keepdim=True)
            usable = denominator.abs() > TINY  # a degenerate step (dz = 0) gives no update, not a NaN one
            u = torch.where(usable, (dz - h_dg) / torch.where(usable, denominator, 1.0), 0.0)
            v = -dz + ((self.us @ dz.unsqueeze(2)).transpose(1, 2) @ self.vs).squeeze(1)  # H^T dz
            self.us[:, (n - 2) % self.memory], self.vs[:, (n - 2) % self.memory] = u, v
        self.last_z, self.last_g = z, g
        return z - self.inverse(g)


@torch.no_grad()
def anderson(f: Map, z0: Tensor, tol: float, max_iter: int, memory: int = 5, damping: float = 1.0,
             regularization: float = 1e-4) -> Solution:
    """Anderson acceleration: each row's next iterate mixes its last `memory` pairs (z_i, f(z_i)) with the weights
    alpha (sum 1) that minimise ||sum_i alpha_i (f(z_i) - z_i)||; `damping` beta takes beta f + (1 - beta) z."""
    return _solve(f, z0, tol, max_iter, _Anderson(z0, memory, damping, regularization))


@torch.no_grad()
def broyden(f: Map, z0: Tensor, tol: float, max_iter: int, memory: int | None = None) -> Solution:
    """Broyden's ("good") method on g(z) = f(z) - z: Newton steps z - H g with the inverse Jacobian H = -I +
    sum_i u_i v_i^T, one rank-one update a step, the oldest dropped past `memory` (default: max_iter)."""
    return _solve(f, z0, tol, max_iter, _Broyden(z0, memory or max_iter))


SOLVERS = {"anderson": anderson, "broyden": broyden}
