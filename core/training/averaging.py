"""Stochastic Weight Averaging (Izmailov, Podoprikhin, Garipov, Vetrov, Wilson 2018) of K models trained at once: a
running mean of each model's parameters, one update per epoch from epoch `swa_start` on (train()'s epoch hook), while
TrainConfig's swa_start and swa_lr hold the learning rate constant from that epoch. torch.optim.swa_utils does the
same for one model (AveragedModel, SWALR, update_bn; tests/test_swa.py checks them against each other)."""
from __future__ import annotations

import torch

from core.training.config import TrainConfig
from core.training.ensemble import Ensemble
from core.training.hooks import TrainingHooks
from core.training.recalibration import recalibrate_batchnorm


class StackedWeightAveraging:
    """The running mean of every model's parameters `[K, ...]` at the end of each epoch from `config.swa_start` on
    (the average of the models after epochs swa_start, ..., epochs - 1: the ones trained at swa_lr). Pass `hooks()`
    to train() with `config`, then `apply()`."""

    def __init__(self, ensemble: Ensemble, config: TrainConfig):
        if config.swa_start is None:
            raise ValueError("train.swa_start is not set: SWA averages from that epoch on, at the constant swa_lr; "
                             "set train.swa_start and train.swa_lr")
        self.ensemble, self.start = ensemble, config.swa_start
        self.mean = {name: torch.zeros_like(p) for name, p in ensemble.params.items()}
        self.averaged = 0  # models in the mean so far

    @torch.no_grad()
    def epoch(self, epoch: int) -> None:
        """Add each model's parameters after `epoch` (0-based) to its mean, from epoch `start` on."""
        if epoch < self.start:
            return
        self.averaged += 1
        torch._foreach_lerp_(list(self.mean.values()), list(self.ensemble.params.values()), 1 / self.averaged)

    def hooks(self) -> TrainingHooks:
        """`epoch` as train()'s epoch hook."""
        return TrainingHooks(epoch=self.epoch)

    @torch.no_grad()
    def apply(self, x: torch.Tensor, batch_size: int) -> None:
        """Set every model's parameters to its average, and its BatchNorm statistics to those of `x` at the average
        (core.training.recalibration, SWA's update_bn)."""
        if not self.averaged:
            raise ValueError(f"no epoch was averaged: training ended before swa_start={self.start}")
        for name, mean in self.mean.items():
            self.ensemble.params[name].copy_(mean)
        recalibrate_batchnorm(self.ensemble, x, batch_size)
