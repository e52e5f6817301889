"""What a method adds to core.training.trainer.train without the trainer naming it: one hooks object."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor


@dataclass(frozen=True)
class TrainingHooks:
    """train()'s three optional hooks (e.g. core.methods.subspaces.SubspaceTraining.hooks).

    `step(takes)` runs before each step's forward, `takes` the bool `[K]` CPU tensor of the models that take this
    step (never a model's skipped or padding steps): e.g. per-model random draws that must follow a model's own
    steps, as they would were it trained alone (core.models.subspaces).
    `regularizer(ensemble.params)` (`[K]`, differentiable) is added to each model's loss on every step it takes;
    train()'s `losses` still holds the cross-entropy alone.
    `epoch(epoch)` runs after each epoch's last step (e.g. per-epoch diagnostics); it must leave the parameters,
    buffers and the hooks' generators as it found them.
    """

    step: Callable[[Tensor], None] | None = None
    regularizer: Callable[[dict[str, Tensor]], Tensor] | None = None
    epoch: Callable[[int], None] | None = None
