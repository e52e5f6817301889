"""Deep equilibrium models (Bai, Koltun & Kolter 2021): solvers against closed-form fixed points and maps without one,
implicit gradients against autograd through an unrolled iteration, Hutchinson and power iteration against explicit
Jacobians, and the stacked K-model DEQ against one-by-one models (outputs, gradients, training)."""
import copy
import math

import pytest
import torch
from torch import nn

from core.models.deq import DEQLinear, SolverStats, equilibrium, jacobian_frobenius, spectral_radius
from core.models.fixed_point import anderson, broyden, relative_residual
from core.training.config import TrainConfig
from core.training.ensemble import Ensemble
from core.training.trainer import train
from reference import assert_same_weights, assert_stacked_deqs_equal_each_alone, toy_data, train_one_by_one

SOLVERS = [anderson, broyden]
D64 = torch.float64


def affine_contraction(k=2, b=3, d=6, norm=0.7, seed=0):
    """f(z) = A_k z + c with ||A_k||_2 = norm, and its closed-form fixed point (I - A_k)^-1 c, all `[K, B, D]`."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, d, d, generator=g, dtype=D64)
    a = norm * a / torch.linalg.matrix_norm(a, 2)[:, None, None]
    c = torch.randn(k, b, d, generator=g, dtype=D64)
    exact = torch.linalg.solve(torch.eye(d, dtype=D64) - a, c.transpose(1, 2)).transpose(1, 2)
    return (lambda z: z @ a.transpose(1, 2) + c), c, exact


@pytest.mark.parametrize("solve", SOLVERS)
def test_solvers_reach_the_closed_form_fixed_point_of_an_affine_contraction(solve):
    f, c, exact = affine_contraction()
    solution = solve(f, torch.zeros_like(c), 1e-10, 100)
    assert solution.converged.all() and (solution.residual <= 1e-10).all()
    assert solution.steps.shape == solution.residual.shape == (2, 3) and solution.steps.dtype == torch.long
    torch.testing.assert_close(solution.z, exact, atol=1e-8, rtol=0)


@pytest.mark.parametrize("solve", SOLVERS)
def test_solvers_report_rows_without_a_fixed_point_and_rows_gone_non_finite(solve):
    """Rows of a contraction, of 2|z| + 1 (no fixed point: z = 2|z| + 1 has no solution, and its relative residual
    stays above 1/2) and of a map that returns NaN, in one batch."""
    f_contraction, c, exact = affine_contraction(k=1, b=3)
    kind = torch.tensor([0, 1, 2])  # contraction, no fixed point, NaN
    f = lambda z: torch.where((kind == 0)[:, None], f_contraction(z),  # noqa: E731
                              torch.where((kind == 1)[:, None], 2 * z.abs() + 1, z + float("nan")))
    solution = solve(f, torch.zeros_like(c), 1e-8, 40)
    assert solution.converged.tolist() == [[True, False, False]]
    assert solution.residual[0, 1] > 0.5 and solution.residual[0, 2] == float("inf")
    assert solution.steps[0, 1] == 40 and solution.steps[0, 2] == 1  # a NaN row stops at once: it cannot converge
    assert solution.z[0, 0].isfinite().all()
    torch.testing.assert_close(solution.z[0, 0], exact[0, 0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("solve", SOLVERS)
def test_an_iteration_cap_short_of_tol_reports_no_convergence(solve):
    f, c, _ = affine_contraction()
    solution = solve(f, torch.zeros_like(c), 1e-10, 3)
    assert not solution.converged.any() and (solution.residual > 1e-10).all() and (solution.steps == 3).all()
    torch.testing.assert_close(solution.residual, relative_residual(f(solution.z), solution.z))


def rowwise(maps: list, seen: list | None = None):
    """f on `[1, len(maps), 2]` applying maps[r] to row r; `seen`, when given, collects every input of f (the
    solver's iterates, frozen rows included)."""

    def f(z):
        if seen is not None:
            seen.append(z.clone())
        return torch.stack([m(z[:, row]) for row, m in enumerate(maps)], 1)

    return f


def linear(angle: float, scale: float):
    """z -> scale R(angle) z + (1, 0.3): a contraction for scale < 1, a spiral out of its fixed point for scale > 1."""
    a = scale * torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=D64)
    return lambda z: z @ a.T + torch.tensor([1.0, 0.3], dtype=D64)


SQUARE_PLUS_ONE = lambda z: z * z + 1  # noqa: E731 (no real fixed point; plain iteration overflows)


def residual_by_hand(fz, z):
    """||f(z) - z|| / (||f(z)|| + 1e-12) per row, NaN read as inf."""
    return ((fz - z).norm(dim=-1) / (fz.norm(dim=-1) + 1e-12)).nan_to_num(nan=float("inf"))


