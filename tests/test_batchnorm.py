"""BatchNorm in the stacked K-model path against K models run one by one, idle models' running statistics, DCT+Sparse
BatchNorm networks, and the recalibration of running statistics against hooks on each plain model."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.models.dct_sparse import DCTPlusSparseConv
from core.models.sparse_masks import layer_densities, random_masks
from core.models.networks import init_model, prunable_parameters
from core.models.subspaces import SubspaceBatchNorm, fix_coefficients, line_coefficients
import core.training.ensemble as ensemble_module
from core.training.config import TrainConfig
from core.training.ensemble import Ensemble
from core.training.recalibration import calibration_chunks, recalibrate_batchnorm
from core.training.trainer import train
from reference import assert_same_weights, toy_data, train_one_by_one, with_random_batch_norm

N, CLASSES = 240, 5
CONFIG = TrainConfig(epochs=3, batch_size=32, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine", warmup_epochs=1)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, SubspaceBatchNorm)


@pytest.fixture(scope="module")
def toy():
    return toy_data(N, CLASSES)


@pytest.fixture
def no_vmap(monkeypatch):
    """Fail any forward that leaves the stacked fast path for torch.func.vmap."""
    def refuse(*args, **kwargs):
        raise AssertionError("ran through vmap, not the stacked path")

    monkeypatch.setattr(ensemble_module, "vmap", refuse)


def linear_batch_norm(seed: int) -> nn.Sequential:
    """BatchNorm1d on a linear layer's `[B, F]` output: the stacked path moves it from features to channels."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, CLASSES))


BUILDERS = {
    "cnn_bn_w4_d2": (lambda seed: init_model("cnn_bn_w4_d2", (2, 8, 8), CLASSES, seed), (2, 8, 8)),
    "cnn1d_bn_w4_d3": (lambda seed: init_model("cnn1d_bn_w4_d3", (1, 16), CLASSES, seed), (1, 16)),
    "linear_batch_norm": (linear_batch_norm, (1, 16)),
}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("builder", BUILDERS)
def test_stacked_batch_norm_equals_each_model_alone(builder, training, no_vmap):
    build, shape = BUILDERS[builder]
    models = [with_random_batch_norm(build(seed), seed) for seed in (1, 2, 3)]
    ensemble = Ensemble.from_models(models)
    assert ensemble.stacked
    x, y = torch.randn(3, 10, *shape), torch.randint(0, CLASSES, (3, 10))
    logits = ensemble(x, train=training)
    F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1).sum().backward()
    for k, model in enumerate(models):
        alone = model.train(training)(x[k])
        F.cross_entropy(alone, y[k]).backward()
        torch.testing.assert_close(logits[k], alone)
        for name, p in model.named_parameters():
            torch.testing.assert_close(ensemble.params[name].grad[k], p.grad, msg=name)
        for name, b in model.named_buffers():  # running statistics moved (or not) as each model's own did
            torch.testing.assert_close(ensemble.buffers[name][k], b, msg=name, atol=1e-6, rtol=1e-5)
        assert_same_weights(ensemble.model(k), model, atol=1e-6)
    counts = [ensemble.buffers[n] for n in ensemble.buffers if n.endswith("num_batches_tracked")]
    assert counts and all(c.tolist() == [int(training)] * 3 for c in counts)


@pytest.mark.parametrize("norm", [nn.BatchNorm1d(8, affine=False), nn.BatchNorm1d(8, track_running_stats=False),
                                  nn.BatchNorm1d(8, momentum=None)])
def test_batch_norm_the_stacked_path_does_not_run_falls_back_to_vmap(norm):
    template = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), norm, nn.Linear(8, CLASSES))
    ensemble = Ensemble.from_models([template, template])
    assert not ensemble.stacked
    # momentum None does not train under vmap either: nn.BatchNorm takes float() of the vmapped batch count
    assert ensemble(torch.randn(2, 4, 1, 16), train=norm.momentum is not None).shape == (2, 4, CLASSES)


