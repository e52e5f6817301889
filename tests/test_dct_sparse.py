"""DCT+Sparse layers: the DCT against scipy, layers against hand computation, one shared D, sparse masks' densities
by hand, and the stacked K-model training against one-by-one training."""
import math

import numpy as np
import pytest
import scipy.fft
import torch
from torch import nn

import core.models.dct_sparse as dct_sparse
from core.models.dct_sparse import (DCTPlusSparseConv, DCTPlusSparseLinear, dct, dct_kernel, dct_matrix,
                                    sparse_weight_names)
from core.models.sparse_masks import layer_densities, random_masks
from core.models.names import ModelNameError, parse_model_name
from core.models.nested import host_name
from core.models.networks import init_model, prunable_parameters
from core.training.config import TrainConfig
from core.training.ensemble import Ensemble
from core.training.trainer import train
from reference import assert_same_weights, toy_data, train_one_by_one

N, CLASSES = 240, 5
CONFIG = TrainConfig(epochs=3, batch_size=32, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine", warmup_epochs=1)
CPU = torch.device("cpu")
AUTO = dct_sparse.FFT_WORK_RATIO  # the shipped "auto" rule; a ratio of 0 runs every "auto" DCT by FFT


def scipy_dct(x: np.ndarray, out: int, axis: int = -1) -> np.ndarray:
    """The first `out` ortho DCT-II coefficients of `x` zero-padded to max(in, out) along `axis`, by scipy."""
    n = max(x.shape[axis], out)
    padding = [(0, 0)] * x.ndim
    padding[axis] = (0, n - x.shape[axis])
    return np.take(scipy.fft.dct(np.pad(x, padding), norm="ortho", axis=axis), range(out), axis=axis)


@pytest.mark.parametrize("transform", ["fft", "matrix"])
@pytest.mark.parametrize("n_in,n_out", [(5, 8), (6, 9), (8, 8), (7, 7), (9, 4), (12, 5), (1, 3), (4, 1), (40, 256),
                                        (256, 10), (300, 300)])
def test_dct_equals_scipy_along_any_dim(transform, n_in, n_out):
    g = torch.Generator().manual_seed(n_in * 10 + n_out)
    x = torch.randn(3, n_in, generator=g, dtype=torch.float64)
    np.testing.assert_allclose(dct(x, n_out, -1, transform).numpy(), scipy_dct(x.numpy(), n_out), atol=1e-12)
    features = torch.randn(2, n_in, 6, generator=g, dtype=torch.float64)  # [K, F, B]: the stacked layout
    np.testing.assert_allclose(dct(features, n_out, 1, transform).numpy(), scipy_dct(features.numpy(), n_out, 1),
                               atol=1e-12)


@pytest.mark.parametrize("n", [1, 6, 7, 64])
def test_dct_matrix_is_orthonormal_and_cached_once(n):
    basis = dct_matrix(n, n, CPU, torch.float64)
    torch.testing.assert_close(basis @ basis.T, torch.eye(n, dtype=torch.float64))
    np.testing.assert_allclose(basis.numpy(), scipy.fft.dct(np.eye(n), norm="ortho", axis=0), atol=1e-12)
    assert dct_matrix(n, n, CPU, torch.float64) is basis and not basis.requires_grad
    cut = dct_matrix(max(n - 2, 1), n, CPU, torch.float64)  # same n = max(in, out): a view of the same basis
    assert cut.untyped_storage().data_ptr() == basis.untyped_storage().data_ptr()


@pytest.mark.parametrize("transform", ["fft", "matrix"])
@pytest.mark.parametrize("n_in,n_out", [(6, 9), (8, 8), (9, 4)])
def test_linear_layer_is_alpha_dct_plus_sparse_plus_bias(transform, n_in, n_out):
    torch.manual_seed(0)
    layer = DCTPlusSparseLinear(n_in, n_out, transform=transform)
    with torch.no_grad():
        layer.alpha.fill_(0.7)
        layer.weight.mul_(torch.rand(n_out, n_in) > 0.5)
    x = torch.randn(5, n_in)
    by_hand = (0.7 * scipy_dct(x.double().numpy(), n_out) + x.double().numpy() @ layer.weight.double().detach().numpy().T
               + layer.bias.double().detach().numpy())
    np.testing.assert_allclose(layer(x).detach().numpy(), by_hand, atol=1e-5)


def conv_by_hand(x: np.ndarray, layer: DCTPlusSparseConv, alpha: float) -> np.ndarray:
    """One example `[C, *spatial]` through the layer, patch by patch: alpha * DCT(patch) + S patch + b (numpy); the
    DCT's patch flattened in the layer's `patch_order` (authors: kernel positions, then channels fastest)."""
    stride, padding, kernel = layer.stride, layer.padding, layer.kernel_size
    padded = np.pad(x, [(0, 0)] + [(p, p) for p in padding])
    positions = [range(0, s - k + 1, st) for s, k, st in zip(padded.shape[1:], kernel, stride)]
    weight, bias = layer.weight.detach().double().numpy().reshape(layer.out_channels, -1), layer.bias.detach().numpy()
    out = np.zeros((layer.out_channels, *map(len, positions)))
    for index in np.ndindex(*out.shape[1:]):
        start = [p[i] for p, i in zip(positions, index)]
        patch = padded[(slice(None), *(slice(s, s + k) for s, k in zip(start, kernel)))].reshape(-1)  # [in, *kernel]
        window = padded[(slice(None), *(slice(s, s + k) for s, k in zip(start, kernel)))]
        ordered = patch if layer.patch_order == "torch" else np.moveaxis(window, 0, -1).reshape(-1)  # [*kernel, in]
        out[(slice(None), *index)] = alpha * scipy_dct(ordered, layer.out_channels) + weight @ patch + bias
    return out


@pytest.mark.parametrize("conv,shape", [(nn.Conv1d(3, 5, 3, padding=1), (3, 11)), (nn.Conv1d(2, 9, 4, stride=2), (2, 12)),
                                        (nn.Conv2d(2, 4, 3, padding=1), (2, 6, 5)),
                                        (nn.Conv2d(3, 30, 2, stride=2, padding=1), (3, 5, 6))])
@pytest.mark.parametrize("patch_order", ["authors", "torch"])
def test_conv_layer_is_alpha_dct_of_each_patch_plus_sparse_plus_bias(conv, shape, patch_order):
    torch.manual_seed(1)
    layer = DCTPlusSparseConv.from_conv(conv)
    layer.patch_order = patch_order
    with torch.no_grad():
        layer.alpha.fill_(-1.3)
    x = torch.randn(2, *shape)
    out = layer(x).detach().numpy()
    assert out.shape == conv(x).shape
    for b in range(2):
        np.testing.assert_allclose(out[b], conv_by_hand(x[b].double().numpy(), layer, -1.3), atol=1e-5)


@pytest.mark.parametrize("out_channels, in_channels, kernel_size", [(5, 3, (3, 3)), (30, 3, (2, 2)), (4, 2, (3,))])
def test_the_authors_conv_dct_kernel_is_dctps_definition(out_channels, in_channels, kernel_size):
    """DCTpS's DCTconv2d: f = dct(I_n, norm=ortho)[:patch, :out] reshaped to (*kernel, in, out) and transposed to
    (out, in, *kernel); the same for a 1-D kernel."""
    patch = in_channels * math.prod(kernel_size)
    f = scipy.fft.dct(np.eye(max(patch, out_channels)), norm="ortho")[:patch, :out_channels]
    spatial = len(kernel_size)
    theirs = np.transpose(f.reshape(*kernel_size, in_channels, out_channels), (spatial + 1, spatial, *range(spatial)))
    ours = dct_kernel(out_channels, in_channels, kernel_size, torch.device("cpu"), torch.float64)
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-12)
    torch_order = dct_kernel(out_channels, in_channels, kernel_size, torch.device("cpu"), torch.float64, "torch")
    np.testing.assert_allclose(torch_order.reshape(out_channels, -1).numpy(), f.T, atol=1e-12)
    with pytest.raises(ValueError, match="patch_order must be 'authors' or 'torch', not 'cwh'"):
        dct_kernel(out_channels, in_channels, kernel_size, torch.device("cpu"), torch.float64, "cwh")


