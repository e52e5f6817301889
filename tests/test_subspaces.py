"""Subspace networks (Wortsman et al. 2021): endpoints and gradients against plain layers, draws, ECE and cos^2 by
hand, and the stacked K-model subspace training against one-by-one training; BatchNorm networks interpolate their
affine parameters and keep one model's running statistics."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.methods.subspaces import SubspaceTraining, expected_calibration_error
from core.models.names import ModelNameError, parse_model_name
from core.models.networks import init_model
from core.models.subspaces import (SubspaceBatchNorm, SubspaceConv, SubspaceLinear, _CombineEndpoints, _EndpointGram,
                            curve_coefficients, draw_coefficients, draw_pair, endpoint_cosine_squared,
                            fix_coefficients, line_coefficients, sample_coefficients,
                            subspace_layers, subspace_network)
from core.training.config import TrainConfig
from core.training.ensemble import Ensemble
from core.training.trainer import train
from reference import assert_same_weights, subspace_step, toy_data, train_one_by_one, with_random_batch_norm

N, CLASSES = 240, 5
CONFIG = TrainConfig(epochs=3, batch_size=32, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine", warmup_epochs=1)
NETWORKS = [("subspace2_mlp_w8_d2", (1, 16)), ("subspace3_cnn1d_w4_d2", (1, 16)), ("subspace2_cnn_w4_d2", (1, 8, 8)),
            ("subspace2_cnn_bn_w4_d2", (1, 8, 8)), ("subspace3_cnn1d_bn_w4_d2", (1, 16))]


@pytest.fixture(scope="module")
def toy():
    return toy_data(N, CLASSES)


def plain_at(name: str, shape, model: nn.Module) -> nn.Module:
    """The plain network of subspace `model` holding its combined weights sum_i c_i W_i, BatchNorm's affine ones
    included, and its running statistics (copies, fresh leaves)."""
    plain = init_model(name.split("_", 1)[1], shape, CLASSES, 0)
    state = {n: b.clone() for n, b in model.named_buffers()}
    for layer_name, layer in model.named_modules():
        if layer in subspace_layers(model):
            c = layer.coefficients
            state[f"{layer_name}.weight"] = sum(ci * w for ci, w in zip(c, layer.weight.detach()))
            if layer.bias is not None:  # convs before BatchNorm have none
                state[f"{layer_name}.bias"] = sum(ci * b for ci, b in zip(c, layer.bias.detach()))
    plain.load_state_dict(state)
    return plain


def endpoint_network(name: str, shape, model: nn.Module, i: int) -> nn.Module:
    """The plain network holding endpoint i of every parameter of subspace `model`, and its running statistics."""
    endpoint = init_model(name.split("_", 1)[1], shape, CLASSES, 0)
    params = dict(model.named_parameters())
    endpoint.load_state_dict({n: t[i] if n in params else t for n, t in model.state_dict().items()})
    return endpoint


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


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name,shape", NETWORKS)
def test_each_vertex_reproduces_its_endpoint_network(name, shape, training):
    """In training mode BatchNorm normalises with the batch's statistics and updates its running ones (compared too)."""
    model, x = with_random_batch_norm(init_model(name, shape, CLASSES, 3), 3), torch.randn(6, *shape)
    m = subspace_layers(model)[0].endpoints
    vertices = torch.eye(m)  # m = 2: alpha = 0 and alpha = 1
    for i in range(m):
        fix_coefficients(model, vertices[i])
        alone, endpoint = copy.deepcopy(model).train(training), endpoint_network(name, shape, model, i).train(training)
        assert torch.equal(alone(x), endpoint(x))
        assert all(torch.equal(alone.get_buffer(n), b) for n, b in endpoint.named_buffers())
    ensemble = Ensemble.from_models([model] * m)  # the stacked path: model k at vertex k
    assert ensemble.stacked
    fix_coefficients(ensemble.template, vertices)
    outputs = ensemble(x, shared=True, train=training)
    for i in range(m):
        endpoint = endpoint_network(name, shape, model, i).train(training)
        torch.testing.assert_close(outputs[i], endpoint(x))
        for n, b in endpoint.named_buffers():
            torch.testing.assert_close(ensemble.buffers[n][i], b, msg=n)


@pytest.mark.parametrize("name,shape", NETWORKS)
def test_endpoint_gradient_is_its_coefficient_times_the_combined_gradient(name, shape):
    x, y = torch.randn(6, *shape), torch.randint(0, CLASSES, (6,))
    models = [with_random_batch_norm(init_model(name, shape, CLASSES, seed), seed) for seed in (1, 2)]
    m = subspace_layers(models[0]).pop().endpoints
    points = [line_coefficients(0.3), line_coefficients(0.8)] if m == 2 else [curve_coefficients(0.3), torch.eye(3)[1]]
    ensemble = Ensemble.from_models(models)
    fix_coefficients(ensemble.template, torch.stack(points))
    logits = ensemble(x, shared=True, train=True)  # as the models below: training mode (batch statistics)
    F.cross_entropy(logits.transpose(1, 2), y.expand(2, -1), reduction="none").mean(1).sum().backward()
    for k, model in enumerate(models):
        fix_coefficients(model, points[k])
        plain = plain_at(name, shape, model)
        plain_logits = plain(x)
        torch.testing.assert_close(logits[k], plain_logits)
        F.cross_entropy(plain_logits, y).backward()
        F.cross_entropy(model(x), y).backward()
        for (param_name, endpoints), (plain_name, combined) in zip(model.named_parameters(), plain.named_parameters()):
            assert param_name == plain_name
            for i in range(m):  # line: (1 - alpha) g and alpha g; BatchNorm's affine weight and bias alike
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
    train(ensemble, x, y, subsets, [4, 5, 6], config, hooks=together.hooks())
    for k in range(3):
        alone_ensemble = Ensemble.init("subspace3_mlp_w4_d1", (1, 16), CLASSES, [1 + k])
        alone = SubspaceTraining(alone_ensemble, "simplex", [7 + k], layerwise=True)
        alone_log = draw_log(alone)
        train(alone_ensemble, x, y, subsets[k : k + 1], [4 + k], config, hooks=alone.hooks())
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


