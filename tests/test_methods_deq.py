"""core.methods.deq: the Jacobian regulariser against one-by-one training, the probes against closed forms (the tanh
cell's Jacobian is diag(1 - f^2) W), capped inference against the iteration written out, the summary by hand."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from core.methods.deq import JacobianRegularization, capped_inference, deq_layers, deq_summary, probe
from core.models.fixed_point import Solution, SolverLog
from core.training.config import TrainConfig
from core.training.ensemble import Ensemble
from core.training.trainer import train
from reference import assert_same_weights, jacobian_penalty_step, toy_data, train_one_by_one
from test_deq import deq_model

D64 = torch.float64
CONFIG = TrainConfig(epochs=1, batch_size=32, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="constant")


def test_regularised_stacked_training_equals_one_by_one():
    """Model 2 idles through half of the epoch's steps: it draws nothing while it idles, as it would alone."""
    toy = toy_data(240, 5)
    x, y, subsets = toy["seq"], toy["y"], toy["subsets"]
    ensemble = Ensemble.from_models([deq_model(seed) for seed in (1, 2, 3)])
    penalty = JacobianRegularization(ensemble, gamma=3.0, seeds=[31, 32, 33], fraction=0.5, samples=2)
    train(ensemble, x, y, subsets, [21, 22, 23], CONFIG, hooks=penalty.hooks())
    for k, seed in enumerate((1, 2, 3)):
        members = subsets[k].nonzero().squeeze(1)
        reference, _ = train_one_by_one(deq_model(seed), x, y, members, 21 + k, CONFIG,
                                        before_step=jacobian_penalty_step(3.0, 0.5, 2, 31 + k))
        assert_same_weights(ensemble.model(k), reference, atol=1e-4)
    unregularised, _ = train_one_by_one(deq_model(1), x, y, subsets[0].nonzero().squeeze(1), 21, CONFIG)
    moved = (ensemble.model(0)[2].weight - unregularised[2].weight).abs().max()
    assert moved > 1e-3  # the penalty changed the training: the equality above is not the plain run's


def test_the_penalty_fraction_is_drawn_per_model_and_step():
    ensemble = Ensemble.from_models([deq_model(seed) for seed in (1, 2)])
    penalty = JacobianRegularization(ensemble, gamma=1.0, seeds=[5, 6], fraction=0.25)
    drawn = []
    for _ in range(400):
        penalty.step(torch.tensor([True, False]))
        drawn.append(penalty.penalised.clone())
    drawn = torch.stack(drawn)
    assert not drawn[:, 1].any()  # an idle model is never penalised
    assert abs(drawn[:, 0].double().mean().item() - 0.25) < 0.06  # 400 draws: 3 standard errors = 0.065
    generator = torch.Generator().manual_seed(5)  # model 0's draws are its own generator's uniforms
    assert drawn[:, 0].tolist() == [bool(torch.rand((), generator=generator) < 0.25) for _ in range(400)]


def test_the_regulariser_refuses_what_it_cannot_train():
    plain = Ensemble.from_models([nn.Sequential(nn.Flatten(), nn.Linear(4, 3))])
    with pytest.raises(ValueError, match=r"need a network with a DEQ block and one seed per model \(1\); got 1 seeds "
                                         r"and 0 DEQ blocks"):
        JacobianRegularization(plain, 1.0, [0])
    deq = Ensemble.from_models([deq_model(1)])
    with pytest.raises(ValueError, match="need gamma >= 0, 0 < fraction <= 1 and samples >= 1; got gamma=1.0, "
                                         "fraction=0.0, samples=1"):
        JacobianRegularization(deq, 1.0, [0], fraction=0.0)


def test_solver_log_averages_each_solves_mean_over_examples():
    log = SolverLog()
    one = Solution(torch.zeros(2, 2, 1), torch.tensor([[2, 4], [6, 6]]), torch.tensor([[0.1, 0.3], [0.2, 0.2]]),
                   torch.tensor([[True, False], [True, True]]))
    two = Solution(torch.zeros(2, 2, 1), torch.tensor([[1, 1], [2, 4]]), torch.tensor([[0.0, 0.0], [0.5, 0.5]]),
                   torch.tensor([[True, True], [False, False]]))
    log.add("forward", one)
    log.add("forward", two)
    log.add("backward", one)
    means = log.means()
    assert sorted(means) == ["backward_converged", "backward_residual", "backward_steps", "forward_converged",
                             "forward_residual", "forward_steps"]
    torch.testing.assert_close(means["forward_steps"], torch.tensor([(3 + 1) / 2, (6 + 3) / 2], dtype=D64))
    torch.testing.assert_close(means["forward_residual"], torch.tensor([(0.2 + 0.0) / 2, (0.2 + 0.5) / 2], dtype=D64))
    torch.testing.assert_close(means["forward_converged"], torch.tensor([(0.5 + 1) / 2, (1 + 0) / 2], dtype=D64))
    torch.testing.assert_close(means["backward_steps"], torch.tensor([3.0, 6.0], dtype=D64))


