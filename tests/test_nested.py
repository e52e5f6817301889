"""Narrow networks nested in the widest of their depth: initialised, trained and pruned exactly as alone."""
import pytest
import torch

from core.methods.pruning import dense_masks, density, prunable_names, prune, remaining_parameters, target_kept
from core.models.nested import embed, extract, nested_ensemble, state_shapes, with_support
from core.models.networks import init_model
from core.training.config import TrainConfig
from core.training.ensemble import Ensemble, evaluate
from core.training.trainer import train

CLASSES, N = 5, 192
CONFIG = TrainConfig(epochs=2, batch_size=32, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine")
FAMILIES = {"mlp": ["mlp_w4_d2", "mlp_w16_d2", "mlp_w8_d2"], "cnn1d": ["cnn1d_w2_d2", "cnn1d_w6_d2", "cnn1d_w4_d2"],
            "cnn1d_bn": ["cnn1d_bn_w2_d2", "cnn1d_bn_w6_d2", "cnn1d_bn_w4_d2"]}


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    subsets = torch.ones(3, N, dtype=torch.bool)
    subsets[1, ::3] = False  # unequal subsets: 6 and 4 steps per epoch
    return torch.randn(N, 1, 16, generator=g), torch.randint(0, CLASSES, (N,), generator=g), subsets


def alone(name: str, seed: int) -> Ensemble:
    return Ensemble.init(name, (1, 16), CLASSES, [seed])


@pytest.mark.parametrize("family", FAMILIES)
def test_each_model_starts_as_the_narrow_network_in_the_leading_block(family):
    names, seeds = FAMILIES[family], [3, 4, 5]
    ensemble, support = nested_ensemble(names, (1, 16), CLASSES, seeds)
    assert ensemble.template[-1].weight.shape == init_model(names[1], (1, 16), CLASSES, 0)[-1].weight.shape  # the widest
    for k, (name, seed) in enumerate(zip(names, seeds)):
        shapes, model = state_shapes(name, (1, 16), CLASSES), init_model(name, (1, 16), CLASSES, seed)
        for param, value in model.named_parameters():
            assert shapes[param] == tuple(value.shape)
            assert torch.equal(extract(ensemble.params[param][k : k + 1].detach(), value.shape)[0], value.detach())
            assert int(support[param][k].sum()) == value.numel()  # own entries only ...
            assert torch.count_nonzero(ensemble.params[param][k].detach()[~support[param][k]]) == 0  # ... the rest zero
        for buffer, value in model.named_buffers():  # BatchNorm statistics, in the same leading block
            assert shapes[buffer] == tuple(value.shape)
            assert torch.equal(extract(ensemble.buffers[buffer][k : k + 1], value.shape)[0], value)
    assert len(ensemble.buffers) == (6 if "bn" in family else 0)  # mean, variance and count of 2 BatchNorms


@pytest.mark.parametrize("family", FAMILIES)
def test_nested_training_with_masks_equals_each_network_alone(family, data):
    x, y, subsets = data
    names, seeds, order_seeds = FAMILIES[family], [3, 4, 5], [6, 7, 8]
    ensemble, support = nested_ensemble(names, (1, 16), CLASSES, seeds)
    prunable = prunable_names(ensemble.template, prune_output=True)
    masks = prune(ensemble.params, dense_masks(ensemble.params, prunable, support), 0.3, 1, "global", support)
    train(ensemble, x, y, subsets, order_seeds, CONFIG, masks=with_support(masks, support))
    for k, (name, seed) in enumerate(zip(names, seeds)):
        single = alone(name, seed)
        own = {n: extract(m[k : k + 1], single.params[n].shape[1:]) for n, m in masks.items()}
        single_masks = prune(single.params, dense_masks(single.params, prunable), 0.3, 1)
        assert all(torch.equal(own[n], single_masks[n]) for n in prunable)
        train(single, x, y, subsets[k : k + 1], order_seeds[k : k + 1], CONFIG, masks=own)
        for n, value in single.params.items():
            nested = ensemble.params[n][k : k + 1].detach()
            torch.testing.assert_close(extract(nested, value.shape[1:]), value.detach(), atol=1e-5, rtol=1e-4, msg=n)
            assert torch.count_nonzero(nested[0][~support[n][k]]) == 0  # unused units stayed dead
        for n, value in single.buffers.items():  # BatchNorm's running statistics of the same batches
            torch.testing.assert_close(extract(ensemble.buffers[n][k : k + 1], value.shape[1:]), value, atol=1e-5, rtol=1e-4, msg=n)
        # evaluation reads those statistics: the nested model predicts what the network alone does
        torch.testing.assert_close(evaluate(ensemble, x, y).loss[k], evaluate(single, x, y).loss[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_pruning_counts_only_each_networks_own_weights(scope):
    names, seeds = FAMILIES["mlp"], [3, 4, 5]
    ensemble, support = nested_ensemble(names, (1, 16), CLASSES, seeds)
    prunable = prunable_names(ensemble.template, prune_output=False)
    masks = dense_masks(ensemble.params, prunable, support)
    singles = [alone(name, seed) for name, seed in zip(names, seeds)]
    single_masks = [dense_masks(s.params, prunable) for s in singles]
    for level in range(1, 6):
        masks = prune(ensemble.params, masks, 0.2, level, scope, support)
        single_masks = [prune(s.params, m, 0.2, level, scope) for s, m in zip(singles, single_masks)]
        for k, (single, own) in enumerate(zip(singles, single_masks)):
            for n in prunable:
                assert torch.equal(extract(masks[n][k : k + 1], own[n].shape[1:]), own[n])
        assert density(masks, support).tolist() == [float(density(m)) for m in single_masks]
        assert remaining_parameters(ensemble.params, masks, support).tolist() == \
            [int(remaining_parameters(s.params, m)) for s, m in zip(singles, single_masks)]
    layers = {"mlp_w4_d2": (4 * 16, 4 * 4), "mlp_w16_d2": (16 * 16, 16 * 16), "mlp_w8_d2": (8 * 16, 8 * 8)}  # hidden weights
    kept = [target_kept(sum(sizes), 0.2, 5) if scope == "global" else sum(target_kept(n, 0.2, 5) for n in sizes)
            for sizes in layers.values()]
    assert (density(masks, support) * torch.tensor([sum(sizes) for sizes in layers.values()])).round().tolist() == kept


def test_embed_and_extract_are_inverse():
    values = torch.arange(12.0).view(2, 2, 3)
    host = embed(values, (3, 5))
    assert host.shape == (2, 3, 5) and host[:, :2, :3].equal(values) and host.sum() == values.sum()
    assert extract(host, (2, 3)).equal(values)


def test_only_one_family_and_depth_can_share_a_pass():
    with pytest.raises(ValueError, match=r"only networks of one family, depth and endpoint count with a width can share "
                                          r"a pass; got \['mlp_w4_d1', 'mlp_w8_d2'\]"):
        nested_ensemble(["mlp_w8_d2", "mlp_w4_d1"], (1, 16), CLASSES, [0, 1])
    with pytest.raises(ValueError, match=r"endpoint count .* got \['subspace2_mlp_w8_d2', 'subspace3_mlp_w8_d2'\]"):
        nested_ensemble(["subspace2_mlp_w8_d2", "subspace3_mlp_w8_d2"], (1, 16), CLASSES, [0, 1])
    ensemble, support = nested_ensemble(["mlp_w8_d2", "mlp_w8_d2"], (1, 16), CLASSES, [0, 1])
    assert support is None and ensemble.params["1.weight"].shape == (2, 8, 16)
