"""The sequence models' config groups (the transformer's shape, its optimiser) and the pretraining arms, without torch,
so that configs validate (and `regularity config` prints) without loading it."""
from __future__ import annotations

import math

from pydantic import Field, model_validator

from core.config import Config
from core.sequence.lime import CONTROLS, TASKS

SCRATCH = "scratch"
ARMS = (SCRATCH, "mixed", *TASKS, *CONTROLS)  # "scratch", or the task pretrained on
DOWNSTREAM_TASKS = {"rewrite": "one-step term rewriting", "rewrite_multistep": "multi-step term rewriting"}  # the
# fine-tuning tasks, and how a finding or a figure names each

MAX_LENGTH = 1024  # positions of the sinusoid table: tokens of the longest source, or of BOS + target


class TransformerConfig(Config):
    """The network's shape; the defaults train in minutes on 2 CPU cores (see flows/configs for a GPU size)."""

    d_model: int = Field(64, ge=8, le=4096, description="width of the token representations")
    heads: int = Field(4, ge=1, le=64, description="attention heads per layer (d_model must be a multiple)")
    encoder_layers: int = Field(2, ge=1, le=48, description="encoder blocks")
    decoder_layers: int = Field(2, ge=1, le=48, description="decoder blocks")
    feedforward: int = Field(256, ge=8, le=65536, description="hidden units of each block's MLP")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout in every block (the tasks are generated afresh: "
                           "little to overfit, and runs stay exactly comparable without it)")

    @model_validator(mode="after")
    def _heads_divide_the_width(self) -> TransformerConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} must be a multiple of heads {self.heads}")
        return self


class OptimConfig(Config):
    """AdamW with a linear warm-up to `lr`, then cosine decay to `final_lr_fraction` x lr at the last step."""

    steps: int = Field(1000, ge=1, description="optimizer updates")
    batch_size: int = Field(32, ge=1, description="sequences per update")
    lr: float = Field(1e-3, gt=0, le=1, description="peak learning rate")
    warmup: int = Field(100, ge=0, description="steps of linear warm-up from 0 to lr")
    final_lr_fraction: float = Field(0.1, ge=0, le=1, description="learning rate at the last step, as a fraction of "
                                     "lr")
    weight_decay: float = Field(0.01, ge=0, description="AdamW's decoupled weight decay (not on biases and norms)")
    clip: float = Field(1.0, ge=0, description="clip the gradient's global norm to this (0: no clipping)")

    def lr_at(self, step: int) -> float:
        """The learning rate of update `step` (0-based)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - 1 - self.warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.lr * (self.final_lr_fraction + (1 - self.final_lr_fraction) * cosine)