def test_state_and_model_k_hold_each_models_running_statistics():
    ensemble = Ensemble.init("subspace2_cnn_bn_w4_d2", (1, 8, 8), CLASSES, [1, 2, 3])
    fix_coefficients(ensemble.template, line_coefficients(torch.tensor([0.0, 0.5, 1.0])))
    ensemble(torch.randn(6, 1, 8, 8), shared=True, train=True)
    state = ensemble.state()
    assert state["1.running_mean"].shape == (3, 4) and state["1.running_var"].shape == (3, 4)
    assert state["1.num_batches_tracked"].tolist() == [1, 1, 1] and state["1.weight"].shape == (3, 2, 4)
    assert not torch.equal(state["5.running_mean"][0], state["5.running_mean"][2])  # models at different points
    for k in range(3):
        model = ensemble.model(k)
        assert isinstance(model[1], SubspaceBatchNorm)
        for name, b in model.named_buffers():
            assert torch.equal(b, state[name][k])


@pytest.mark.parametrize("name,key", [("cnn_bn_w4_d2", "img"), ("subspace2_cnn1d_bn_w4_d2", "seq")])
def test_idle_steps_do_not_count_as_batches(toy, name, key):
    """Model 2 steps 3 times an epoch and idles through 3: its num_batches_tracked counts its own steps only."""
    ensemble = Ensemble.init(name, toy[key].shape[1:], CLASSES, [1, 2, 3])
    if "subspace" in name:
        fix_coefficients(ensemble.template, line_coefficients(0.5))
    result = train(ensemble, toy[key], toy["y"], toy["subsets"], [4, 5, 6], CONFIG)
    assert result.steps.tolist() == [18, 18, 9]
    assert ensemble.buffers["1.num_batches_tracked"].tolist() == [18, 18, 9]


def test_dct_plus_sparse_batch_norm_cnn_trains_as_one_by_one(toy, no_vmap):
    """Its DCT+Sparse convs have no bias (BatchNorm's replaces it): the stacked path hands them None."""
    x, y, subsets, name = toy["img"], toy["y"], toy["subsets"], "dct_cnn_bn_w4_d2"
    seeds, order_seeds = [11, 12, 13], [21, 22, 23]
    ensemble = Ensemble.init(name, x.shape[1:], CLASSES, seeds)
    assert ensemble.stacked and isinstance(ensemble.template[0], DCTPlusSparseConv) and ensemble.template[0].bias is None
    shapes = {n: tuple(ensemble.params[n].shape[1:]) for n in prunable_parameters(ensemble.template)}
    assert list(shapes) == ["0.weight", "4.weight", "9.weight"]
    masks = random_masks(shapes, layer_densities(shapes, 0.5, "erk"), [31, 32, 33])
    train(ensemble, x, y, subsets, order_seeds, CONFIG, masks=masks)
    for k in range(3):
        reference, _ = train_one_by_one(init_model(name, x.shape[1:], CLASSES, seeds[k]), x, y,
                                        subsets[k].nonzero().squeeze(1), order_seeds[k], CONFIG,
                                        {n: m[k].float() for n, m in masks.items()})
        assert_same_weights(ensemble.model(k), reference)


