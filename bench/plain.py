"""The baseline every benchmark compares against: one model at a time, plain PyTorch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from core.training.config import TrainConfig, lr_at


def train_plain(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, members: torch.Tensor,
                order_seed: int, config: TrainConfig, before_step=None) -> torch.nn.Module:
    """torch.optim.SGD over `members` in a seeded order per epoch, dropping the partial batch, lr set each step;
    `before_step(model)`, called before each forward, returns an extra loss term (or 0), or a function that gives it
    once the forward has run."""
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    generator, steps_per_epoch, step = torch.Generator().manual_seed(order_seed), len(members) // config.batch_size, 0
    for _ in range(config.epochs):
        order = members[torch.randperm(len(members), generator=generator)]
        for s in range(steps_per_epoch):
            idx = order[s * config.batch_size : (s + 1) * config.batch_size]
            for group in opt.param_groups:
                group["lr"] = lr_at(config, step, steps_per_epoch)
            extra = before_step(model) if before_step else 0.0
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss = loss + (extra() if callable(extra) else extra)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    return model


def masking_hook(mask: torch.Tensor):
    """A post-accumulate-grad hook that zeroes the gradient of masked (pruned or sparse) weights."""
    def hook(param: torch.Tensor) -> None:
        param.grad.mul_(mask)
    return hook


@torch.no_grad()
def correct_plain(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bool `[N]`: which examples the model classifies correctly."""
    return model(x).argmax(1) == y