def test_auto_weighs_the_matmul_of_the_cut_d_against_the_fft_of_size_n():
    ratio = dct_sparse.FFT_WORK_RATIO
    assert dct_sparse.uses_fft(784, 784, "auto") == (784 * 784 >= ratio * 784 * math.log2(784))
    assert dct_sparse.uses_fft(4096, 4096, "auto") and not dct_sparse.uses_fft(40, 40, "auto")
    assert not dct_sparse.uses_fft(4096, 10, "auto")  # 10 rows of D: a small matmul beats a 4096-point FFT
    assert dct_sparse.uses_fft(40, 40, "fft") and not dct_sparse.uses_fft(4096, 4096, "matrix")


def test_auto_folds_from_eight_rows_against_the_matmul_and_with_many_rows_against_the_fft():
    """Against the shared matmul: from FOLD_MIN_ROWS rows. Against the shared FFT: in x out x FOLD_FFT_RATIO <= rows x
    24 n log2 n, here the shapes and rows of bench.dct_sparse, by hand."""
    assert dct_sparse.FOLD_MIN_ROWS == 8 and dct_sparse.FOLD_FFT_RATIO == 40
    assert not dct_sparse.uses_fft(40, 256, "auto") and dct_sparse.uses_fft(256, 256, "auto")
    assert dct_sparse.folds(40, 256, 8, "auto") and not dct_sparse.folds(40, 256, 7, "auto")
    for n, fold_from in ((256, 53.3), (512, 94.8), (1024, 170.7)):  # n^2 x 40 / (24 n log2 n) rows
        for rows in (32, 128):
            assert dct_sparse.folds(n, n, rows, "auto") == (rows >= fold_from), (n, rows)
    assert dct_sparse.folds(784, 300, 128, "auto") and not dct_sparse.folds(784, 300, 32, "auto")  # from 52 rows
    assert dct_sparse.folds(3, 4, 1, "fold") and not dct_sparse.folds(3, 4, 10**6, "shared")
    # a layer told to run D by FFT is weighed against the FFT: 40 x 40 folds from 40 x 40 x 40 / (24 x 40 log2 40) rows
    assert not dct_sparse.folds(40, 40, 12, "auto", "fft") and dct_sparse.folds(40, 40, 13, "auto", "fft")
    with pytest.raises(ValueError, match="offset must be 'auto', 'fold' or 'shared', not 'merge'"):
        DCTPlusSparseLinear(3, 4, offset="merge")


