"""The explicit networks a DEQ is compared with (Bai, Koltun & Kolter): its tanh cell z = tanh(W z + U x + b) run a
fixed L times from z0 = 0 and trained by plain backprop through every step, instead of solved to its fixed point.

Tied: one W, U, b for all L steps, the DEQ's own parameters (initialised exactly as core.models.deq.DEQLinear from
the same seed), so the comparison is the solver and its implicit gradient against L steps of backprop.
Untied: an L-layer network of the same width, each layer its own W_l and b_l. U is shared by every layer: the input
is injected at every layer as in the DEQ's cell, and a per-layer U would multiply the largest matrix (input x width)
L times. W_1 meets z0 = 0, so it never trains; it is kept so that every layer is the cell's form.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from core.models.stacked import stacked_linear


class UnrolledTanh(nn.Module):
    """z_L of z_l = tanh(W_l z_{l-1} + U x + b_l), z_0 = 0, l = 1..`depth`, of `features` units; `tied`: W_l = W and
    b_l = b. Each W_l is drawn as nn.Linear draws, then scaled to spectral norm `contraction` (as the DEQ's W)."""

    stacked_layout = "features"  # core.training.ensemble's stacked fast path: [K, F, B]

    def __init__(self, in_features: int, features: int, depth: int, tied: bool, contraction: float = 0.5,
                 device=None, dtype=None):
        super().__init__()
        if depth < 1:
            raise ValueError(f"an unrolled network needs depth >= 1, not {depth}")
        self.in_features, self.features, self.depth, self.tied = in_features, features, depth, tied
        # the DEQ's draws in the DEQ's order (cell, then injection), then the untied layers': a network starts with
        # the W, U and b of the DEQ of its seed
        cells, injection = [nn.Linear(features, features, bias=False)], nn.Linear(in_features, features)
        cells += [nn.Linear(features, features, bias=False) for _ in range(0 if tied else depth - 1)]
        bound = 1 / in_features ** 0.5  # nn.Linear's bias range, for the untied layers' own biases
        extra_biases = torch.empty(0 if tied else depth - 1, features).uniform_(-bound, bound)
        with torch.no_grad():
            weights = torch.stack([c.weight * (contraction / torch.linalg.matrix_norm(c.weight, 2)) for c in cells])
            biases = torch.cat([injection.bias.unsqueeze(0), extra_biases])
        self.weight = nn.Parameter((weights[0] if tied else weights).to(device, dtype))  # [F, F] or [L, F, F]
        self.input_weight = nn.Parameter(injection.weight.detach().to(device, dtype))  # [F, in]
        self.bias = nn.Parameter((biases[0] if tied else biases).to(device, dtype))  # [F] or [L, F]

    def forward(self, x: Tensor) -> Tensor:
        """One model on `[B, in]` -> `[B, features]`."""
        params = {name: p.unsqueeze(0) for name, p in self.named_parameters()}
        return self.forward_stacked(x.T.unsqueeze(0), params, 1).squeeze(0).T

    def forward_stacked(self, x: Tensor, params: dict[str, Tensor], k: int) -> Tensor:
        """All K models on `[K, in, B]` -> `[K, features, B]`: U x once, then `depth` batched cell steps."""
        injection = stacked_linear(x, params["input_weight"], None)
        weight, bias = params["weight"], params["bias"]
        z = torch.zeros_like(injection)
        for layer in range(self.depth):
            w, b = (weight, bias) if self.tied else (weight[:, layer], bias[:, layer])
            z = torch.tanh(torch.baddbmm(injection + b.unsqueeze(2), w, z))
        return z

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, features={self.features}, depth={self.depth}, tied={self.tied}"
