"""The DEQ's explicit baselines (core.models.unrolled): names, the DEQ's own initial weights, one tanh layer by hand at
L = 1, and K = 3 stacked models equal to each run alone by a plain torch loop, forward and gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

from core.methods.deq_costs import model_costs
from core.models.names import ModelNameError, parse_model_name
from core.models.networks import init_model
from core.training.ensemble import Ensemble

SHAPE, CLASSES = (1, 7), 3


def by_loop(model, x):
    """Logits of one plain network `model` (Flatten, cell, Linear) by a loop written out here: z_0 = 0, then
    z_l = tanh(z_{l-1} W_l^T + x U^T + b_l)."""
    cell, head = model[1], model[2]
    z = torch.zeros(len(x), cell.features)
    for layer in range(cell.depth):
        w = cell.weight if cell.tied else cell.weight[layer]
        b = cell.bias if cell.tied else cell.bias[layer]
        z = torch.tanh(z @ w.T + x.flatten(1) @ cell.input_weight.T + b)
    return z @ head.weight.T + head.bias


def test_names_parse_into_family_width_and_depth():
    spec = parse_model_name("unrolled16_w64")
    assert (spec.family, spec.width, spec.depth) == ("unrolled", 64, 16)
    spec = parse_model_name("explicit2_w8")
    assert (spec.family, spec.width, spec.depth) == ("explicit", 8, 2)
    for bad in ("unrolled0_w8", "explicit4_w0", "unrolled_w8", "dct_unrolled2_w8", "subspace2_explicit2_w8"):
        with pytest.raises(ModelNameError, match=f"^unknown model '{bad}'"):
            parse_model_name(bad)


def test_tied_network_starts_as_the_deq_of_its_seed_and_untied_has_a_cell_per_layer():
    deq, tied, untied = (init_model(n, SHAPE, CLASSES, 5) for n in ("deq_w6", "unrolled3_w6", "explicit3_w6"))
    for name in ("weight", "input_weight", "bias"):
        assert torch.equal(getattr(tied[1], name), getattr(deq[1], name))
    assert torch.equal(untied[1].weight[0], deq[1].weight) and torch.equal(untied[1].input_weight, deq[1].input_weight)
    assert untied[1].weight.shape == (3, 6, 6) and untied[1].bias.shape == (3, 6)
    assert torch.linalg.matrix_norm(untied[1].weight.detach(), 2).tolist() == pytest.approx([0.5] * 3, rel=1e-5)
    assert not torch.equal(untied[1].weight[1], untied[1].weight[2])


def test_tied_at_one_step_is_one_tanh_layer_by_hand():
    model = init_model("unrolled1_w4", SHAPE, CLASSES, 0)
    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(1))
    cell = model[1]
    u, b = cell.input_weight.tolist(), cell.bias.tolist()
    hidden = [[math.tanh(sum(u[j][i] * x[n, 0, i].item() for i in range(7)) + b[j]) for j in range(4)]
              for n in range(5)]
    assert cell(x.flatten(1)).detach().tolist() == [pytest.approx(row, abs=1e-6) for row in hidden]


@pytest.mark.parametrize("name", ["unrolled4_w5", "explicit3_w5"])
def test_three_stacked_models_equal_each_run_alone(name):
    ensemble = Ensemble.init(name, SHAPE, CLASSES, [0, 1, 2])
    assert ensemble.stacked  # the fast path, not the vmap fallback
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(3, 6, *SHAPE, generator=generator), torch.randint(0, CLASSES, (3, 6), generator=generator)
    logits = ensemble(x, train=True)
    loss = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1).sum()
    grads = dict(zip(ensemble.params, torch.autograd.grad(loss, list(ensemble.params.values()))))
    for k, seed in enumerate([0, 1, 2]):
        model = init_model(name, SHAPE, CLASSES, seed)
        alone = by_loop(model, x[k])
        torch.testing.assert_close(logits[k].detach(), alone.detach(), atol=1e-6, rtol=0)
        torch.testing.assert_close(model(x[k]).detach(), alone.detach(), atol=1e-6, rtol=0)  # its own forward
        F.cross_entropy(alone, y[k]).backward()
        for param_name, param in model.named_parameters():
            torch.testing.assert_close(grads[param_name][k], param.grad, atol=1e-6, rtol=0, msg=param_name)
    if name.startswith("explicit"):  # W_1 meets z_0 = 0: exactly no gradient
        assert torch.count_nonzero(grads["1.weight"][:, 0]) == 0


def test_a_step_keeps_one_more_tanh_output_per_cell_for_the_backward():
    x, y = torch.randn(100, *SHAPE), torch.randint(0, CLASSES, (100,))
    costs = {depth: model_costs(Ensemble.init(f"unrolled{depth}_w5", SHAPE, CLASSES, [0, 1]), x[:6], y[:6], x, 50)
             for depth in (1, 3)}
    assert costs[1]["memory_method"] == ["autograd_saved_bytes"] * 2  # the CPU
    # two more cells: each keeps its [5 units x 6 examples] float32 tanh output
    assert costs[3]["step_memory_bytes"] == [m + 2 * 5 * 6 * 4 for m in costs[1]["step_memory_bytes"]]
    assert costs[1]["parameters"] == [5 * 5 + 5 * 7 + 5 + 5 * 3 + 3] * 2
    own_batch = model_costs(Ensemble.init("unrolled1_w5", SHAPE, CLASSES, [0, 1]), x[:6].clone(), y[:6], x, 50)
    assert own_batch["step_memory_bytes"] == costs[1]["step_memory_bytes"]  # a slice counts only its rows
