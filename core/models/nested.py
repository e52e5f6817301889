"""Networks of one family and depth but different widths, trained in one stacked pass inside the widest.

A width-w network sits in the leading block of every parameter of the widest one: its first w units
(or channels) in each hidden layer, the first w inputs of the next layer, and for a CNN's classifier
the first w channels' features (nn.Flatten is channel-major). Everything outside the block starts at
zero and is masked, so the unused units stay dead: the narrow network computes exactly what it would
alone, up to the order in which floats are summed. `support` marks each model's own entries; pruning
and parameter counts use it, so a narrow network is pruned as if it were alone.
"""
from __future__ import annotations

import torch
from torch import Tensor

from core.models.names import parse_model_name
from core.models.networks import build_model, init_model
from core.runtime import check_precision
from core.training.ensemble import Ensemble


def leading_block(shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Index of the leading block of `shape` inside any larger tensor of the same rank."""
    return tuple(slice(0, n) for n in shape)


def embed(values: Tensor, host_shape: tuple[int, ...]) -> Tensor:
    """`[K, *narrow]` values in the leading block of zeros `[K, *host_shape]`."""
    host = values.new_zeros(values.shape[0], *host_shape)
    host[(slice(None), *leading_block(values.shape[1:]))] = values
    return host


def extract(values: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The leading `shape` block of every model's `[K, *host]` values (a copy)."""
    return values[(slice(None), *leading_block(shape))].clone()


def host_name(names: list[str]) -> str:
    """The widest of `names`, which must share family, depth and subspace endpoints (e.g. mlp_w32_d2 and mlp_w128_d2)."""
    specs = [parse_model_name(n) for n in names]
    if len(set(names)) > 1 and any(s.dct_plus_sparse for s in specs):  # a DCT+Sparse layer's D depends on its width
        raise ValueError(f"a DCT+Sparse network shares a pass only with its own name; got {sorted(set(names))}")
    if any(s.width is None for s in specs) or len({(s.family, s.depth, s.endpoints) for s in specs}) != 1:
        raise ValueError("only networks of one family, depth and endpoint count with a width can share a pass; "
                         f"got {sorted(set(names))}")
    return max(specs, key=lambda s: s.width).name


def nested_ensemble(names: list[str], input_shape, num_classes: int, seeds: list[int],
                    device="cpu", precision: str = "fp32") -> tuple[Ensemble, dict[str, Tensor] | None]:
    """Model k is `init_model(names[k], ..., seeds[k])` embedded in the widest of `names`; returns the
    ensemble (at `precision`) and its support (bool `[K, ...]` per parameter; None when every model is the widest)."""
    host = host_name(names)
    if all(n == host for n in names):
        return Ensemble.init(host, input_shape, num_classes, seeds, device, precision), None
    check_precision(precision, torch.device(device))
    template = init_model(host, tuple(input_shape), num_classes, 0)
    params = {n: torch.zeros(len(names), *p.shape) for n, p in template.named_parameters()}
    # BatchNorm statistics nest like the parameters: zeros outside a model's block never matter, since a dead
    # channel's BatchNorm output is its (zero, masked) bias whatever its statistics
    buffers = {n: torch.zeros(len(names), *b.shape, dtype=b.dtype) for n, b in template.named_buffers()}
    support = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in params.items()}
    for k, (name, seed) in enumerate(zip(names, seeds)):
        model = init_model(name, tuple(input_shape), num_classes, seed)
        for param_name, value in model.named_parameters():
            block = (k, *leading_block(value.shape))
            params[param_name][block] = value.detach()
            support[param_name][block] = True
        for buffer_name, value in model.named_buffers():
            buffers[buffer_name][(k, *leading_block(value.shape))] = value
    return Ensemble(template, params, buffers, precision).to(device), {n: s.to(device) for n, s in support.items()}


def state_shapes(name: str, input_shape, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Each parameter's and buffer's shape in the network `name` (built on the meta device: no memory, no RNG)."""
    with torch.device("meta"):
        model = build_model(name, tuple(input_shape), num_classes)
        return {n: tuple(t.shape) for n, t in [*model.named_parameters(), *model.named_buffers()]}


def with_support(masks: dict[str, Tensor], support: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """The trainer's masks: the pruning `masks`, and each model's support for every parameter without one."""
    if support is None:
        return masks
    return {n: masks[n] & support[n] if n in masks else support[n] for n in support}
