"""The vectorized trainer equals one-by-one training, keeps masks, and records what it claims."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.methods.pruning import rewind
from core.models.networks import init_model
from core.training import trainer as training
from core.training.config import TrainConfig, lr_at
from core.training.ensemble import Ensemble, embed, evaluate, example_outcomes
from core.training.trainer import train
from reference import assert_same_weights, toy_data, train_one_by_one

N, CLASSES = 240, 5
CONFIG = TrainConfig(epochs=3, batch_size=32, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine", warmup_epochs=1)


@pytest.fixture(scope="module")
def toy():
    return toy_data(N, CLASSES)


@pytest.mark.parametrize("name,key", [("mlp_w16_d2", "seq"), ("cnn1d_w4_d2", "seq"), ("cnn_w4_d3", "img"),
                                      ("cnn1d_bn_w8_d2", "seq"), ("cnn_bn_w8_d2", "img")])
def test_together_equals_one_by_one(toy, name, key):
    """BatchNorm networks too: running statistics are compared with the weights, and model 2, idle half of each
    epoch, keeps its own."""
    x, y, subsets = toy[key], toy["y"], toy["subsets"]
    seeds, order_seeds = [11, 12, 13], [21, 22, 23]
    ensemble = Ensemble.init(name, x.shape[1:], CLASSES, seeds)
    assert ensemble.stacked
    result = train(ensemble, x, y, subsets, order_seeds, CONFIG)
    for k in range(3):
        reference, steps = train_one_by_one(
            init_model(name, x.shape[1:], CLASSES, seeds[k]), x, y, subsets[k].nonzero().squeeze(1), order_seeds[k], CONFIG
        )
        assert int(result.steps[k]) == steps == CONFIG.epochs * (int(subsets[k].sum()) // CONFIG.batch_size)
        assert_same_weights(ensemble.model(k), reference)


@pytest.mark.parametrize("name,key", [("mlp_w16_d2", "seq"), ("cnn_w4_d3", "img")])
def test_equal_subsets_take_the_fused_step_and_still_equal_one_by_one(toy, name, key, monkeypatch):
    """Models of equal subsets share each step's learning rate, so the optimizer takes torch's fused SGD;
    each model still ends as torch.optim.SGD trains it alone, and as the foreach step trains it."""
    x, y = toy[key], toy["y"]
    subsets = torch.zeros(3, N, dtype=torch.bool)
    for k in range(3):
        subsets[k, 40 * k : 40 * k + 160] = True  # 160 examples each: 5 steps an epoch for every model
    seeds, order_seeds = [11, 12, 13], [21, 22, 23]
    fused_calls = []
    real = training.sgd
    monkeypatch.setattr(training, "sgd", lambda *a, **kw: fused_calls.append(kw["fused"]) or real(*a, **kw))
    fused = Ensemble.init(name, x.shape[1:], CLASSES, seeds)
    train(fused, x, y, subsets, order_seeds, CONFIG)
    assert fused_calls == [True] * (CONFIG.epochs * 5)
    monkeypatch.setattr(training, "FUSED_SGD_DEVICES", ())
    foreach = Ensemble.init(name, x.shape[1:], CLASSES, seeds)
    train(foreach, x, y, subsets, order_seeds, CONFIG)
    assert len(fused_calls) == CONFIG.epochs * 5  # the foreach step this time
    for k in range(3):
        reference, _ = train_one_by_one(init_model(name, x.shape[1:], CLASSES, seeds[k]), x, y,
                                        subsets[k].nonzero().squeeze(1), order_seeds[k], CONFIG)
        assert_same_weights(fused.model(k), reference)
        assert_same_weights(fused.model(k), foreach.model(k), atol=1e-6)


class TinyBatchNormNet(nn.Module):
    """Not a Sequential: exercises the generic torch.func.vmap path, buffers included."""

    def __init__(self):
        super().__init__()
        self.fc, self.norm, self.out = nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Linear(8, CLASSES)

    def forward(self, x):
        return self.out(torch.relu(self.norm(self.fc(x.flatten(1)))))


def test_generic_vmap_path_equals_one_by_one(toy):
    x, y, subsets = toy["seq"], toy["y"], toy["subsets"]
    models = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        models.append(TinyBatchNormNet())
    ensemble = Ensemble.from_models(models)
    assert not ensemble.stacked
    train(ensemble, x, y, subsets, [5, 6, 7], CONFIG)
    for k in range(3):
        reference, _ = train_one_by_one(models[k], x, y, subsets[k].nonzero().squeeze(1), 5 + k, CONFIG)
        assert_same_weights(ensemble.model(k), reference)  # running mean/var included


def test_masked_weights_stay_exactly_zero(toy):
    x, y, subsets = toy["seq"], toy["y"], toy["subsets"]
    ensemble = Ensemble.init("mlp_w16_d2", x.shape[1:], CLASSES, [1, 2, 3])
    g = torch.Generator().manual_seed(3)
    masks = {name: torch.rand(ensemble.params[name].shape, generator=g) > 0.7 for name in ("1.weight", "3.weight")}
    train(ensemble, x, y, subsets, [4, 5, 6], CONFIG, masks=masks)
    for name, mask in masks.items():
        weights = ensemble.params[name].detach()
        assert torch.count_nonzero(weights[~mask]) == 0
        assert torch.count_nonzero(weights[mask]) == int(mask.sum())  # the kept weights did train
    for k in range(3):
        model_mask = {name: mask[k].float() for name, mask in masks.items()}
        reference, _ = train_one_by_one(
            init_model("mlp_w16_d2", x.shape[1:], CLASSES, k + 1), x, y, subsets[k].nonzero().squeeze(1), 4 + k, CONFIG, model_mask
        )
        assert_same_weights(ensemble.model(k), reference)


def test_record_holds_pre_update_outcomes_of_each_minibatch(toy):
    x, y, subsets = toy["seq"], toy["y"], toy["subsets"]
    seeds = [7, 8, 9]
    ensemble = Ensemble.init("mlp_w16_d2", x.shape[1:], CLASSES, seeds)
    record = train(ensemble, x, y, subsets, [1, 2, 3], CONFIG, record=True).record
    assert record.seen.shape == (3, CONFIG.epochs, N)
    for k in range(3):
        members = subsets[k].nonzero().squeeze(1)
        per_epoch = (len(members) // 32) * 32
        assert record.seen[k].sum(1).tolist() == [per_epoch] * CONFIG.epochs  # partial batch dropped
        assert not record.seen[k][:, ~subsets[k]].any()
        assert torch.isnan(record.label_prob[k][~record.seen[k]]).all()
    # the first batch of model 0 was recorded by the untouched initial model
    first = torch.nonzero(subsets[0]).squeeze(1)[torch.randperm(200, generator=torch.Generator().manual_seed(1))][:32]
    logits = init_model("mlp_w16_d2", x.shape[1:], CLASSES, 7)(x[first])
    torch.testing.assert_close(record.loss[0, 0, first], F.cross_entropy(logits, y[first], reduction="none"))
    torch.testing.assert_close(record.label_prob[0, 0, first], logits.softmax(1)[torch.arange(32), y[first]])
    seen = record.seen
    assert torch.equal(record.correct[seen], record.margin[seen] > 0)


def test_evaluate_matches_direct_computation(toy):
    x, y = toy["img"], toy["y"]
    ensemble = Ensemble.init("cnn_w4_d2", x.shape[1:], CLASSES, [1, 2])
    result = evaluate(ensemble, x, y, examples_per_chunk=100)  # several chunks
    for k, seed in enumerate([1, 2]):
        logits = init_model("cnn_w4_d2", x.shape[1:], CLASSES, seed)(x).detach()
        probs = logits.softmax(1)[torch.arange(N), y]
        top2 = logits.topk(2, dim=1).values
        label_logit = logits[torch.arange(N), y]
        best_other = torch.where(logits.argmax(1) == y, top2[:, 1], top2[:, 0])
        assert torch.equal(result.correct[k], logits.argmax(1) == y)
        torch.testing.assert_close(result.label_prob[k], probs)
        torch.testing.assert_close(result.margin[k], label_logit - best_other)
        torch.testing.assert_close(result.loss[k], F.cross_entropy(logits, y, reduction="none"))
    assert result.accuracy().shape == (2,)


def test_example_outcomes_by_hand():
    logits = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]]])  # K=1, B=2
    correct, prob, margin, loss, el2n = example_outcomes(logits, torch.tensor([0, 2]))
    assert correct.tolist() == [[True, False]]
    assert margin.tolist() == [[1.0, -2.0]]
    torch.testing.assert_close(prob, torch.tensor([[math.e**2 / (math.e**2 + 1 + math.e), math.e / (1 + math.e**3 + math.e)]]))
    torch.testing.assert_close(loss, -prob.log())
    onehot = torch.tensor([[[1.0, 0, 0], [0, 0, 1]]])
    torch.testing.assert_close(el2n, (logits.softmax(-1) - onehot).norm(dim=-1))


@pytest.mark.parametrize("name,shape", [("mlp_w8_d2", (1, 16)), ("cnn_w4_d2", (1, 8, 8)), ("dct_mlp_w8_d2", (1, 16))])
def test_embed_returns_the_input_of_the_last_linear_layer(name, shape):
    ensemble = Ensemble.init(name, shape, CLASSES, [4, 5])
    x = torch.randn(7, *shape)
    for k, seed in enumerate([4, 5]):
        model, seen = init_model(name, shape, CLASSES, seed), {}
        model[-1].register_forward_hook(lambda module, inputs, output: seen.setdefault("x", inputs[0]))
        model(x)
        torch.testing.assert_close(embed(ensemble, x)[k], seen["x"])


def test_learning_rate_schedules_by_hand():
    base = dict(epochs=4, lr=0.2)
    assert lr_at(TrainConfig(**base, schedule="linear"), 0, 10) == pytest.approx(0.2)
    assert lr_at(TrainConfig(**base, schedule="linear"), 20, 10) == pytest.approx(0.1)
    assert lr_at(TrainConfig(**base, schedule="cosine"), 20, 10) == pytest.approx(0.1)
    assert lr_at(TrainConfig(**base, schedule="step"), 19, 10) == pytest.approx(0.2)
    assert lr_at(TrainConfig(**base, schedule="step"), 20, 10) == pytest.approx(0.02)
    assert lr_at(TrainConfig(**base, schedule="step"), 30, 10) == pytest.approx(0.002)
    assert lr_at(TrainConfig(**base, schedule="constant", warmup_epochs=1), 4, 10) == pytest.approx(0.1)
    # 1.5 warm-up steps: 1/1.5 of lr, then the peak, never above it
    warm = TrainConfig(**base, schedule="constant", warmup_epochs=0.5)
    assert [lr_at(warm, s, 3) for s in range(3)] == pytest.approx([0.2 / 1.5, 0.2, 0.2])


def test_epoch_cosine_is_the_learning_subspaces_schedule_by_hand():
    """cosine_lr of apple/learning-subspaces (utils/schedulers.py), 10 epochs, 2 of warm-up, 3 steps an epoch: lr/2,
    then lr, then 0.5 (1 + cos(pi (e - 2) / 8)) lr, each held through its epoch; lr_scale-free, SWA-free."""
    config = TrainConfig(epochs=10, lr=0.2, schedule="epoch_cosine", warmup_epochs=2)
    by_epoch = [0.1, 0.2, *(0.1 * (1 + math.cos(math.pi * (e - 2) / 8)) for e in range(2, 10))]
    assert [lr_at(config, s, 3) for s in range(30)] == pytest.approx([lr for lr in by_epoch for _ in range(3)])
    assert by_epoch[2] == pytest.approx(0.2) and by_epoch[-1] == pytest.approx(0.1 * (1 + math.cos(math.pi * 7 / 8)))
    with pytest.raises(ValueError, match="schedule epoch_cosine warms up over whole epochs: warmup_epochs=2.5 must be "
                                         "a whole number below epochs=10"):
        TrainConfig(epochs=10, schedule="epoch_cosine", warmup_epochs=2.5)
    with pytest.raises(ValueError, match="warmup_epochs=10 must be a whole number below epochs=10"):
        TrainConfig(epochs=10, schedule="epoch_cosine", warmup_epochs=10)


def test_subset_smaller_than_a_batch_is_refused(toy):
    subsets = torch.zeros(2, N, dtype=torch.bool)
    subsets[0, :100] = True
    subsets[1, :20] = True
    ensemble = Ensemble.init("mlp_w4_d1", (1, 16), CLASSES, [0, 1])
    with pytest.raises(ValueError, match=r"batch_size=32 is larger than the training subset of model\(s\) \[1\] \(smallest has 20"):
        train(ensemble, toy["seq"], toy["y"], subsets, [0, 1], CONFIG)


def test_invalid_train_config_names_the_field():
    with pytest.raises(ValueError, match="momentum"):
        TrainConfig(momentum=1.5)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="exponential")


def test_snapshot_holds_each_model_after_its_own_rth_update(toy):
    x, y, subsets = toy["seq"], toy["y"], toy["subsets"]  # models 0, 1: 6 steps per epoch; model 2: 3
    seeds, order_seeds = [1, 2, 3], [4, 5, 6]
    ensemble = Ensemble.init("mlp_w8_d1", x.shape[1:], CLASSES, seeds)
    snapshot = train(ensemble, x, y, subsets, order_seeds, CONFIG, snapshot_step=4).snapshot
    for k in range(3):  # model 2 reaches its 4th update in epoch 2, the others in epoch 1
        reference, steps = train_one_by_one(init_model("mlp_w8_d1", x.shape[1:], CLASSES, seeds[k]), x, y,
                                            subsets[k].nonzero().squeeze(1), order_seeds[k], CONFIG, stop_after=4)
        assert steps == 4
        for name, value in reference.state_dict().items():
            torch.testing.assert_close(snapshot[name][k], value, atol=1e-6, rtol=1e-5)
    initial = train(Ensemble.init("mlp_w8_d1", x.shape[1:], CLASSES, seeds), x, y, subsets, order_seeds, CONFIG,
                    snapshot_step=0).snapshot
    assert torch.equal(initial["1.weight"][1], init_model("mlp_w8_d1", x.shape[1:], CLASSES, 2)[1].weight)
    with pytest.raises(ValueError, match=r"snapshot_step=19 must lie between 0 and the last update \(9\)"):
        train(ensemble, x, y, subsets, order_seeds, CONFIG, snapshot_step=19)


def test_training_goes_on_from_the_rewind_point_as_open_lth_does(toy):
    """Survivors rewound to W_k ⊙ mask train on from update k: the dense run's lr schedule and batch order, T - k updates."""
    x, y, subsets = toy["seq"], toy["y"], toy["subsets"]  # models 0, 1: 6 steps per epoch (18 in all); model 2: 3 (9)
    seeds, order_seeds, k = [1, 2, 3], [4, 5, 6], 7  # update 7: epoch 1 of models 0, 1; epoch 2 of model 2
    snapshot = train(Ensemble.init("mlp_w16_d2", x.shape[1:], CLASSES, seeds), x, y, subsets, order_seeds, CONFIG,
                     snapshot_step=k).snapshot
    g = torch.Generator().manual_seed(0)
    masks = {name: torch.rand(snapshot[name].shape, generator=g) > 0.4 for name in ("1.weight", "3.weight")}
    rewound = Ensemble.init("mlp_w16_d2", x.shape[1:], CLASSES, [0, 0, 0])
    rewind(rewound, snapshot, masks)
    restarted = Ensemble.init("mlp_w16_d2", x.shape[1:], CLASSES, [0, 0, 0])
    rewind(restarted, snapshot, masks)
    result = train(rewound, x, y, subsets, order_seeds, CONFIG, masks=masks, start_step=k)
    train(restarted, x, y, subsets, order_seeds, CONFIG, masks=masks)  # the old way: the whole schedule again
    assert result.steps.tolist() == [18 - k, 18 - k, 9 - k]
    assert result.losses[:2, 0].isnan().all() and result.losses[2, :2].isnan().all()  # epochs before the rewind point
    assert not result.losses[:2, 1:].isnan().any() and not result.losses[2, 2].isnan()
    for m in range(3):
        members, mask = subsets[m].nonzero().squeeze(1), {name: masks[name][m].float() for name in masks}
        w_k, _ = train_one_by_one(init_model("mlp_w16_d2", x.shape[1:], CLASSES, seeds[m]), x, y, members,
                                  order_seeds[m], CONFIG, stop_after=k)
        reference, updates = train_one_by_one(w_k, x, y, members, order_seeds[m], CONFIG, mask=mask, start=k)
        assert updates == int(result.steps[m])
        assert_same_weights(rewound.model(m), reference)
        with pytest.raises(AssertionError):
            assert_same_weights(restarted.model(m), reference)


