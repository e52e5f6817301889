"""Model registry: names carry width and depth; shapes and parameter counts by hand."""
import pytest
import torch
from torch import nn

from core.models.names import ModelNameError, parse_model_name
from core.models.networks import init_model, prunable_parameters


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_names_carry_grid_coordinates():
    spec = parse_model_name("cnn1d_w32_d3")
    assert (spec.family, spec.width, spec.depth) == ("cnn1d", 32, 3)
    assert parse_model_name("lenet_300_100").width is None
    spec = parse_model_name("mlp_h512-256")
    assert (spec.family, spec.hidden, spec.width) == ("mlp_h", (512, 256), None)
    assert parse_model_name("mlp_h7").hidden == (7,)
    spec = parse_model_name("deq_w50")
    assert (spec.family, spec.width, spec.depth) == ("deq", 50, None)


@pytest.mark.parametrize("name", ["mlp_w0_d2", "mlp_w64", "mlp_w64_d0", "vgg16", "MLP_w64_d2", "mlp_w64_d2 ",
                                  "mlp_h", "mlp_h512-", "mlp_h512-0", "mlp_h-256", "mlp_h512_256", "deq_w0", "deq_w8_d2",
                                  "dct_deq_w8", "subspace2_deq_w8"])
def test_invalid_names_list_the_valid_patterns(name):
    with pytest.raises(ModelNameError, match=r"(?s)unknown model.*mlp_w\{width\}_d\{depth\}.*cnn1d_w\{width\}.*resnet18"):
        parse_model_name(name)


def test_parameter_counts_by_hand():
    assert n_params(init_model("mlp_w64_d2", (1, 40), 10, 0)) == (40 * 64 + 64) + (64 * 64 + 64) + (64 * 10 + 10)
    assert n_params(init_model("lenet_300_100", (1, 28, 28), 10, 0)) == (784 * 300 + 300) + (300 * 100 + 100) + (100 * 10 + 10)
    assert n_params(init_model("mlp_h512-256", (1, 28, 28), 10, 0)) == (784 * 512 + 512) + (512 * 256 + 256) + (256 * 10 + 10)
    # 40 -> 20 -> 10 -> 5 after three pooled conv layers
    assert n_params(init_model("cnn1d_w8_d3", (1, 40), 10, 0)) == (1 * 8 * 3 + 8) + 2 * (8 * 8 * 3 + 8) + (8 * 5 * 10 + 10)
    # the DEQ block: W [w, w] without bias, U [w, in] and b [w]; then the classifier
    model = init_model("deq_w6", (1, 40), 10, 0)
    assert n_params(model) == (6 * 6 + 6 * 40 + 6) + (6 * 10 + 10)
    assert torch.linalg.matrix_norm(model[1].weight, 2).item() == pytest.approx(0.5)  # a contraction at init
    # 8x8 -> 4x4 -> 2x2; the third layer no longer pools (side < 4)
    assert n_params(init_model("cnn_w4_d3", (1, 8, 8), 10, 0)) == (1 * 4 * 9 + 4) + 2 * (4 * 4 * 9 + 4) + (4 * 2 * 2 * 10 + 10)