def lowest_residual_by_hand(iterates: list, f, tol: float):
    """Per row of the `[1, R, D]` iterates z_0, z_1, ...: where it stops (its first residual <= tol or inf, else
    its last iterate), then its first iterate of smallest residual up to there: (z `[R, D]`, residual, steps)."""
    residuals = torch.stack([residual_by_hand(f(z), z)[0] for z in iterates])  # [N, R]
    z, residual, steps = [], [], []
    for row in range(residuals.shape[1]):
        stops = ((residuals[:, row] <= tol) | residuals[:, row].isinf()).nonzero().flatten().tolist()
        last = stops[0] if stops else len(iterates) - 1
        best = int(residuals[: last + 1, row].argmin())  # the first of equal minima
        z.append(iterates[best][0, row]), residual.append(residuals[best, row]), steps.append(last + 1)
    return torch.stack(z), torch.stack(residual), torch.tensor(steps)


def test_anderson_of_memory_one_returns_plain_iterations_lowest_residual_iterate():
    """Anderson with one pair is plain iteration z <- f(z), so the iteration run by hand gives every row's answer bit
    for bit: the contraction its last iterate, as before; the two spirals (residual dips, then grows) and z^2 + 1
    (overflows at iterate 10) their lowest-residual iterates, 4, 2 and 1."""
    f, tol, max_iter = rowwise([linear(1.0, 0.1), linear(0.5, 1.2), linear(1.0, 1.2), SQUARE_PLUS_ONE]), 1e-6, 12
    iterates = [torch.zeros(1, 4, 2, dtype=D64)]
    for _ in range(max_iter - 1):
        iterates.append(f(iterates[-1]))
    z, residual, steps = lowest_residual_by_hand(iterates, f, tol)
    solution = anderson(f, torch.zeros(1, 4, 2, dtype=D64), tol, max_iter, memory=1)
    assert solution.converged.tolist() == [[True, False, False, False]]
    assert solution.steps[0].tolist() == steps.tolist() and steps[1:].tolist() == [12, 12, 11]
    assert torch.equal(solution.z[0], z)
    assert torch.equal(solution.z[0, 1:], torch.stack([iterates[4][0, 1], iterates[2][0, 2], iterates[1][0, 3]]))
    torch.testing.assert_close(solution.residual[0], residual, rtol=1e-15, atol=0)
    torch.testing.assert_close(solution.residual, relative_residual(f(solution.z), solution.z), rtol=1e-15, atol=0)


@pytest.mark.parametrize("solve", SOLVERS)
def test_each_row_returns_its_lowest_residual_iterate_with_that_residual(solve):
    """Rows: a contraction, then three maps without a fixed point: z^2 + 1, (z_2^2 + 1, 0.5 - z_1) whose residual
    dips and grows again, cosh(flip z) + 0.2 (Broyden's iterate overflows). The iterates are what the solver handed
    f; by hand, each row's first of smallest residual up to its stop."""
    maps = [linear(1.0, 0.1), SQUARE_PLUS_ONE, lambda z: torch.stack([z[:, 1] ** 2 + 1, 0.5 - z[:, 0]], -1),
            lambda z: torch.cosh(z.flip(-1)) + 0.2]
    seen, tol = [], 1e-6
    solution = solve(rowwise(maps, seen), torch.zeros(1, 4, 2, dtype=D64), tol, 12)
    f = rowwise(maps)
    z, residual, steps = lowest_residual_by_hand(seen, f, tol)
    assert solution.converged.tolist() == [[True, False, False, False]] and solution.steps[0].tolist() == steps.tolist()
    assert torch.equal(solution.z[0], z) and solution.z.isfinite().all()
    assert torch.equal(solution.z[0, 0], seen[steps[0] - 1][0, 0])  # the converged row: its last iterate
    torch.testing.assert_close(solution.residual[0], residual, rtol=1e-15, atol=0)
    torch.testing.assert_close(solution.residual, relative_residual(f(solution.z), solution.z), rtol=1e-15, atol=0)