@pytest.mark.parametrize("transform", ["fft", "matrix"])
@pytest.mark.parametrize("n_in,n_out", [(12, 16), (30, 7)])
def test_folded_alpha_d_equals_the_shared_transform_with_gradients(transform, n_in, n_out, monkeypatch):
    """Stacked (K = 3) and one model alone: S_k + alpha_k D in one matmul, against alpha_k D x + S_k x."""
    torch.manual_seed(3)
    double = torch.float64
    params = {"weight": torch.randn(3, n_out, n_in, dtype=double), "bias": torch.randn(3, n_out, dtype=double),
              "alpha": torch.tensor([0.5, 1.0, -2.0], dtype=double)}
    x = torch.randn(3, n_in, 9, dtype=torch.float64)
    results, real = {}, dct_sparse.dct
    for offset in ("fold", "shared"):
        layer = DCTPlusSparseLinear(n_in, n_out, transform=transform, offset=offset).double()
        leaves = {n: p.clone().requires_grad_(True) for n, p in params.items()}
        calls = []
        monkeypatch.setattr(dct_sparse, "dct", lambda x, *args: calls.append(1) or real(x, *args))
        out = layer.forward_stacked(x, leaves, 3)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        with torch.no_grad():
            layer.weight.copy_(params["weight"][2]), layer.bias.copy_(params["bias"][2]), layer.alpha.fill_(-2.0)
        results[offset] = (out, {n: p.grad for n, p in leaves.items()}, layer(x[2].T), len(calls))
    (folded, folded_grads, folded_alone, folded_calls), (shared, shared_grads, shared_alone, shared_calls) = \
        results["fold"], results["shared"]
    torch.testing.assert_close(folded, shared, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(folded_alone, shared_alone, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(folded_alone, shared[2].T, rtol=1e-12, atol=1e-12)
    for name in params:
        torch.testing.assert_close(folded_grads[name], shared_grads[name], rtol=1e-12, atol=1e-12, msg=name)
    assert folded_calls == 0 and shared_calls == 2  # folded: no transform of the inputs at all


def test_fft_of_bfloat16_runs_in_float32():
    """torch.fft has no bfloat16 (what autocast feeds a layer after a bf16 matmul): the FFT runs in float32."""
    x = torch.randn(4, 300, 8).bfloat16()
    by_fft = dct(x, 200, 1, "fft")
    assert by_fft.dtype == torch.bfloat16
    torch.testing.assert_close(by_fft.float(), dct(x.float(), 200, 1, "matrix"), atol=1e-2, rtol=1e-2)


def test_fft_and_matrix_layers_agree_with_gradients():
    torch.manual_seed(2)
    by_fft = DCTPlusSparseLinear(30, 50, transform="fft")
    by_matrix = DCTPlusSparseLinear.from_linear(nn.Linear(30, 50), transform="matrix")
    by_matrix.load_state_dict(by_fft.state_dict())
    x = torch.randn(7, 30)
    for layer in (by_fft, by_matrix):
        (layer(x) ** 2).sum().backward()
    for (name, a), b in zip(by_fft.named_parameters(), by_matrix.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    with pytest.raises(ValueError, match="transform must be 'auto', 'fft' or 'matrix', not 'fast'"):
        DCTPlusSparseLinear(3, 4, transform="fast")


def test_only_sparse_weight_bias_and_alpha_are_parameters():
    linear, conv = DCTPlusSparseLinear(8, 6), DCTPlusSparseConv(2, 3, 3, spatial_dims=1)
    for layer in (linear, conv):
        assert [name for name, _ in layer.named_parameters()] == ["weight", "bias", "alpha"]
        assert list(layer.buffers()) == [] and set(layer.state_dict()) == {"weight", "bias", "alpha"}
        assert layer.alpha.item() == 1.0 and layer.alpha.shape == ()
    x = torch.randn(4, 2, 9)
    assert conv._shared_kernel(x) is DCTPlusSparseConv(2, 3, 3, spatial_dims=1)._shared_kernel(x)  # two layers, one D
    for order in ("authors", "torch"):  # either patch order: a view of the one basis
        assert dct_kernel(3, 2, (3,), CPU, torch.float32, order).untyped_storage().data_ptr() == \
            dct_matrix(6, 6, CPU, torch.float32).untyped_storage().data_ptr()


@pytest.mark.parametrize("name,shape", [("dct_mlp_w16_d2", (1, 12)), ("dct_cnn_w4_d3", (1, 8, 8))])
def test_stacked_ensemble_holds_k_copies_of_s_b_and_alpha_and_no_d(name, shape):
    ensemble = Ensemble.init(name, shape, CLASSES, [1, 2, 3])
    assert ensemble.stacked
    plain = init_model(name, shape, CLASSES, 1)
    stacked_shapes = {n: tuple(p.shape) for n, p in ensemble.params.items()}
    assert stacked_shapes == {n: (3, *p.shape) for n, p in plain.named_parameters()}  # K of each, nothing else
    assert all(n.rsplit(".", 1)[1] in ("weight", "bias", "alpha") for n in ensemble.params) and not ensemble.buffers


def test_stacked_forward_runs_one_transform_per_layer_for_all_models(monkeypatch):
    name, shape, k = "dct_mlp_w16_d2", (1, 12), 3
    ensemble = Ensemble.init(name, shape, CLASSES, [1, 2, 3])
    for layer in ensemble.template.modules():
        if isinstance(layer, DCTPlusSparseLinear):
            layer.offset = "shared"  # "auto" would fold at 7 rows, where no transform runs at all
    calls = []
    real = dct_sparse.dct
    monkeypatch.setattr(dct_sparse, "dct", lambda x, *args: calls.append(tuple(x.shape)) or real(x, *args))
    logits = ensemble(torch.randn(k, 7, *shape))
    assert calls == [(k, 12, 7), (k, 16, 7), (k, 16, 7)]  # one transform per layer for all K models' [K, F, B]
    logits.sum().backward()
    assert not dct_matrix(16, 16, CPU, torch.float32).requires_grad and dct_matrix(16, 16, CPU, torch.float32).grad is None


@pytest.mark.parametrize("name,shape,ratio", [("dct_mlp_w8_d2", (1, 12), AUTO), ("dct_mlp_w8_d2", (1, 12), 0),
                                              ("dct_cnn_w4_d2", (1, 8, 8), AUTO)])
def test_vmap_fallback_and_model_k_equal_the_stacked_path(name, shape, ratio, monkeypatch):
    monkeypatch.setattr(dct_sparse, "FFT_WORK_RATIO", ratio)  # 0: the FFT's autograd.Function under torch.func.vmap
    ensemble = Ensemble.init(name, shape, CLASSES, [4, 5])
    x = torch.randn(2, 6, *shape)
    stacked = ensemble(x)
    stacked.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in ensemble.params.items()}
    ensemble.stacked = False
    for p in ensemble.params.values():
        p.grad = None
    vmapped = ensemble(x)
    vmapped.square().sum().backward()
    torch.testing.assert_close(vmapped, stacked)
    for n, p in ensemble.params.items():
        torch.testing.assert_close(p.grad, grads[n], msg=n)
    for k in range(2):
        torch.testing.assert_close(ensemble.model(k)(x[k]), stacked[k])


SHAPES = {"a": (4, 8), "b": (8, 8), "c": (2, 8)}  # 32, 64 and 16 weights: 112 in all


def test_uniform_densities_and_exact_counts():
    densities = layer_densities(SHAPES, 0.5, "uniform")
    assert densities == {"a": 0.5, "b": 0.5, "c": 0.5}
    masks = random_masks(SHAPES, densities, [0, 1, 2])
    assert {n: m.shape for n, m in masks.items()} == {n: (3, *s) for n, s in SHAPES.items()}
    assert {n: m.flatten(1).sum(1).tolist() for n, m in masks.items()} == {"a": [16] * 3, "b": [32] * 3, "c": [8] * 3}


def test_erk_densities_by_hand():
    # sum(shape) / prod(shape): a 12/32, b 16/64, c 10/16; eps * (12 + 16 + 10) = 0.5 * 112 weights
    densities = layer_densities(SHAPES, 0.5, "erk")
    eps = 56 / 38
    assert densities == pytest.approx({"a": eps * 12 / 32, "b": eps * 16 / 64, "c": eps * 10 / 16})
    counts = {n: m.flatten(1).sum(1).tolist() for n, m in random_masks(SHAPES, densities, [3, 4]).items()}
    assert counts == {"a": [round(eps * 12)] * 2, "b": [round(eps * 16)] * 2, "c": [round(eps * 10)] * 2}  # 18, 24, 15
    # a conv weight [out, in, kh, kw] scores (4 + 2 + 3 + 3) / 72, a linear one (10 + 6) / 60
    conv = layer_densities({"conv": (4, 2, 3, 3), "fc": (10, 6)}, 0.25, "erk")
    eps = 0.25 * 132 / (12 + 16)
    assert conv == pytest.approx({"conv": eps * 12 / 72, "fc": eps * 16 / 60})


def test_erk_capped_as_the_authors_loses_the_capped_layers_excess():
    # DCTpS's calculate_layer_densities: eps = 78.4 / 38 once, c's 1.29 capped at 1 and its excess not given away
    eps = 78.4 / 38
    densities = layer_densities(SHAPES, 0.7, "erk")
    assert densities == pytest.approx({"a": eps * 12 / 32, "b": eps * 16 / 64, "c": 1.0})
    assert sum(densities[n] * math.prod(s) for n, s in SHAPES.items()) == pytest.approx(eps * 28 + 16)  # 73.8 < 78.4


def test_equal_per_layer_capped_as_the_authors_gives_the_rest_to_the_last_layer():
    # 56 nonzeros, 56/3 per layer; c (16 weights) is capped: its 8/3 go to the last layer, when that is not c itself
    first = {"c": SHAPES["c"], "a": SHAPES["a"], "b": SHAPES["b"]}
    assert layer_densities(first, 0.5, "epl") == pytest.approx({"c": 1.0, "a": 56 / 3 / 32, "b": (56 / 3 + 8 / 3) / 64})
    assert layer_densities(SHAPES, 0.5, "epl") == pytest.approx({"a": 56 / 3 / 32, "b": 56 / 3 / 64, "c": 1.0})
    with pytest.raises(ValueError, match="capping must be 'authors' or 'redistribute', not 'spread'"):
        layer_densities(SHAPES, 0.5, "epl", "spread")


def test_erk_redistributed_caps_a_layer_at_one_and_gives_its_excess_to_the_others():
    # 0.7 * 112 = 78.4 nonzeros; eps = 78.4 / 38 would make c 1.29 dense, so c is dense (16) and a, b share 62.4
    densities = layer_densities(SHAPES, 0.7, "erk", "redistribute")
    eps = 62.4 / 28
    assert densities == pytest.approx({"a": eps * 12 / 32, "b": eps * 16 / 64, "c": 1.0})
    assert sum(densities[n] * math.prod(s) for n, s in SHAPES.items()) == pytest.approx(78.4)
    counts = {n: m.flatten(1).sum(1).tolist() for n, m in random_masks(SHAPES, densities, [0]).items()}
    assert counts == {"a": [27], "b": [36], "c": [16]}  # round(26.74), round(35.66)
    assert layer_densities(SHAPES, 1.0, "erk", "redistribute") == {"a": 1.0, "b": 1.0, "c": 1.0}
    # as the authors' capping: eps = 112 / 38 caps a and c and leaves b at 0.74, even at density 1
    assert layer_densities(SHAPES, 1.0, "erk") == pytest.approx({"a": 1.0, "b": 112 / 38 * 16 / 64, "c": 1.0})


def test_equal_per_layer_redistributed_caps_the_small_layer():
    # 56 nonzeros, 18.7 per layer: more than c's 16, so c is dense and a and b take 20 each
    densities = layer_densities(SHAPES, 0.5, "epl", "redistribute")
    assert densities == pytest.approx({"a": 20 / 32, "b": 20 / 64, "c": 1.0})
    counts = {n: m.flatten(1).sum(1).tolist() for n, m in random_masks(SHAPES, densities, [9]).items()}
    assert counts == {"a": [20], "b": [20], "c": [16]}
    assert layer_densities(SHAPES, 0.3, "epl") == pytest.approx({"a": 11.2 / 32, "b": 11.2 / 64, "c": 11.2 / 16})


def test_masks_differ_per_model_follow_their_own_seed_and_keep_at_least_one():
    densities = layer_densities(SHAPES, 0.3, "erk")
    masks = random_masks(SHAPES, densities, [5, 6, 7])
    alone = random_masks(SHAPES, densities, [6])
    for name in SHAPES:
        assert not torch.equal(masks[name][0], masks[name][1]) and not torch.equal(masks[name][1], masks[name][2])
        assert torch.equal(masks[name][1], alone[name][0])
    tiny = random_masks(SHAPES, {"a": 0.001, "b": 0.001, "c": 0.001}, [0])
    assert [int(m.sum()) for m in tiny.values()] == [1, 1, 1]
    with pytest.raises(ValueError, match="density must lie in"):
        layer_densities(SHAPES, 0.0, "erk")
    with pytest.raises(ValueError, match="heuristic must be one of"):
        layer_densities(SHAPES, 0.5, "erdos")


@pytest.fixture(scope="module")
def toy():
    return toy_data(N, CLASSES)


@pytest.mark.parametrize("name,key,ratio", [("dct_mlp_w16_d2", "seq", AUTO), ("dct_mlp_w16_d2", "seq", 0),
                                            ("dct_cnn1d_w4_d2", "seq", AUTO), ("dct_cnn_w4_d3", "img", AUTO)])
def test_sparse_stacked_training_equals_one_by_one(toy, name, key, ratio, monkeypatch):
    monkeypatch.setattr(dct_sparse, "FFT_WORK_RATIO", ratio)  # 0: every "auto" DCT by FFT, on both sides
    x, y, subsets = toy[key], toy["y"], toy["subsets"]
    seeds, order_seeds = [11, 12, 13], [21, 22, 23]
    ensemble = Ensemble.init(name, x.shape[1:], CLASSES, seeds)
    assert ensemble.stacked
    shapes = {n: tuple(ensemble.params[n].shape[1:]) for n in prunable_parameters(ensemble.template)}
    masks = random_masks(shapes, layer_densities(shapes, 0.3, "erk"), [31, 32, 33])
    train(ensemble, x, y, subsets, order_seeds, CONFIG, masks=masks)
    for n, mask in masks.items():
        assert torch.count_nonzero(ensemble.params[n].detach()[~mask]) == 0
        assert torch.count_nonzero(ensemble.params[n].detach()[mask]) == int(mask.sum())
    alphas = torch.stack([p.detach() for n, p in ensemble.params.items() if n.endswith(".alpha")])
    assert (alphas - 1).abs().min() > 1e-4  # every alpha of every model trained
    for k in range(3):
        reference, _ = train_one_by_one(init_model(name, x.shape[1:], CLASSES, seeds[k]), x, y,
                                        subsets[k].nonzero().squeeze(1), order_seeds[k], CONFIG,
                                        {n: m[k].float() for n, m in masks.items()})
        assert_same_weights(ensemble.model(k), reference)


@pytest.mark.parametrize("name,shape", [("dct_mlp_w64_d2", (1, 40)), ("dct_mlp_h300-100", (1, 28, 28)),
                                        ("dct_lenet_300_100", (1, 28, 28)), ("dct_cnn1d_w16_d2", (1, 40)),
                                        ("dct_cnn_w8_d2", (3, 8, 8))])
def test_dct_names_build_the_plain_network_with_its_initial_weights_as_s(name, shape):
    spec, plain_name = parse_model_name(name), name.removeprefix("dct_")
    plain_spec = parse_model_name(plain_name)
    assert spec.dct_plus_sparse and (spec.family, spec.width, spec.depth, spec.hidden) == \
        (plain_spec.family, plain_spec.width, plain_spec.depth, plain_spec.hidden)
    model, plain = init_model(name, shape, 10, 3), init_model(plain_name, shape, 10, 3)
    assert prunable_parameters(model) == prunable_parameters(plain)
    layers = [m for m in model if isinstance(m, (DCTPlusSparseLinear, DCTPlusSparseConv))]
    assert prunable_parameters(model) == [f"{i}.weight" for i, m in enumerate(model) if m in layers]
    assert len(layers) == sum(isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) for m in plain)
    for n, p in plain.named_parameters():
        assert torch.equal(model.get_parameter(n), p), n
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters()) + len(layers)


