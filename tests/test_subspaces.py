"""Subspace networks (Wortsman et al. 2021): endpoints and gradients against plain layers, draws, ECE and cos^2 by
hand, and the stacked K-model subspace training against one-by-one training."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.ensemble import Ensemble
from core.models import ModelNameError, init_model, parse_model_name
from core.subspaces import (SubspaceConv, SubspaceLinear, SubspaceTraining, curve_coefficients, draw_coefficients,
                            draw_pair, endpoint_cosine_squared, expected_calibration_error, fix_coefficients,
                            line_coefficients, sample_coefficients, set_coefficients, subspace_layers)
from core.training import TrainConfig, train
from reference import assert_same_weights, toy_data, train_one_by_one

N, CLASSES = 240, 5
CONFIG = TrainConfig(epochs=3, batch_size=32, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine", warmup_epochs=1)
NETWORKS = [("subspace2_mlp_w8_d2", (1, 16)), ("subspace3_cnn1d_w4_d2", (1, 16)), ("subspace2_cnn_w4_d2", (1, 8, 8))]


@pytest.fixture(scope="module")
def toy():
    return toy_data(N, CLASSES)


def plain_at(name: str, shape, model: nn.Module) -> nn.Module:
    """The plain network of subspace `model` holding its combined weights sum_i c_i W_i (copies, fresh leaves)."""
    plain = init_model(name.split("_", 1)[1], shape, CLASSES, 0)
    state = {}
    for layer_name, layer in model.named_modules():
        if layer in subspace_layers(model):
            c = layer.coefficients
            state[f"{layer_name}.weight"] = sum(ci * w for ci, w in zip(c, layer.weight.detach()))
            state[f"{layer_name}.bias"] = sum(ci * b for ci, b in zip(c, layer.bias.detach()))
    plain.load_state_dict(state)
    return plain


def test_names_parse_and_each_layer_holds_m_plain_layers():
    spec = parse_model_name("subspace3_mlp_w64_d2")
    assert (spec.family, spec.width, spec.depth, spec.endpoints, spec.dct_plus_sparse) == ("mlp", 64, 2, 3, False)
    assert parse_model_name("mlp_w64_d2").endpoints == 0
    plain, subspace = init_model("cnn1d_w4_d2", (1, 16), 10, 0), init_model("subspace3_cnn1d_w4_d2", (1, 16), 10, 0)
    for (name, p), (sub_name, q) in zip(plain.named_parameters(), subspace.named_parameters()):
        assert name == sub_name and q.shape == (3, *p.shape)
    for name in ("subspace1_mlp_w8_d1", "subspace2_dct_mlp_w8_d1", "dct_subspace2_mlp_w8_d1", "subspace2_resnet18",
                 "subspace2_mlp_w8"):
        with pytest.raises(ModelNameError, match="unknown model"):
            parse_model_name(name)


@pytest.mark.parametrize("layer,plain", [
    (lambda: SubspaceLinear(6, 4, 3), lambda: nn.Linear(6, 4)),
    (lambda: SubspaceConv(2, 3, 3, 3, spatial_dims=1), lambda: nn.Conv1d(2, 3, 3)),
    (lambda: SubspaceConv(2, 3, (3, 2), 3), lambda: nn.Conv2d(2, 3, (3, 2))),
])
def test_each_endpoint_is_drawn_as_the_plain_layers_default_init(layer, plain):
    torch.manual_seed(0)
    subspace = layer()
    torch.manual_seed(0)
    for i in range(3):  # three plain layers built one after the other draw exactly the three endpoints
        reference = plain()
        assert torch.equal(subspace.weight[i], reference.weight) and torch.equal(subspace.bias[i], reference.bias)


@pytest.mark.parametrize("name,shape", NETWORKS)
def test_each_vertex_reproduces_its_endpoint_network(name, shape):
    model, x = init_model(name, shape, CLASSES, 3), torch.randn(6, *shape)
    m = subspace_layers(model)[0].endpoints
    vertices = torch.eye(m)  # m = 2: alpha = 0 and alpha = 1
    for i in range(m):
        fix_coefficients(model, vertices[i])
        endpoint = init_model(name.split("_", 1)[1], shape, CLASSES, 0)
        endpoint.load_state_dict({n: p[i] for n, p in model.state_dict().items()})
        assert torch.equal(model(x), endpoint(x))
    ensemble = Ensemble.from_models([model] * m)  # the stacked path: model k at vertex k
    fix_coefficients(ensemble.template, vertices)
    outputs = ensemble(x, shared=True)
    for i in range(m):
        endpoint = init_model(name.split("_", 1)[1], shape, CLASSES, 0)
        endpoint.load_state_dict({n: p[i] for n, p in model.state_dict().items()})
        torch.testing.assert_close(outputs[i], endpoint(x))


@pytest.mark.parametrize("name,shape", NETWORKS)
def test_endpoint_gradient_is_its_coefficient_times_the_combined_gradient(name, shape):
    x, y = torch.randn(6, *shape), torch.randint(0, CLASSES, (6,))
    models = [init_model(name, shape, CLASSES, seed) for seed in (1, 2)]
    m = subspace_layers(models[0]).pop().endpoints
    points = [line_coefficients(0.3), line_coefficients(0.8)] if m == 2 else [curve_coefficients(0.3), torch.eye(3)[1]]
    ensemble = Ensemble.from_models(models)
    fix_coefficients(ensemble.template, torch.stack(points))
    F.cross_entropy(ensemble(x, shared=True).transpose(1, 2), y.expand(2, -1), reduction="none").mean(1).sum().backward()
    for k, model in enumerate(models):
        fix_coefficients(model, points[k])
        plain = plain_at(name, shape, model)
        F.cross_entropy(plain(x), y).backward()
        F.cross_entropy(model(x), y).backward()
        for (param_name, endpoints), combined in zip(model.named_parameters(), plain.parameters()):
            for i in range(m):  # line: (1 - alpha) g and alpha g
                torch.testing.assert_close(endpoints.grad[i], points[k][i] * combined.grad)
                torch.testing.assert_close(ensemble.params[param_name].grad[k, i], points[k][i] * combined.grad)


def test_line_and_curve_points_by_hand():
    torch.testing.assert_close(line_coefficients(0.25), torch.tensor([0.75, 0.25]))
    torch.testing.assert_close(curve_coefficients(0.5), torch.tensor([0.25, 0.5, 0.25]))
    torch.testing.assert_close(curve_coefficients([0.0, 1.0]), torch.tensor([[1.0, 0, 0], [0, 0, 1]]))
    alpha = torch.rand(1, generator=torch.Generator().manual_seed(9))
    drawn = draw_coefficients("line", torch.Generator().manual_seed(9), 3, 2, layerwise=False)
    torch.testing.assert_close(drawn, torch.cat([1 - alpha, alpha]).expand(3, 2))


@pytest.mark.parametrize("m", [2, 3, 4])
def test_simplex_draws_are_uniform_on_the_simplex(m):
    draws = draw_coefficients("simplex", torch.Generator().manual_seed(m), 20000, m, layerwise=True)
    assert (draws >= 0).all()
    torch.testing.assert_close(draws.sum(1), torch.ones(20000))
    # uniform on the simplex: each coordinate is Beta(1, m - 1), so P(c_0 > 1/2) = 2^-(m-1)
    assert abs(float((draws[:, 0] > 0.5).float().mean()) - 0.5 ** (m - 1)) < 0.015
    torch.testing.assert_close(draws.mean(0), torch.full((m,), 1 / m), atol=0.01, rtol=0)


@pytest.mark.parametrize("kind,m", [("line", 2), ("curve", 3), ("simplex", 3)])
def test_layerwise_draws_differ_per_layer_and_global_ones_do_not(kind, m):
    generators = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    takes = torch.tensor([True, False, True])
    layerwise = sample_coefficients(kind, generators, takes, 4, m, layerwise=True)
    shared = sample_coefficients(kind, generators, takes, 4, m, layerwise=False)
    for drawn in (layerwise, shared):
        assert torch.equal(drawn[1], torch.zeros(4, m))  # a model that does not step draws nothing
        torch.testing.assert_close(drawn[[0, 2]].sum(-1), torch.ones(2, 4))
    assert all(len(set(map(tuple, drawn.tolist()))) == 4 for drawn in layerwise[[0, 2]])
    assert all(torch.equal(drawn, drawn[:1].expand(4, m)) for drawn in shared[[0, 2]])


def draw_log(training: SubspaceTraining) -> list[list[torch.Tensor]]:
    """Wrap `training.step` to log each model's coefficients on the steps it takes."""
    log, step = [[] for _ in training.generators], training.step

    def logged(takes):
        step(takes)
        for k in takes.nonzero().flatten().tolist():
            log[k].append(torch.cat([training.coefficients[k].flatten(), training.pairs[k].float()]))

    training.step = logged
    return log


