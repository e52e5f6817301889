"""SNIP, GraSP and SynFlow masks of K stacked models against one-model references written from each paper's formula."""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import hvp
from torch.func import functional_call

import core.methods.prune_at_init as pai
from core.methods.pruning import keep_largest_overall
from core.models.networks import prunable_parameters
from core.training.ensemble import Ensemble

MODELS = {"mlp_w8_d2": (5,), "cnn_bn_w4_d1": (1, 8, 8)}


def ensemble_and_batches(name: str, seeds=(3, 4)):
    """K models of `name` in float64 (so that ranks of near-equal scores cannot flip) and a batch of 6 per model."""
    shape = MODELS[name]
    ensemble = Ensemble.init(name, shape, 3, list(seeds))
    ensemble.params = {n: p.detach().double().requires_grad_(True) for n, p in ensemble.params.items()}
    ensemble.buffers = {n: b.double() if b.is_floating_point() else b for n, b in ensemble.buffers.items()}
    ensemble.template.double()
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(len(seeds), 6, *shape, generator=generator, dtype=torch.float64)
    return ensemble, x, torch.randint(0, 3, (len(seeds), 6), generator=generator)


def loss_of(model, weights: dict, x, y, temperature=1.0):
    """Mean cross-entropy of one plain model with `weights` replacing its prunable weights (eval mode)."""
    model.eval()
    return F.cross_entropy(functional_call(model, weights, (x,)) / temperature, y)


def top_by_hand(scores: dict, kept: int) -> dict:
    """One model's mask: its `kept` highest scores over all layers (sorted with Python, ties to the earlier)."""
    flat = [(float(v), i) for i, v in enumerate(torch.cat([s.flatten() for s in scores.values()]))]
    chosen = {i for _, i in sorted(flat, key=lambda t: (-t[0], t[1]))[:kept]}
    masks, start = {}, 0
    for name, s in scores.items():
        masks[name] = torch.tensor([start + i in chosen for i in range(s.numel())]).view_as(s)
        start += s.numel()
    return masks