@pytest.mark.parametrize("solver", ["anderson", "broyden"])
def test_a_backward_that_misses_its_tol_returns_its_lowest_residual_gradient(solver):
    """f(z) = A z + s (A a rotation by 2 rad), loss (z * p).sum(): the backward iterates u -> A^T u + p from u_0 = p,
    and both solvers' first step is plain, u_1 = A^T p + p, whose residual (5.98) is far above u_0's (0.93). Capped
    at 2 and tol 0, the backward returns u_0, so ds = p (the last iterate would give A^T p + p)."""
    a = torch.tensor([[math.cos(2.0), -math.sin(2.0)], [math.sin(2.0), math.cos(2.0)]], dtype=D64)
    shift = torch.tensor([[[0.5, -1.0]]], dtype=D64, requires_grad=True)
    probe = torch.tensor([[[1.0, 2.0]]], dtype=D64)
    stats = SolverStats()
    z = equilibrium(lambda z: z @ a.T + shift, torch.zeros_like(probe), solver, 1e-10, 50, 0.0, 2, stats)
    (z * probe).sum().backward()
    transposed = lambda u: u @ a + probe  # noqa: E731 (u -> A^T u + p on row vectors)
    u1 = transposed(probe)
    residuals = [residual_by_hand(transposed(u), u) for u in (probe, u1)]
    assert residuals[0] < 0.95 and residuals[1] > 5.9
    assert stats.backward.steps.tolist() == [[2]] and not stats.backward.converged.any()
    torch.testing.assert_close(stats.backward.residual, residuals[0], rtol=1e-14, atol=0)
    assert torch.equal(stats.backward.z, probe) and torch.equal(shift.grad, probe)


@pytest.mark.parametrize("solve", SOLVERS)
def test_each_row_stops_on_its_own_and_keeps_its_value(solve):
    """Row 0 starts at its fixed point (0 = 0.2 tanh 0), row 1 is a strong contraction, row 2 a weak one."""
    scale = torch.tensor([0.2, 0.2, 0.95], dtype=D64)[:, None]
    shift = torch.tensor([0.0, 1.0, 1.0], dtype=D64)[:, None]
    seen = []

    def f(z):
        seen.append(z.clone())
        return scale * torch.tanh(z + z.roll(1, -1)) + shift * torch.linspace(-1, 1, 4, dtype=D64)

    solution = solve(f, torch.zeros(1, 3, 4, dtype=D64), 1e-9, 200)
    steps = solution.steps[0].tolist()
    assert solution.converged.all() and steps[0] == 1 and steps[1] < steps[2]
    for row, row_steps in enumerate(steps):
        for z in seen[row_steps - 1:]:  # the input of every call of f after the row's last one: unchanged
            assert torch.equal(z[0, row], solution.z[0, row])


@pytest.mark.parametrize("solver", ["anderson", "broyden"])
def test_implicit_gradients_equal_autograd_through_an_unrolled_fixed_point_iteration(solver):
    torch.manual_seed(0)
    layer = DEQLinear(3, 5, solver, tol=1e-11, max_iter=100, backward_tol=1e-11, backward_max_iter=100).double()
    x, probe = torch.randn(4, 3, dtype=D64, requires_grad=True), torch.randn(4, 5, dtype=D64)
    (layer(x) * probe).sum().backward()
    stats = layer.stats
    assert stats.forward.converged.all() and stats.backward.converged.all() and stats.backward.steps.shape == (1, 4)
    assert not stats.forward.z.requires_grad  # the solver kept no graph
    implicit = [t.grad.clone() for t in (layer.weight, layer.input_weight, layer.bias, x)]
    unrolled = copy.deepcopy(layer)
    x_unrolled = x.detach().clone().requires_grad_()
    z = torch.zeros(4, 5, dtype=D64)
    for _ in range(200):  # spectral norm 0.5 at init: 0.5^200 is far below float64's resolution
        z = torch.tanh(z @ unrolled.weight.T + x_unrolled @ unrolled.input_weight.T + unrolled.bias)
    (z * probe).sum().backward()
    reference = [unrolled.weight.grad, unrolled.input_weight.grad, unrolled.bias.grad, x_unrolled.grad]
    for name, got, expected in zip(["weight", "input_weight", "bias", "x"], implicit, reference):
        torch.testing.assert_close(got, expected, atol=1e-8, rtol=1e-6, msg=name)