def symmetric_deq_models(seeds) -> list[nn.Module]:
    """float64 DEQ models whose cell weight is symmetric: J = diag(1 - f^2) W then has real eigenvalues."""
    models = [deq_model(seed).double() for seed in seeds]
    for model in models:
        with torch.no_grad():
            model[2].weight.copy_((model[2].weight + model[2].weight.T) / 2)
    return models


def test_probe_figures_equal_closed_forms_and_models_run_alone():
    models = symmetric_deq_models((1, 2))
    ensemble = Ensemble.from_models(models)
    x, y = torch.randn(9, 1, 16, dtype=D64, generator=torch.Generator().manual_seed(0)), torch.arange(9) % 5
    figures = probe(ensemble, x, y, samples=4000, power_iters=300, generator=torch.Generator().manual_seed(1))
    for k, model in enumerate(models):
        logits = model(x)
        assert figures["accuracy"][k] == (logits.argmax(1) == y).double().mean()
        nn.functional.cross_entropy(logits, y).backward()
        block = model[2]
        for direction in ("forward", "backward"):
            solution = getattr(block.stats, direction)
            assert figures[f"{direction}_steps"][k] == solution.steps.double().mean()
            assert figures[f"{direction}_converged"][k] == 1.0
            torch.testing.assert_close(figures[f"{direction}_residual"][k], solution.residual.double().mean())
        injection = model[1](model[0](x)) @ block.input_weight.T + block.bias
        fz = torch.tanh(block.stats.forward.z[0] @ block.weight.T + injection)  # [B, D]
        jacobians = (1 - fz.square()).unsqueeze(2) * block.weight  # rows diag(1 - f^2) W
        exact = jacobians.detach().square().sum((1, 2)).mean() / block.features
        torch.testing.assert_close(figures["jacobian_frobenius"][k], exact, rtol=0.05, atol=0)
        radius = torch.linalg.eigvals(jacobians.detach()).abs().amax(1).mean()
        torch.testing.assert_close(figures["spectral_radius"][k], radius, rtol=1e-6, atol=0)


@pytest.mark.parametrize("solver", ["anderson", "broyden"])
def test_capped_inference_is_the_cell_iterated_that_many_times(solver):
    """Both solvers' first step from z0 = 0 is f(z0): capped at 1 the output is f(0) (residual of z0: 1), capped
    at 2 it is f of whichever of 0 and f(0) has the lower residual, example by example (the solver keeps each row's
    lowest-residual iterate)."""
    models = [deq_model(seed).double() for seed in (1, 2)]
    ensemble = Ensemble.from_models(models)
    (layer,) = deq_layers(ensemble.template)
    layer.solver, layer.log = solver, SolverLog()
    x, y = torch.randn(11, 1, 16, dtype=D64, generator=torch.Generator().manual_seed(0)), torch.arange(11) % 5
    accuracy, residual = capped_inference(ensemble, x, y, [1, 2])
    assert (layer.tol, layer.max_iter, layer.solver, layer.log.solves) == (1e-6, 60, solver, {"forward": 0, "backward": 0})
    for k, model in enumerate(models):
        block, injection = model[2], model[1](model[0](x)) @ model[2].input_weight.T + model[2].bias
        cell = lambda z: torch.tanh(z @ block.weight.T + injection)  # noqa: E731
        iterates = [torch.zeros_like(injection)]
        for _ in range(2):
            iterates.append(cell(iterates[-1]))
        residuals = torch.stack([(cell(z) - z).norm(dim=1) / cell(z).norm(dim=1) for z in iterates[:2]])  # [2, B]
        for c in (1, 2):
            best = residuals[:c].argmin(0)  # per example, among the first c iterates
            z = torch.stack(iterates[:c])[best, torch.arange(len(y))]
            expected = (model[3](cell(z)).argmax(1) == y).double().mean()
            assert accuracy[c - 1, k] == expected
            torch.testing.assert_close(residual[c - 1, k], residuals[:c].amin(0).mean().detach())
    torch.testing.assert_close(residual[0], torch.ones(2, dtype=D64))  # ||f(0) - 0|| / (||f(0)|| + 1e-12)


