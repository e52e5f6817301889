"""The optimiser and schedule every flow that trains with SGD shares: the config group and its learning rate at each
step, without torch, so that configs validate (and `regularity config` prints) without loading it."""
from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, model_validator

from core.config import ADDED_SETTING, Config


class TrainConfig(Config):
    """SGD with momentum and weight decay, one learning-rate schedule, all knobs in one place."""

    epochs: int = Field(20, ge=1, description="passes over each model's training subset")
    batch_size: int = Field(128, ge=1, description="examples per step and model; partial last batches are dropped")
    lr: float = Field(0.05, gt=0, description="peak learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (heavy ball, no dampening)")
    weight_decay: float = Field(5e-4, ge=0, description="L2 penalty added to the gradient")
    schedule: Literal["constant", "linear", "cosine", "step", "epoch_cosine"] = Field(
        "linear", description="lr over training: constant; linear or cosine decay to 0; step = x0.1 at 50% and 75%; "
                              "epoch_cosine = learning-subspaces' cosine_lr: set once per epoch, (e + 1) / W of lr "
                              "in the W = warmup_epochs first epochs, then cosine from lr to 0 over the rest"
    )
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up from 0 to `lr` over this many epochs")
    swa_start: Annotated[int | None, ADDED_SETTING] = Field(None, ge=0, description="epoch from which the lr holds "
                                                            "at swa_lr (SWA's constant lr; the schedule before it); "
                                                            "none: the schedule throughout")
    swa_lr: Annotated[float | None, ADDED_SETTING] = Field(None, gt=0, description="the lr from epoch swa_start on")

    @model_validator(mode="after")
    def _swa_lr_with_its_start(self) -> "TrainConfig":
        if (self.swa_start is None) != (self.swa_lr is None):
            raise ValueError(f"swa_start={self.swa_start} and swa_lr={self.swa_lr}: set both (a constant lr from "
                             "that epoch) or neither")
        if self.swa_start is not None and self.swa_start >= self.epochs:
            raise ValueError(f"swa_start={self.swa_start} must be below epochs={self.epochs}")
        whole_warmup = self.warmup_epochs.is_integer() and self.warmup_epochs < self.epochs
        if self.schedule == "epoch_cosine" and not whole_warmup:
            raise ValueError(f"schedule epoch_cosine warms up over whole epochs: warmup_epochs={self.warmup_epochs:g} "
                             f"must be a whole number below epochs={self.epochs}")
        return self


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of a model's `step`-th update (0-based)."""
    if config.swa_start is not None and step >= config.swa_start * steps_per_epoch:
        return config.swa_lr
    if config.schedule == "epoch_cosine":
        return config.lr * epoch_cosine(step // steps_per_epoch, config.epochs, int(config.warmup_epochs))
    progress = step / (config.epochs * steps_per_epoch)
    factor = {
        "constant": 1.0,
        "linear": 1.0 - progress,
        "cosine": 0.5 * (1.0 + math.cos(math.pi * progress)),
        "step": 0.1 ** ((progress >= 0.5) + (progress >= 0.75)),
    }[config.schedule]
    warmup_steps = config.warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        factor *= min(1.0, (step + 1) / warmup_steps)  # a fractional last warm-up step must not overshoot lr
    return config.lr * factor


def epoch_cosine(epoch: int, epochs: int, warmup: int) -> float:
    """The authors' learning-subspaces schedule (utils/schedulers.py cosine_lr), as a fraction of the peak lr: held
    for a whole epoch, (epoch + 1) / warmup while warming up, then half a cosine from 1 to 0 over the other epochs."""
    if epoch < warmup:
        return (epoch + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))