@pytest.mark.parametrize("name", ["dct_resnet18", "dct_dct_mlp_w64_d2", "dct_", "dct_mlp_w0_d2", "DCT_mlp_w8_d1",
                                  "dctmlp_w8_d1", "mlp_w8_d1_dct"])
def test_bad_dct_names_list_the_patterns(name):
    with pytest.raises(ModelNameError, match=r"(?s)unknown model.*mlp_w\{width\}_d\{depth\}.*resnet18.*dct_\{any"):
        parse_model_name(name)


def test_dct_networks_are_not_nested_with_other_widths():
    assert host_name(["dct_mlp_w8_d2"] * 2) == "dct_mlp_w8_d2"
    with pytest.raises(ValueError, match="a DCT[+]Sparse network shares a pass only with its own name"):
        host_name(["dct_mlp_w8_d2", "dct_mlp_w16_d2"])


def test_convs_with_groups_or_dilation_are_refused():
    with pytest.raises(ValueError, match="one group and no dilation"):
        DCTPlusSparseConv.from_conv(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="one group and no dilation"):
        DCTPlusSparseConv.from_conv(nn.Conv1d(4, 4, 3, dilation=2))


def test_sparse_weight_names_are_the_s_of_every_dct_plus_sparse_layer():
    """What sparse_init zeros starts at 0: each DCT+Sparse layer's S, linear and conv, not biases, alphas or BatchNorm."""
    assert sparse_weight_names(init_model("dct_mlp_w8_d2", (1, 16), 10, 0)) == ["1.weight", "3.weight", "5.weight"]
    conv = init_model("dct_cnn_bn_w4_d2", (1, 8, 8), 10, 0)
    names = sparse_weight_names(conv)
    assert names and all(isinstance(conv.get_submodule(n[:-len(".weight")]), (DCTPlusSparseConv, DCTPlusSparseLinear))
                         for n in names)
    assert len(names) == sum(isinstance(m, (DCTPlusSparseConv, DCTPlusSparseLinear)) for m in conv.modules())