def test_a_probe_after_every_epoch_leaves_training_as_it_was():
    toy = toy_data(240, 5)
    x, y, subsets = toy["seq"], toy["y"], toy["subsets"]
    config = CONFIG.model_copy(update={"epochs": 2})
    runs, epochs_seen = [], []
    for with_probe in (False, True):
        ensemble = Ensemble.from_models([deq_model(seed) for seed in (1, 2, 3)])
        penalty = JacobianRegularization(ensemble, 2.0, [31, 32, 33], fraction=0.5)

        def after_epoch(epoch, ensemble=ensemble):
            epochs_seen.append(epoch)
            probe(ensemble, x[:20], y[:20], samples=2, power_iters=3, generator=torch.Generator().manual_seed(epoch))
            capped_inference(ensemble, x[:20], y[:20], [1, 3])

        train(ensemble, x, y, subsets, [21, 22, 23], config, hooks=penalty.hooks(after_epoch if with_probe else None))
        runs.append(ensemble.state())
    assert epochs_seen == [0, 1]
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name


def test_summary_is_the_last_epochs_mean_and_standard_error_over_seeds():
    rows = []
    for gamma in (0.0, 2.0):
        for seed in (0, 1, 2):
            for epoch in (1, 2):
                value = 10 * gamma + seed + epoch
                rows.append({"gamma": gamma, "seed": seed, "epoch": epoch, "accuracy": value / 100,
                             "train_forward_steps": value, "train_backward_steps": value, "forward_steps": value + 1,
                             "backward_steps": value, "forward_residual": 1e-4, "forward_converged": 1.0,
                             "jacobian_frobenius": value / 10, "spectral_radius": 0.5, "epoch_seconds": 2.0})
    epochs = pd.DataFrame(rows)
    inference = pd.DataFrame([{"gamma": g, "seed": s, "epoch": e, "cap": c, "accuracy": 0.5, "residual": c * (s + 1)}
                              for g in (0.0, 2.0) for s in (0, 1, 2) for e in (1, 2) for c in (1, 4)])
    summary = deq_summary(epochs, inference).set_index("gamma")
    assert list(summary.columns[:4]) == ["seeds", "epoch", "accuracy", "accuracy_sem"]
    assert summary["seeds"].tolist() == [3, 3] and summary["epoch"].tolist() == [2, 2]
    # last epoch, gamma 2: values 20 + seed + 2 for seeds 0, 1, 2 -> 22, 23, 24
    assert summary.loc[2.0, "forward_steps"] == pytest.approx(24.0)
    assert summary.loc[2.0, "forward_steps_sem"] == pytest.approx(1 / math.sqrt(3))  # sd 1 over 3 seeds
    assert summary.loc[0.0, "accuracy"] == pytest.approx(0.03)
    assert summary.loc[0.0, "residual_cap4"] == pytest.approx(np.mean([4, 8, 12]))
    assert summary.loc[0.0, "residual_cap1"] == pytest.approx(2.0)


def test_probe_reports_solves_that_hit_the_cap_as_not_converged():
    ensemble = Ensemble.from_models([deq_model(seed) for seed in (1, 2)])
    (layer,) = deq_layers(ensemble.template)
    layer.tol, layer.max_iter, layer.backward_tol, layer.backward_max_iter = 1e-9, 2, 1e-9, 3
    x, y = torch.randn(6, 1, 16, generator=torch.Generator().manual_seed(0)), torch.arange(6) % 5
    figures = probe(ensemble, x, y, samples=1, power_iters=2)
    assert figures["forward_steps"].tolist() == [2.0, 2.0] and figures["backward_steps"].tolist() == [3.0, 3.0]
    assert figures["forward_converged"].tolist() == [0.0, 0.0] and figures["backward_converged"].tolist() == [0.0, 0.0]
    assert (figures["forward_residual"] > 1e-9).all() and (figures["backward_residual"] > 1e-9).all()