def test_calibration_chunks_never_end_with_a_single_example():
    assert calibration_chunks(8, 4) == [slice(0, 4), slice(4, 8)]
    assert calibration_chunks(9, 4) == [slice(0, 4), slice(4, 9)]
    assert calibration_chunks(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert calibration_chunks(3, 2) == [slice(0, 3)] and calibration_chunks(5, 100) == [slice(0, 5)]
    for n, batch_size in ((10, 1), (1, 4)):
        with pytest.raises(ValueError, match="BatchNorm recalibration needs two or more examples per chunk"):
            calibration_chunks(n, batch_size)


def gathered_statistics(model: nn.Module, chunks: list[torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each BatchNorm layer's float64 mean and unbiased variance per channel of its input over all `chunks`, the
    model run on them one after the other in training mode (inputs gathered by forward hooks)."""
    inputs = {name: [] for name, layer in model.named_modules() if isinstance(layer, NORMS)}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda layer, args, out, name=name: inputs[name].append(args[0].double())) for name in inputs]
    with torch.no_grad():
        for chunk in chunks:
            model.train()(chunk)
    for handle in handles:
        handle.remove()
    statistics = {}
    for name, parts in inputs.items():
        channels_first = torch.cat(parts).transpose(0, 1).flatten(1)  # [C, N * spatial]
        statistics[name] = channels_first.mean(1), channels_first.var(1, correction=1)
    return statistics


@pytest.mark.parametrize("name,key", [("cnn_bn_w4_d2", "img"), ("subspace3_cnn1d_bn_w4_d2", "seq")])
def test_recalibration_sets_the_exact_statistics_of_each_models_inputs(toy, name, key, no_vmap):
    x = toy[key][:225]  # chunks of 56, and 57 last: a chunk of one example joins the one before
    chunks = [x[:56], x[56:112], x[112:168], x[168:]]
    ensemble = Ensemble.init(name, x.shape[1:], CLASSES, [1, 2, 3])
    coefficients = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.1, 0.1, 0.8]])
    if "subspace" in name:
        fix_coefficients(ensemble.template, coefficients)
    plain = [with_random_batch_norm(ensemble.model(k), 10 + k) for k in range(3)]  # random affine parameters, stale statistics
    for k, model in enumerate(plain):
        if "subspace" in name:
            fix_coefficients(model, coefficients[k])
        with torch.no_grad():
            for n, value in model.state_dict().items():
                {**ensemble.params, **ensemble.buffers}[n][k] = value
    weights = {n: p.detach().clone() for n, p in ensemble.params.items()}
    recalibrate_batchnorm(ensemble, x, batch_size=56)
    assert all(torch.equal(p, weights[n]) for n, p in ensemble.params.items())
    eval_logits = ensemble(x, shared=True)
    for k, model in enumerate(plain):
        statistics = gathered_statistics(model, chunks)
        assert len(statistics) == 2
        for layer, (mean, var) in statistics.items():
            torch.testing.assert_close(ensemble.buffers[f"{layer}.running_mean"][k], mean.float(), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ensemble.buffers[f"{layer}.running_var"][k], var.float(), atol=1e-5, rtol=1e-5)
            assert int(ensemble.buffers[f"{layer}.num_batches_tracked"][k]) == len(chunks)
            norm = model.get_submodule(layer)
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
        torch.testing.assert_close(eval_logits[k], model.eval()(x), atol=1e-5, rtol=1e-5)


def test_recalibrating_one_plain_model_equals_its_row_of_the_ensemble(toy):
    x = toy["img"]
    ensemble = Ensemble.init("cnn_bn_w4_d2", x.shape[1:], CLASSES, [1, 2])
    model = with_random_batch_norm(ensemble.model(1), 0)
    ensemble = Ensemble.from_models([ensemble.model(0), model])
    recalibrate_batchnorm(model, x, 64)
    recalibrate_batchnorm(ensemble, x, 64)
    for name, b in model.named_buffers():
        torch.testing.assert_close(b, ensemble.buffers[name][1], msg=name)
    assert model[1].num_batches_tracked == 4  # 64, 64, 64, 48


def test_recalibration_leaves_networks_without_batch_norm_alone_and_refuses_vmap(toy):
    ensemble = Ensemble.init("cnn_w4_d2", (1, 8, 8), CLASSES, [1, 2])
    before = ensemble.state()
    recalibrate_batchnorm(ensemble, toy["img"], 64)
    recalibrate_batchnorm(ensemble.model(0), toy["img"], 64)
    assert all(torch.equal(t, before[n]) for n, t in ensemble.state().items())
    vmapped = Ensemble.from_models([nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8, momentum=None))] * 2)
    with pytest.raises(ValueError, match="BatchNorm recalibration runs in the stacked fast path; this network runs "
                                         "through vmap"):
        recalibrate_batchnorm(vmapped, toy["seq"], 64)
