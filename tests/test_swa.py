"""Stacked SWA (core.training.averaging) against torch.optim.swa_utils on one model at a time: AveragedModel, SWALR
(anneal_epochs=0: the constant swa_lr from swa_start) and update_bn, with the same seeds, batch orders and epochs."""
import pytest
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from core.models.networks import init_model
from core.training.averaging import StackedWeightAveraging
from core.training.config import TrainConfig, lr_at
from core.training.ensemble import Ensemble
from core.training.trainer import train
from reference import toy_data

N, CLASSES, SEEDS, ORDER_SEEDS = 240, 5, [11, 12, 13], [21, 22, 23]
BASE = TrainConfig(epochs=4, batch_size=32, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                   warmup_epochs=1)
SWA_START, SWA_LR = 2, 0.05  # epochs 2 and 3 trained at 0.05 and averaged
CONFIG = BASE.model_copy(update={"swa_start": SWA_START, "swa_lr": SWA_LR})


@pytest.fixture(scope="module")
def toy():
    return toy_data(N, CLASSES)


def swa_one_model(name: str, x, y, members, seed: int, order_seed: int, config: TrainConfig = CONFIG,
                  classes: int = CLASSES) -> torch.nn.Module:
    """torch's SWA recipe on one model: SGD on the schedule of `config` without its swa settings, SWALR from epoch
    config.swa_start (its constructor sets the lr to swa_lr at once with anneal_epochs=0), AveragedModel updated after
    each epoch from then on, update_bn over all of `x` in one batch."""
    base = config.model_copy(update={"swa_start": None, "swa_lr": None})
    model = init_model(name, tuple(x.shape[1:]), classes, seed)
    averaged = AveragedModel(model)
    opt = torch.optim.SGD(model.parameters(), lr=base.lr, momentum=base.momentum, weight_decay=base.weight_decay)
    generator, scheduler = torch.Generator().manual_seed(order_seed), None
    steps_per_epoch = len(members) // base.batch_size
    for epoch in range(base.epochs):
        if epoch == config.swa_start:
            scheduler = SWALR(opt, swa_lr=config.swa_lr, anneal_epochs=0)
        order = members[torch.randperm(len(members), generator=generator)]
        for s in range(steps_per_epoch):
            if scheduler is None:
                for group in opt.param_groups:
                    group["lr"] = lr_at(base, epoch * steps_per_epoch + s, steps_per_epoch)
            idx = order[s * base.batch_size:(s + 1) * base.batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        if scheduler is not None:
            averaged.update_parameters(model)
            scheduler.step()
    update_bn([x], averaged)
    return averaged.module


def stacked_swa(name: str, x, y, subsets, late: bool = False) -> Ensemble:
    """All three models at once: train() with CONFIG and StackedWeightAveraging's epoch hook, then its average with
    BatchNorm recomputed over all of `x` in one chunk (`late`: the average begins one epoch after swa_start)."""
    ensemble = Ensemble.init(name, x.shape[1:], CLASSES, SEEDS)
    averaging = StackedWeightAveraging(ensemble, CONFIG)
    averaging.start += late
    train(ensemble, x, y, subsets, ORDER_SEEDS, CONFIG, hooks=averaging.hooks())
    averaging.apply(x, batch_size=len(x))
    return ensemble


@pytest.mark.parametrize("name", ["mlp_w16_d2", "cnn1d_bn_w8_d2"])
def test_stacked_swa_equals_torch_swa_utils_per_model(toy, name):
    """Unequal subsets (model 2 idles half of every epoch): each model's averaged weights and recomputed BatchNorm
    statistics are torch's; averaging from one epoch late misses them."""
    x, y, subsets = toy["seq"], toy["y"], toy["subsets"]
    stacked = stacked_swa(name, x, y, subsets).state()
    if name.startswith("cnn1d_bn"):
        assert any("running_var" in key for key in stacked)
    references = [swa_one_model(name, x, y, subsets[k].nonzero().squeeze(1), seed, order_seed).state_dict()
                  for k, (seed, order_seed) in enumerate(zip(SEEDS, ORDER_SEEDS))]
    for k, reference in enumerate(references):
        assert reference.keys() == stacked.keys()
        for key, value in reference.items():
            torch.testing.assert_close(stacked[key][k], value, rtol=1e-4, atol=1e-5, msg=f"model {k}: {key}")
    late = stacked_swa(name, x, y, subsets, late=True).state()
    for k, reference in enumerate(references):
        weights = [key for key in reference if key.endswith("weight")]
        assert max((late[key][k] - reference[key]).abs().max() for key in weights) > 1e-3


def test_the_lr_holds_at_swa_lr_from_swa_start_and_follows_the_schedule_before():
    steps_per_epoch = 6
    for step in range(BASE.epochs * steps_per_epoch):
        expected = SWA_LR if step >= SWA_START * steps_per_epoch else lr_at(BASE, step, steps_per_epoch)
        assert lr_at(CONFIG, step, steps_per_epoch) == expected
    assert lr_at(CONFIG, 11, 6) == lr_at(BASE, 11, 6) != SWA_LR


def test_swa_settings_fail_with_the_fix():
    with pytest.raises(ValueError, match=r"swa_start=2 and swa_lr=None: set both \(a constant lr from that epoch\) "
                                         "or neither"):
        TrainConfig(epochs=4, swa_start=2)
    with pytest.raises(ValueError, match="swa_start=4 must be below epochs=4"):
        TrainConfig(epochs=4, swa_start=4, swa_lr=0.05)
    ensemble = Ensemble.init("mlp_w16_d2", (1, 16), CLASSES, SEEDS)
    with pytest.raises(ValueError, match="train.swa_start is not set: SWA averages from that epoch on, at the constant "
                                         "swa_lr; set train.swa_start and train.swa_lr"):
        StackedWeightAveraging(ensemble, BASE)
    with pytest.raises(ValueError, match="no epoch was averaged: training ended before swa_start=2"):
        StackedWeightAveraging(ensemble, CONFIG).apply(torch.zeros(4, 1, 16), 4)
