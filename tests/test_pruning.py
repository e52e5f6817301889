"""Pruning invariants, exactly: density (1 - f)^L, smallest magnitudes first, rewinding under the mask."""
import pytest
import torch

from core.methods.pruning import dense_masks, density, prunable_names, prune, remaining_parameters, rewind, target_kept
from core.training.ensemble import Ensemble


def test_magnitude_pruning_by_hand():
    params = {"w": torch.tensor([[[0.5, -0.1], [0.3, -0.9]], [[1.0, 2.0], [-3.0, 0.0]]])}  # K=2 models
    masks = prune(params, dense_masks(params, ["w"]), fraction=0.5, level=1)
    assert masks["w"].tolist() == [[[True, False], [False, True]], [[False, True], [True, False]]]
    again = prune(params, masks, fraction=0.5, level=2)  # round(0.25 * 4) = 1 weight left
    assert again["w"].tolist() == [[[False, False], [False, True]], [[False, False], [True, False]]]


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_masks_stay_on_their_device_whatever_the_weights_device(scope):
    # weights saved to the CPU, masks on the training device ("meta" stands in for CUDA on a CPU-only machine)
    params = {"w": torch.randn(2, 3, 4)}
    masks = prune(params, {"w": torch.ones(2, 3, 4, dtype=torch.bool, device="meta")}, 0.5, 1, scope)
    assert masks["w"].device.type == "meta" and masks["w"].shape == (2, 3, 4)


def test_global_scope_compares_across_layers_and_layerwise_does_not():
    params = {"a": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "b": torch.tensor([[10.0, 20.0, 30.0, 40.0]])}
    masks = dense_masks(params, ["a", "b"])
    global_ = prune(params, masks, 0.5, 1, "global")
    assert global_["a"].sum() == 0 and global_["b"].sum() == 4
    layerwise = prune(params, masks, 0.5, 1, "layerwise")
    assert layerwise["a"].tolist() == [[False, False, True, True]] and layerwise["b"].tolist() == [[False, False, True, True]]


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_density_after_level_l_is_exact(scope):
    ensemble = Ensemble.init("mlp_w32_d2", (1, 40), 10, [0, 1, 2])
    names = prunable_names(ensemble.template, prune_output=False)
    assert names == ["1.weight", "3.weight"]
    masks, total = dense_masks(ensemble.params, names), 40 * 32 + 32 * 32
    for level in range(1, 16):
        masks = prune(ensemble.params, masks, 0.2, level, scope)
        if scope == "global":
            assert (density(masks) * total).round().tolist() == [target_kept(total, 0.2, level)] * 3
        else:
            for name, size in (("1.weight", 40 * 32), ("3.weight", 32 * 32)):
                assert masks[name].flatten(1).sum(1).tolist() == [target_kept(size, 0.2, level)] * 3
    assert abs(float(density(masks)[0]) - 0.8**15) < 1.5 / total  # to the nearest weight


def test_pruned_weights_are_the_smallest_survivors():
    ensemble = Ensemble.init("mlp_w16_d1", (1, 40), 10, [3])
    names = prunable_names(ensemble.template, prune_output=True)
    masks = prune(ensemble.params, dense_masks(ensemble.params, names), 0.3, 1)
    kept = torch.cat([ensemble.params[n][masks[n]].abs() for n in names])
    dropped = torch.cat([ensemble.params[n][~masks[n]].abs() for n in names])
    assert dropped.max() <= kept.min()


def test_rewind_restores_the_snapshot_under_the_mask_and_counts_parameters():
    ensemble = Ensemble.init("mlp_w8_d1", (1, 40), 10, [0, 1])
    snapshot = ensemble.state()
    with torch.no_grad():
        for p in ensemble.params.values():
            p.add_(1.0)  # "training" moved everything
    names = prunable_names(ensemble.template, prune_output=False)
    masks = prune(ensemble.params, dense_masks(ensemble.params, names), 0.5, 1)
    rewind(ensemble, snapshot, masks)
    w = ensemble.params["1.weight"].detach()
    assert torch.equal(w[masks["1.weight"]], snapshot["1.weight"][masks["1.weight"]])
    assert torch.count_nonzero(w[~masks["1.weight"]]) == 0
    assert torch.equal(ensemble.params["1.bias"].detach(), snapshot["1.bias"])  # never pruned
    total = sum(p[0].numel() for p in ensemble.params.values())
    assert remaining_parameters(ensemble.params, masks).tolist() == [total - 320 // 2] * 2