def tanh_cell(k=2, b=3, d=4, seed=0, symmetric=False):
    """f(z) = tanh(W_k z + c) `[K, B, D]` and its W (symmetric W: J = diag(1 - tanh^2) W has real eigenvalues)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(k, d, d, generator=g, dtype=D64) / d ** 0.5
    w = (w + w.transpose(1, 2)) / 2 if symmetric else w
    c = torch.randn(k, b, d, generator=g, dtype=D64)
    return (lambda z: torch.tanh(z @ w.transpose(1, 2) + c)), w, c


def row_jacobians(f, z):
    """`[K, B, D, D]` explicit Jacobian of each row of f (rows are independent) at z."""
    full = torch.autograd.functional.jacobian(f, z)  # [K, B, D, K, B, D]
    k, b, _ = z.shape
    return torch.stack([torch.stack([full[i, j, :, i, j] for j in range(b)]) for i in range(k)])


def test_hutchinson_estimate_approaches_the_exact_frobenius_norm():
    f, w, c = tanh_cell()
    z = torch.randn(c.shape, generator=torch.Generator().manual_seed(1), dtype=D64).requires_grad_()
    exact = row_jacobians(f, z.detach()).square().sum((-1, -2)).mean(1) / 4  # [K] ||J||_F^2 / D, mean over examples
    g = torch.Generator().manual_seed(2)
    estimate = jacobian_frobenius(f(z), z, samples=4000, generator=g)
    assert estimate.shape == (2,)
    torch.testing.assert_close(estimate, exact, rtol=0.05, atol=0)
    few = jacobian_frobenius(f(z), z, samples=10, generator=torch.Generator().manual_seed(2))
    assert (estimate - exact).abs().max() < (few - exact).abs().max()  # closer with more samples
    assert (estimate - exact).abs().max() > 1e-6  # an estimate, not the exact value by accident


def test_hutchinson_estimate_is_differentiable_by_its_hand_gradient():
    """For f(z) = A z, eps^T J = eps^T A, and d ||A^T eps||^2 / dA = 2 eps eps^T A."""
    a = torch.randn(2, 3, 3, dtype=D64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    z = torch.randn(2, 5, 3, dtype=D64).requires_grad_()
    estimate = jacobian_frobenius(z @ a.transpose(1, 2), z, samples=1, generator=torch.Generator().manual_seed(3))
    estimate.sum().backward()
    eps = torch.randn(2, 5, 3, dtype=D64, generator=torch.Generator().manual_seed(3))  # the same draw
    vjp = eps @ a.detach()  # rows eps^T A
    torch.testing.assert_close(estimate, vjp.square().sum(-1).mean(-1) / 3)
    torch.testing.assert_close(a.grad, 2 * eps.transpose(1, 2) @ vjp / (5 * 3))


def test_spectral_radius_by_power_iteration_matches_the_explicit_eigenvalues():
    f, w, c = tanh_cell(symmetric=True)
    z = torch.randn(c.shape, generator=torch.Generator().manual_seed(1), dtype=D64)
    exact = torch.linalg.eigvals(row_jacobians(f, z)).abs().amax(-1)  # [K, B]
    z.requires_grad_()
    radius = spectral_radius(f(z), z, iters=500, generator=torch.Generator().manual_seed(2))
    assert radius.shape == (2, 3) and not radius.requires_grad
    torch.testing.assert_close(radius, exact, atol=1e-6, rtol=0)


def test_equilibrium_stores_both_solves_on_the_stats_it_is_given():
    f_contraction, c, exact = affine_contraction(k=1, b=2)
    shift = c.clone().requires_grad_()
    stats = SolverStats()
    z = equilibrium(lambda z: f_contraction(z) - c + shift, torch.zeros_like(c), "broyden", 1e-10, 50, 1e-10, 50, stats)
    torch.testing.assert_close(z, exact, atol=1e-8, rtol=0)
    assert stats.forward.converged.all() and stats.backward is None
    z.sum().backward()
    assert stats.backward.converged.all() and stats.backward.steps.shape == (1, 2)


def test_an_unknown_solver_is_refused():
    with pytest.raises(ValueError, match="solver is one of \\['anderson', 'broyden'\\], not 'newton'"):
        DEQLinear(3, 4, "newton")


def deq_model(seed: int) -> nn.Sequential:
    """Flatten, Linear, DEQ block, Linear on `[B, 1, 16]` inputs, 5 classes; solves tight enough that K stacked models
    and one model alone stop within float32 rounding of each other."""
    torch.manual_seed(seed)
    block = DEQLinear(8, 6, tol=1e-6, max_iter=60, backward_tol=1e-6, backward_max_iter=60)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), block, nn.Linear(6, 5))


@pytest.mark.parametrize("solver", ["anderson", "broyden"])
def test_stacked_deqs_equal_one_by_one_models_outputs_and_gradients(solver):
    models = [deq_model(seed) for seed in (1, 2, 3)]
    for model in models:
        model[2].solver = solver
    x, y = torch.randn(7, 1, 16), torch.randint(0, 5, (7,))
    assert_stacked_deqs_equal_each_alone(models, 2, x, y, atol=1e-5, rtol=1e-4)


def test_stacked_deq_training_equals_one_by_one():
    """Model 2 idles through half of the epoch's steps (toy_data's subsets): an idle model's backward gets zeros."""
    toy = toy_data(240, 5)
    x, y, subsets = toy["seq"], toy["y"], toy["subsets"]
    config = TrainConfig(epochs=1, batch_size=32, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="constant")
    ensemble = Ensemble.from_models([deq_model(seed) for seed in (1, 2, 3)])
    train(ensemble, x, y, subsets, [21, 22, 23], config)
    for k, seed in enumerate((1, 2, 3)):
        reference, steps = train_one_by_one(deq_model(seed), x, y, subsets[k].nonzero().squeeze(1), 21 + k, config)
        assert steps == (6, 6, 3)[k]
        assert_same_weights(ensemble.model(k), reference, atol=1e-4)