def test_start_step_past_training_is_refused(toy):
    ensemble = Ensemble.init("mlp_w8_d1", (1, 16), CLASSES, [1, 2, 3])
    with pytest.raises(ValueError, match=r"start_step=10 must lie between 0 and the last update \(9\)"):
        train(ensemble, toy["seq"], toy["y"], toy["subsets"], [4, 5, 6], CONFIG, start_step=10)
    with pytest.raises(ValueError, match=r"snapshot_step=2 must lie between 3 and the last update \(9\)"):
        train(ensemble, toy["seq"], toy["y"], toy["subsets"], [4, 5, 6], CONFIG, start_step=3, snapshot_step=2)


def test_lr_scale_trains_each_model_at_its_own_rate_like_one_by_one(toy):
    """A learning-rate sweep in one pass: model k equals torch.optim.SGD alone at lr_scale[k] x the schedule."""
    x, y, subsets = toy["seq"], toy["y"], toy["subsets"]
    scale = torch.tensor([1.0, 0.25, 2.0])
    ensemble = Ensemble.init("mlp_w16_d2", x.shape[1:], CLASSES, [11, 12, 13])
    train(ensemble, x, y, subsets, [21, 22, 23], CONFIG, lr_scale=scale)
    for k in range(3):
        config = CONFIG.model_copy(update={"lr": CONFIG.lr * float(scale[k])})
        reference, _ = train_one_by_one(init_model("mlp_w16_d2", x.shape[1:], CLASSES, 11 + k), x, y,
                                        subsets[k].nonzero().squeeze(1), 21 + k, config)
        assert_same_weights(ensemble.model(k), reference)
    with pytest.raises(ValueError, match=r"lr_scale has shape \[2\]; it needs one factor per model: \[3\]"):
        train(ensemble, x, y, subsets, [21, 22, 23], CONFIG, lr_scale=scale[:2])
