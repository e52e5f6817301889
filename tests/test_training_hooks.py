"""train()'s one hooks object: each hook runs when TrainingHooks says, and the regulariser joins each model's loss."""
import pytest
import torch

from core.training.config import TrainConfig
from core.training.ensemble import Ensemble
from core.training.hooks import TrainingHooks
from core.training.trainer import train
from reference import toy_data

N, CLASSES, MODEL, SEEDS, ORDER_SEEDS = 240, 5, "mlp_w16_d2", [11, 12, 13], [21, 22, 23]
CONFIG = TrainConfig(epochs=3, batch_size=32, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                     warmup_epochs=1)


@pytest.fixture(scope="module")
def toy():
    return toy_data(N, CLASSES)


def test_step_and_epoch_hooks_see_each_models_own_steps_and_a_constant_regulariser_changes_nothing(toy):
    """Model 2 idles half of every epoch: the step hook's `takes` leave it out there. A regulariser whose gradient is
    zero leaves weights and the recorded cross-entropy exactly as without hooks."""
    x, y, subsets = toy["seq"], toy["y"], toy["subsets"]
    plain = Ensemble.init(MODEL, x.shape[1:], CLASSES, SEEDS)
    plain_result = train(plain, x, y, subsets, ORDER_SEEDS, CONFIG)
    takes_seen, regularised, epochs_seen = [], [], []

    def constant(params):
        regularised.append(len(takes_seen))
        return 0 * sum(p.flatten(1).sum(1) for p in params.values()) + torch.tensor([1.0, 2.0, 3.0])

    hooks = TrainingHooks(step=takes_seen.append, regularizer=constant,
                          epoch=lambda epoch: epochs_seen.append((epoch, len(takes_seen))))
    hooked = Ensemble.init(MODEL, x.shape[1:], CLASSES, SEEDS)
    result = train(hooked, x, y, subsets, ORDER_SEEDS, CONFIG, hooks=hooks)
    assert torch.equal(torch.stack(takes_seen).sum(0), result.steps)  # [6, 6, 3] steps an epoch, 3 epochs
    assert result.steps.tolist() == [18, 18, 9]
    assert all(t.dtype == torch.bool and t.device.type == "cpu" and t.any() for t in takes_seen)
    assert regularised == list(range(1, len(takes_seen) + 1))  # once a step, after that step's `step` hook
    assert epochs_seen == [(0, 6), (1, 12), (2, 18)]
    assert torch.equal(result.losses, plain_result.losses)
    for name, value in plain.state().items():
        assert torch.equal(hooked.state()[name], value), name


def test_an_l2_regulariser_trains_as_the_same_extra_weight_decay(toy):
    """gamma/2 ||w_k||^2 added to model k's loss is SGD's weight decay raised by gamma (an independent route to the
    same update), with model 2 idle half of every epoch."""
    x, y, subsets, gamma = toy["seq"], toy["y"], toy["subsets"], 0.01
    decayed = Ensemble.init(MODEL, x.shape[1:], CLASSES, SEEDS)
    train(decayed, x, y, subsets, ORDER_SEEDS, CONFIG.model_copy(update={"weight_decay": CONFIG.weight_decay + gamma}))
    l2 = TrainingHooks(regularizer=lambda params: gamma / 2 * sum(p.flatten(1).square().sum(1)
                                                               for p in params.values()))
    regularised = Ensemble.init(MODEL, x.shape[1:], CLASSES, SEEDS)
    train(regularised, x, y, subsets, ORDER_SEEDS, CONFIG, hooks=l2)
    for name, value in decayed.state().items():
        torch.testing.assert_close(regularised.state()[name], value, rtol=1e-4, atol=1e-5)
    unregularised = Ensemble.init(MODEL, x.shape[1:], CLASSES, SEEDS)
    train(unregularised, x, y, subsets, ORDER_SEEDS, CONFIG)
    assert not torch.allclose(unregularised.params["1.weight"], regularised.params["1.weight"], atol=1e-4)
