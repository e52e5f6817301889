"""The solvers evaluate f only on the rows still iterating (core.models.fixed_point.BlockMap): per row, the same
iterate, step count and residual as a solve that evaluates f on every row, forward and through the implicit backward;
and f really runs on smaller blocks once rows stop."""
import pytest
import torch

from core.models.deq import SolverStats, equilibrium
from core.models.fixed_point import BlockMap, anderson, broyden

D64 = torch.float64


def staggered_contraction(k=3, b=5, d=4, seed=0):
    """f(z) = s_kb A_k z + c_kb on `[K, B, D]`, each row with its own contraction s_kb ||A_k|| in (0.05, 0.9), so rows
    converge after different numbers of steps, model 0's (s / 50) first; with the parameters, so a block can index
    them."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, d, d, generator=g, dtype=D64)
    a = a / torch.linalg.matrix_norm(a, 2)[:, None, None]
    scale = 0.05 + 0.85 * torch.rand(k, b, 1, generator=g, dtype=D64)
    scale[0] /= 50
    offset = torch.randn(k, b, d, generator=g, dtype=D64)
    return a, scale, offset


def affine(a, scale, offset):
    """The map z -> scale * (A z) + offset of those rows."""
    return lambda z: scale * (z @ a.transpose(1, 2)) + offset


def block_map(a, scale, offset, blocks: list):
    """The same map as a BlockMap; `blocks` records each block's (models, examples) sizes."""

    def block(models, examples):
        blocks.append((len(models), len(examples)))
        return affine(a[models], scale[models][:, examples], offset[models][:, examples])

    return BlockMap(affine(a, scale, offset), block)


@pytest.mark.parametrize("solve", [anderson, broyden])
def test_a_block_solve_returns_per_row_what_the_full_solve_returns(solve):
    a, scale, offset = staggered_contraction()
    blocks = []
    full = solve(affine(a, scale, offset), torch.zeros_like(offset), 1e-9, 60)
    narrowed = solve(block_map(a, scale, offset, blocks), torch.zeros_like(offset), 1e-9, 60)
    assert full.steps.unique().numel() > 2  # the rows do stop at different steps
    assert torch.equal(narrowed.steps, full.steps) and torch.equal(narrowed.converged, full.converged)
    torch.testing.assert_close(narrowed.z, full.z, atol=1e-13, rtol=0)
    torch.testing.assert_close(narrowed.residual, full.residual, atol=1e-13, rtol=1e-9)
    # narrowed once model 0's rows stopped (2 x 5 <= 3/4 of 15), then each time at most 3/4 of the last block
    assert blocks[0] == (2, 5)
    assert all(m * e <= 0.75 * m0 * e0 for (m0, e0), (m, e) in zip(blocks, blocks[1:]))


@pytest.mark.parametrize("solve", [anderson, broyden])
def test_a_row_alone_takes_the_steps_and_iterate_it_takes_among_all_rows(solve):
    """Each row's solve on its own (a [1, 1, D] problem) gives the same iterate, steps and residual."""
    a, scale, offset = staggered_contraction(k=2, b=3)
    together = solve(block_map(a, scale, offset, []), torch.zeros_like(offset), 1e-9, 60)
    for model in range(2):
        for example in range(3):
            rows = affine(a[model:model + 1], scale[model:model + 1, example:example + 1],
                          offset[model:model + 1, example:example + 1])
            alone = solve(rows, torch.zeros(1, 1, 4, dtype=D64), 1e-9, 60)
            assert alone.steps.item() == together.steps[model, example].item()
            torch.testing.assert_close(alone.z[0, 0], together.z[model, example], atol=1e-13, rtol=0)
            torch.testing.assert_close(alone.residual[0, 0], together.residual[model, example], atol=1e-15, rtol=1e-9)


@pytest.mark.parametrize("solver", ["anderson", "broyden"])
def test_the_implicit_backward_on_blocks_gives_the_full_backward_gradient(solver):
    """z* of a tanh cell with per-row injections; d(sum of w . z*)/d(weight, injection) through a BlockMap equals the
    plain map's, and the backward's per-row steps too."""
    g = torch.Generator().manual_seed(1)
    weight = (0.6 * torch.randn(3, 4, 4, generator=g, dtype=D64) / 2).requires_grad_()
    injection = torch.randn(3, 5, 4, generator=g, dtype=D64).requires_grad_()
    probe = torch.randn(3, 5, 4, generator=g, dtype=D64)

    def cell(w, x):
        return lambda z: torch.tanh(torch.baddbmm(x, z, w.transpose(1, 2)))

    def gradients(f):
        stats = SolverStats()
        z = equilibrium(f, torch.zeros(3, 5, 4, dtype=D64), solver, 1e-10, 80, 1e-10, 80, stats=stats)
        return torch.autograd.grad((z * probe).sum(), [weight, injection]), stats

    plain, plain_stats = gradients(cell(weight, injection))
    block = lambda models, examples: cell(weight[models], injection[models][:, examples])  # noqa: E731
    narrowed, narrowed_stats = gradients(BlockMap(cell(weight, injection), block))
    assert plain_stats.backward.steps.unique().numel() > 1
    assert torch.equal(narrowed_stats.forward.steps, plain_stats.forward.steps)
    assert torch.equal(narrowed_stats.backward.steps, plain_stats.backward.steps)
    for got, expected in zip(narrowed, plain):
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-8)