def test_a_models_draws_do_not_depend_on_its_shard_mates(toy):
    x, y, subsets, config = toy["seq"], toy["y"], toy["subsets"], CONFIG.model_copy(update={"epochs": 2})
    ensemble = Ensemble.init("subspace3_mlp_w4_d1", (1, 16), CLASSES, [1, 2, 3])
    together = SubspaceTraining(ensemble, "simplex", [7, 8, 9], layerwise=True)
    log = draw_log(together)
    train(ensemble, x, y, subsets, [4, 5, 6], config, step_hook=together.step, regularizer=together.regularizer)
    for k in range(3):
        alone_ensemble = Ensemble.init("subspace3_mlp_w4_d1", (1, 16), CLASSES, [1 + k])
        alone = SubspaceTraining(alone_ensemble, "simplex", [7 + k], layerwise=True)
        alone_log = draw_log(alone)
        train(alone_ensemble, x, y, subsets[k : k + 1], [4 + k], config, step_hook=alone.step,
              regularizer=alone.regularizer)
        assert len(log[k]) == config.epochs * (int(subsets[k].sum()) // config.batch_size)  # only its own steps
        assert torch.equal(torch.stack(log[k]), torch.stack(alone_log[0]))


def test_expected_calibration_error_of_a_calibrated_toy_is_zero():
    # 5 predictions at confidence 0.8, 4 right; 5 at 0.6, 3 right
    probs = torch.tensor([[0.8, 0.2]] * 5 + [[0.4, 0.6]] * 5).unsqueeze(0)
    labels = torch.tensor([0, 0, 0, 0, 1] + [1, 1, 1, 0, 0])
    torch.testing.assert_close(expected_calibration_error(probs, labels), torch.zeros(1))


def test_expected_calibration_error_by_hand():
    labels = torch.tensor([0, 1, 0, 0])
    confident = torch.tensor([[0.93, 0.07], [0.93, 0.07], [0.56, 0.44], [0.72, 0.28]])  # right, wrong, right, right
    flat = torch.tensor([[0.7, 0.3]] * 4)  # 3 of 4 right at 0.7
    probs = torch.stack([confident, flat])
    # bins (0.9, 0.95]: 2 examples, accuracy 1/2 at confidence 0.93; (0.55, 0.6]: 1 - 0.56; (0.7, 0.75]: 1 - 0.72
    by_hand = torch.tensor([(2 * 0.43 + 0.44 + 0.28) / 4, 0.05])
    torch.testing.assert_close(expected_calibration_error(probs, labels), by_hand)
    one_bin = torch.tensor([abs(3 - (0.93 + 0.93 + 0.56 + 0.72)) / 4, 0.05])  # one bin: |accuracy - mean confidence|
    torch.testing.assert_close(expected_calibration_error(probs, labels, bins=1), one_bin)


def test_endpoint_cosine_squared_by_hand():
    # model 0: endpoints of three entries (two layers) e0 = (1, 0 | 0), e2 = (1, 1 | 1): cos^2 = 1 / 3
    # model 1: e1 = (0, 2 | 0), e0 = (0, 1 | 1): cos^2 = 2^2 / (4 * 2) = 1 / 2
    first = torch.tensor([[[1.0, 0], [5, 5], [1, 1]], [[0, 1], [0, 2], [7, 7]]])
    second = torch.tensor([[[0.0], [9], [1]], [[1], [0], [3]]])
    pairs = torch.tensor([[0, 2], [1, 0]])
    torch.testing.assert_close(endpoint_cosine_squared([first, second], pairs), torch.tensor([1 / 3, 1 / 2]))
    torch.testing.assert_close(endpoint_cosine_squared([first, second], pairs.flip(1)), torch.tensor([1 / 3, 1 / 2]))
    pair = draw_pair(torch.Generator().manual_seed(0), 4)
    assert pair.shape == (2,) and pair[0] != pair[1]


def reference_step(kind: str, layerwise: bool, seed: int, beta: float):
    """One model's per-step draws from its own generator (coefficients, then the pair) and its beta cos^2 term."""
    generator = torch.Generator().manual_seed(seed)

    def before_step(model):
        layers = subspace_layers(model)
        set_coefficients(model, draw_coefficients(kind, generator, len(layers), layers[0].endpoints, layerwise))
        i, j = draw_pair(generator, layers[0].endpoints).tolist()
        w_i, w_j = (torch.cat([layer.weight[e].flatten() for layer in layers]) for e in (i, j))
        return beta * F.cosine_similarity(w_i, w_j, dim=0).square()

    return before_step


@pytest.mark.parametrize("name,kind,layerwise,beta", [
    ("subspace2_mlp_w16_d2", "line", False, 1.0),
    ("subspace2_mlp_w16_d2", "line", True, 1.0),
    ("subspace3_mlp_w16_d2", "simplex", False, 1.0),
    ("subspace3_mlp_w16_d2", "curve", True, 2.0),
    ("subspace2_cnn1d_w4_d2", "line", True, 1.0),
])
def test_stacked_subspace_training_equals_one_by_one(toy, name, kind, layerwise, beta):
    x, y, subsets = toy["seq"], toy["y"], toy["subsets"]
    seeds, order_seeds, draw_seeds = [11, 12, 13], [21, 22, 23], [31, 32, 33]
    ensemble = Ensemble.init(name, x.shape[1:], CLASSES, seeds)
    assert ensemble.stacked
    subspace = SubspaceTraining(ensemble, kind, draw_seeds, layerwise, beta)
    train(ensemble, x, y, subsets, order_seeds, CONFIG, step_hook=subspace.step, regularizer=subspace.regularizer)
    for k in range(3):
        reference, _ = train_one_by_one(init_model(name, x.shape[1:], CLASSES, seeds[k]), x, y,
                                        subsets[k].nonzero().squeeze(1), order_seeds[k], CONFIG,
                                        before_step=reference_step(kind, layerwise, draw_seeds[k], beta))
        assert_same_weights(ensemble.model(k), reference)


def test_a_subspace_kind_needs_its_number_of_endpoints():
    ensemble = Ensemble.init("subspace3_mlp_w4_d1", (1, 16), CLASSES, [1])
    with pytest.raises(ValueError, match="a 'line' subspace needs 2 endpoints; the network has 3"):
        SubspaceTraining(ensemble, "line", [0])
    with pytest.raises(ValueError, match="coefficients of shape \\[3\\]"):
        init_model("subspace3_mlp_w4_d1", (1, 16), CLASSES, 0)(torch.zeros(1, 1, 16))