def test_endpoint_cosine_squared_gradient_equals_torchs_cosine_similarity():
    # the Gram-matrix backward against autograd through F.cosine_similarity of each model's flattened pair
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(3, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True),
               torch.randn(3, 3, 2, 1, 3, generator=g, dtype=torch.float64, requires_grad=True)]
    pairs = torch.tensor([[0, 2], [1, 0], [2, 1]])
    endpoint_cosine_squared(weights, pairs).sum().backward()
    ours = [w.grad.clone() for w in weights]
    for w in weights:
        w.grad = None
    reference = sum(F.cosine_similarity(*(torch.cat([w[k, e].flatten() for w in weights]) for e in pair), dim=0)
                    .square() for k, pair in enumerate(pairs.tolist()))
    reference.backward()
    for mine, theirs in zip(ours, weights):
        torch.testing.assert_close(mine, theirs.grad)


def test_combined_weights_backward_passes_gradcheck():
    # the endpoints' gradient c_i * grad (and the coefficients' <grad, W_i>), and the Gram's (g + g^T) W, against
    # finite differences
    g = torch.Generator().manual_seed(0)
    coefficients = torch.rand(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    endpoints = torch.randn(2, 3, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_CombineEndpoints.apply, (coefficients, endpoints))
    assert torch.autograd.gradcheck(_EndpointGram.apply, (endpoints,))


@pytest.mark.parametrize("name,key,kind,layerwise,beta", [
    ("subspace2_mlp_w16_d2", "seq", "line", False, 1.0),
    ("subspace2_mlp_w16_d2", "seq", "line", True, 1.0),
    ("subspace3_mlp_w16_d2", "seq", "simplex", False, 1.0),
    ("subspace3_mlp_w16_d2", "seq", "curve", True, 2.0),
    ("subspace2_cnn1d_w4_d2", "seq", "line", True, 1.0),
    ("subspace2_cnn_bn_w4_d2", "img", "line", False, 1.0),
    ("subspace3_cnn1d_bn_w4_d2", "seq", "simplex", True, 1.0),
])
def test_stacked_subspace_training_equals_one_by_one(toy, name, key, kind, layerwise, beta):
    """BatchNorm networks' running statistics are compared too (assert_same_weights takes the whole state_dict)."""
    x, y, subsets = toy[key], toy["y"], toy["subsets"]
    seeds, order_seeds, draw_seeds = [11, 12, 13], [21, 22, 23], [31, 32, 33]
    ensemble = Ensemble.init(name, x.shape[1:], CLASSES, seeds)
    assert ensemble.stacked
    subspace = SubspaceTraining(ensemble, kind, draw_seeds, layerwise, beta)
    train(ensemble, x, y, subsets, order_seeds, CONFIG, hooks=subspace.hooks())
    for k in range(3):
        reference, _ = train_one_by_one(init_model(name, x.shape[1:], CLASSES, seeds[k]), x, y,
                                        subsets[k].nonzero().squeeze(1), order_seeds[k], CONFIG,
                                        before_step=subspace_step(kind, layerwise, draw_seeds[k], beta))
        assert_same_weights(ensemble.model(k), reference)


def test_a_subspace_kind_needs_its_number_of_endpoints():
    ensemble = Ensemble.init("subspace3_mlp_w4_d1", (1, 16), CLASSES, [1])
    with pytest.raises(ValueError, match="a 'line' subspace needs 2 endpoints; the network has 3"):
        SubspaceTraining(ensemble, "line", [0])
    with pytest.raises(ValueError, match="coefficients of shape \\[3\\]"):
        init_model("subspace3_mlp_w4_d1", (1, 16), CLASSES, 0)(torch.zeros(1, 1, 16))


def test_subspace_batch_norm_holds_m_affine_endpoints_and_one_models_statistics():
    plain, subspace = init_model("cnn1d_bn_w4_d2", (1, 16), CLASSES, 0), init_model("subspace3_cnn1d_bn_w4_d2", (1, 16),
                                                                                     CLASSES, 0)
    for (name, p), (sub_name, q) in zip(plain.named_parameters(), subspace.named_parameters()):
        assert name == sub_name and q.shape == (3, *p.shape)
    assert {n: b.shape for n, b in plain.named_buffers()} == {n: b.shape for n, b in subspace.named_buffers()}
    norm = subspace[1]
    assert isinstance(norm, SubspaceBatchNorm) and norm in subspace_layers(subspace)
    assert torch.equal(norm.weight, torch.ones(3, 4)) and torch.equal(norm.bias, torch.zeros(3, 4))
    assert (norm.eps, norm.momentum, norm.spatial_dims) == (1e-5, 0.1, 1)
    assert subspace[0].bias is None  # the conv before it has no bias, as in the plain network
    training = SubspaceTraining(Ensemble.from_models([subspace]), "simplex", [0])
    assert training.weight_names == ["0.weight", "4.weight", "9.weight"]  # linear and conv weights: cos^2 ignores BN
    with pytest.raises(ValueError, match="subspace BatchNorm is affine, keeps running statistics and has a momentum"):
        subspace_network(nn.Sequential(nn.BatchNorm1d(4, momentum=None)), 2)
    with pytest.raises(ValueError, match="expected a 4-D input, got 3-D"):
        SubspaceBatchNorm(4, 2)(torch.zeros(2, 4, 5))