def test_batch_norm_cnns_by_hand():
    spec = parse_model_name("cnn1d_bn_w32_d3")
    assert (spec.family, spec.width, spec.depth) == ("cnn1d_bn", 32, 3)
    assert parse_model_name("cnn_bn_w16_d4").family == "cnn_bn"
    assert parse_model_name("subspace2_cnn_bn_w4_d2").endpoints == 2 and parse_model_name("dct_cnn1d_bn_w4_d2").dct_plus_sparse
    # bias-free convs; each BatchNorm has a weight and a bias of `width`; 8x8 -> 4x4 -> 2x2, the third does not pool
    model = init_model("cnn_bn_w4_d3", (1, 8, 8), 10, 0)
    assert n_params(model) == (1 * 4 * 9 + 2 * 4) + 2 * (4 * 4 * 9 + 2 * 4) + (4 * 2 * 2 * 10 + 10)
    assert [type(layer) for layer in model] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d] * 2 + \
        [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Flatten, nn.Linear]
    # 40 -> 20 -> 10 -> 5
    model = init_model("cnn1d_bn_w8_d3", (1, 40), 10, 0)
    assert n_params(model) == (1 * 8 * 3 + 2 * 8) + 2 * (8 * 8 * 3 + 2 * 8) + (8 * 5 * 10 + 10)
    assert [type(layer) for layer in model] == [nn.Conv1d, nn.BatchNorm1d, nn.ReLU, nn.MaxPool1d] * 3 + [nn.Flatten, nn.Linear]
    for conv, norm in zip(model[0:12:4], model[1:12:4]):
        assert conv.bias is None and (norm.num_features, norm.eps, norm.momentum) == (8, 1e-5, 0.1)
        assert norm.affine and norm.track_running_stats
    assert prunable_parameters(model) == ["0.weight", "4.weight", "8.weight", "13.weight"]  # no BatchNorm weights


@pytest.mark.parametrize("name,shape", [("mlp_w16_d3", (3, 8, 8)), ("cnn1d_w4_d5", (1, 40)), ("cnn_w4_d2", (3, 32, 32)),
                                        ("cnn1d_bn_w4_d2", (2, 12)), ("cnn_bn_w4_d2", (3, 8, 8)),
                                        ("resnet18", (1, 28, 28)), ("deq_w5", (2, 3, 3))])
def test_outputs_one_logit_per_class(name, shape):
    assert init_model(name, shape, 7, 0)(torch.zeros(2, *shape)).shape == (2, 7)


def test_same_seed_same_weights_whatever_the_global_rng():
    torch.manual_seed(123)
    a = init_model("mlp_w8_d1", (1, 40), 10, 5)
    torch.rand(1000)
    b = init_model("mlp_w8_d1", (1, 40), 10, 5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a[1].weight, init_model("mlp_w8_d1", (1, 40), 10, 6)[1].weight)


def test_input_rank_is_checked():
    with pytest.raises(ModelNameError, match=r"model 'cnn_w4_d2' needs \[C, H, W\] images, but the dataset's examples have shape \[1, 40\]"):
        init_model("cnn_w4_d2", (1, 40), 10, 0)
    with pytest.raises(ModelNameError, match=r"model 'cnn1d_bn_w4_d2' needs \[C, L\] sequences, but the dataset's examples have shape \[1, 8, 8\]"):
        init_model("cnn1d_bn_w4_d2", (1, 8, 8), 10, 0)
    with pytest.raises(ModelNameError, match=r"model 'subspace2_cnn_bn_w4_d2' needs \[C, H, W\] images"):
        init_model("subspace2_cnn_bn_w4_d2", (1, 40), 10, 0)


def test_prunable_parameters_are_linear_and_conv_weights():
    assert prunable_parameters(init_model("cnn1d_w4_d2", (1, 40), 10, 0)) == ["0.weight", "3.weight", "7.weight"]
    resnet = prunable_parameters(init_model("resnet18", (3, 32, 32), 10, 0))
    assert "conv1.weight" in resnet and "fc.weight" in resnet and not any("bn" in n or "bias" in n for n in resnet)


def test_initialisation_is_thread_safe():
    """Models built in concurrent threads get exactly their seed's weights (the global RNG is locked)."""
    from concurrent.futures import ThreadPoolExecutor

    def first_weight(seed):
        return init_model("mlp_w64_d2", (1, 40), 10, seed)[1].weight

    expected = [first_weight(seed) for seed in range(8)]
    seeds = [s for s in range(8) for _ in range(4)]
    for _ in range(3):
        with ThreadPoolExecutor(4) as pool:
            built = list(pool.map(first_weight, seeds))
        assert all(torch.equal(w, expected[s]) for s, w in zip(seeds, built))