@pytest.mark.parametrize("name", MODELS)
def test_snip_is_the_connection_sensitivity_of_each_model_alone(name):
    """Lee et al.: s = |dL/dc| for weights c * w at c = 1, one model at a time on its own batch."""
    ensemble, x, y = ensemble_and_batches(name)
    scores = pai.snip_scores(ensemble, x, y)
    for k in range(ensemble.size):
        model = ensemble.model(k)
        weights = {n: p.detach() for n, p in model.named_parameters() if n in scores}
        gates = {n: torch.ones_like(w, requires_grad=True) for n, w in weights.items()}
        loss = loss_of(model, {n: gates[n] * weights[n] for n in weights}, x[k], y[k])
        for n, g in zip(gates, torch.autograd.grad(loss, list(gates.values()))):
            torch.testing.assert_close(scores[n][k], g.abs(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", MODELS)
def test_grasp_is_weight_times_the_hessian_gradient_product_of_each_model_alone(name):
    """Wang et al.: w * Hg with g and H of the loss on logits / 200, by torch.autograd.functional.hvp."""
    ensemble, x, y = ensemble_and_batches(name)
    scores = pai.grasp_scores(ensemble, x, y)
    for k in range(ensemble.size):
        model = ensemble.model(k)
        names = list(scores)
        weights = tuple(dict(model.named_parameters())[n].detach() for n in names)
        loss = lambda *w: loss_of(model, dict(zip(names, w)), x[k], y[k], 200.0)  # noqa: E731 (GraSP code: T = 200)
        gradient = torch.autograd.grad(loss(*[w.requires_grad_(True) for w in weights]), weights)
        _, hessian_gradient = hvp(loss, tuple(w.detach() for w in weights), gradient)
        for n, w, hg in zip(names, weights, hessian_gradient):
            torch.testing.assert_close(scores[n][k], w.detach() * hg, rtol=1e-8, atol=1e-16)


def test_synflow_scores_of_an_mlp_by_hand():
    """R = 1^T (|W3| (|W2| (|W1| 1 + |b1|) + |b2|) + |b3|); dR/d|W1|_ij = (1^T |W3| |W2|)_i, dR/d|W2|_ij =
    (1^T |W3|)_i a1_j, dR/d|W3|_ij = a2_j; the score is |W| times that. Layer 2's masked entries count as 0."""
    ensemble, x, _ = ensemble_and_batches("mlp_w8_d2")
    masks = {n: torch.ones_like(ensemble.params[n], dtype=torch.bool) for n in ("1.weight", "3.weight", "5.weight")}
    masks["3.weight"][:, :, :3] = False
    scores = pai.synflow_scores(ensemble, masks, (5,))
    for k in range(2):
        w = {n: ensemble.params[n][k].detach().abs() * masks.get(n, torch.ones(1, dtype=torch.bool))[k]
             if n in masks else ensemble.params[n][k].detach().abs() for n in ensemble.params}
        a1 = w["1.weight"] @ torch.ones(5, dtype=torch.float64) + w["1.bias"]
        a2 = w["3.weight"] @ a1 + w["3.bias"]
        ones = torch.ones(3, dtype=torch.float64)
        by_hand = {"1.weight": (ones @ w["5.weight"] @ w["3.weight"]).unsqueeze(1).expand(8, 5) * w["1.weight"],
                   "3.weight": torch.outer(ones @ w["5.weight"], a1) * w["3.weight"],
                   "5.weight": torch.outer(ones, a2) * w["5.weight"]}
        for n in by_hand:
            torch.testing.assert_close(scores[n][k], by_hand[n], rtol=1e-12, atol=0)
    assert (scores["3.weight"][:, :, :3] == 0).all()


def test_synflow_prunes_over_rounds_to_density_to_the_r_over_rounds(monkeypatch):
    """Three rounds for one model alone, by hand: keep round(d^(r/3) x 243) by the scores of the last round's mask."""
    monkeypatch.setattr(pai, "SYNFLOW_ROUNDS", 3)
    ensemble, x, y = ensemble_and_batches("mlp_w8_d2")
    total = 8 * 5 + 8 * 8 + 3 * 8
    masks = pai.score_masks("synflow", ensemble, x, y, [0.1])
    for k in range(2):
        alone = Ensemble.from_models([ensemble.model(k)])
        mask = {n: torch.ones_like(alone.params[n], dtype=torch.bool) for n in masks}
        for r in (1, 2, 3):
            scores = {n: s[0] for n, s in pai.synflow_scores(alone, mask, (5,)).items()}
            mask = {n: m.unsqueeze(0) for n, m in top_by_hand(scores, round(0.1 ** (r / 3) * total)).items()}
        for n in masks:
            assert torch.equal(masks[n][k], mask[n][0]), (k, n)
        assert sum(int(m[k].sum()) for m in masks.values()) == round(0.1 * total)


@pytest.mark.parametrize("rule", ["snip", "grasp"])
def test_one_shot_masks_keep_each_models_top_scores_at_each_density_density_major(rule):
    ensemble, x, y = ensemble_and_batches("cnn_bn_w4_d1")
    total = 4 * 9 + 3 * 64
    masks = pai.score_masks(rule, ensemble, x, y, [0.5, 0.01])
    scores = (pai.snip_scores if rule == "snip" else pai.grasp_scores)(ensemble, x, y)
    assert list(masks) == prunable_parameters(ensemble.template) and masks["0.weight"].shape == (4, 4, 1, 3, 3)
    for i, density in enumerate([0.5, 0.01]):
        for k in range(2):
            expected = top_by_hand({n: s[k] for n, s in scores.items()}, max(1, round(density * total)))
            for n in masks:
                assert torch.equal(masks[n][2 * i + k], expected[n]), (density, k, n)


def test_each_models_masks_depend_on_its_own_weights_and_batch_only():
    ensemble, x, y = ensemble_and_batches("mlp_w8_d2", seeds=(3, 4, 5))
    together = pai.score_masks("grasp", ensemble, x, y, [0.2])
    for k in range(3):
        alone = pai.score_masks("grasp", Ensemble.from_models([ensemble.model(k)]), x[k:k + 1], y[k:k + 1], [0.2])
        assert all(torch.equal(together[n][k], alone[n][0]) for n in together)


def test_scores_leave_the_ensemble_unchanged_and_its_gradients_empty():
    ensemble, x, y = ensemble_and_batches("cnn_bn_w4_d1")
    before = ensemble.state()
    for rule in ("snip", "grasp", "synflow"):
        pai.score_masks(rule, ensemble, x, y, [0.3])
    assert all(torch.equal(before[n], v) for n, v in ensemble.state().items())
    assert all(p.grad is None for p in ensemble.params.values())


def test_negative_scores_rank_below_positive_ones_and_masked_weights_never_return():
    scores = {"a": torch.tensor([[-3.0, -1.0, 2.0]]), "b": torch.tensor([[-0.5, 5.0]])}
    masks = {"a": torch.tensor([[True, True, True]]), "b": torch.tensor([[True, False]])}
    kept = keep_largest_overall(scores, masks, 3)
    assert kept["a"].tolist() == [[False, True, True]] and kept["b"].tolist() == [[True, False]]
    per_model = keep_largest_overall({"a": torch.tensor([[1.0, 2.0], [4.0, 3.0]])}, {"a": torch.ones(2, 2, dtype=bool)},
                                     torch.tensor([1, 2]))
    assert per_model["a"].tolist() == [[False, True], [True, True]]


def test_scoring_batches_are_ten_per_class_drawn_by_each_seed():
    x, y = torch.arange(500.0).unsqueeze(1), torch.arange(500) % 4
    xb, yb = pai.scoring_batches(x, y, 4, [11, 12, 11])
    assert xb.shape == (3, 40, 1) and yb.shape == (3, 40)
    assert torch.equal(xb[0], xb[2]) and not torch.equal(xb[0], xb[1])
    assert len(set(xb[1].flatten().tolist())) == 40 and torch.equal(yb, xb.squeeze(2).long() % 4)
    assert pai.scoring_batches(x[:25], y[:25], 4, [1])[0].shape == (1, 25, 1)  # fewer examples than asked: all


def test_an_unknown_rule_is_refused():
    ensemble, x, y = ensemble_and_batches("mlp_w8_d2")
    with pytest.raises(ValueError, match="score rule must be one of snip, grasp, synflow, not 'magnitude'"):
        pai.score_masks("magnitude", ensemble, x, y, [0.1])
