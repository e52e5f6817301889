"""The optimiser and schedule every flow that trains with SGD shares: the config group and its learning rate at each
step, without torch, so that configs validate (and `regularity config` prints) without loading it."""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from core.config import Config


class TrainConfig(Config):
    """SGD with momentum and weight decay, one learning-rate schedule, all knobs in one place."""

    epochs: int = Field(20, ge=1, description="passes over each model's training subset")
    batch_size: int = Field(128, ge=1, description="examples per step and model; partial last batches are dropped")
    lr: float = Field(0.05, gt=0, description="peak learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (heavy ball, no dampening)")
    weight_decay: float = Field(5e-4, ge=0, description="L2 penalty added to the gradient")
    schedule: Literal["constant", "linear", "cosine", "step"] = Field(
        "linear", description="lr over training: constant; linear or cosine decay to 0; step = x0.1 at 50% and 75%"
    )
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up from 0 to `lr` over this many epochs")


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of a model's `step`-th update (0-based)."""
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
