"""K models of one architecture with parameters stacked along a leading model axis.

Sequential models of Linear/Conv/elementwise/pooling layers run as batched matmuls and grouped
convolutions (the fast path); any other module (e.g. ResNet-18) runs through torch.func.vmap.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from core.models import init_model

_CONV_FN = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d}
_PARAMETER_FREE = (nn.ReLU, nn.Flatten, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.Identity)


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` means CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _is_stackable(template: nn.Module) -> bool:
    """True when every layer of a Sequential has a batched-matmul / grouped-conv equivalent."""
    if not isinstance(template, nn.Sequential):
        return False
    for layer in template:
        if isinstance(layer, tuple(_CONV_FN)):
            if layer.groups != 1 or layer.padding_mode != "zeros" or set(layer.dilation) != {1}:
                return False
        elif not isinstance(layer, (nn.Linear, *_PARAMETER_FREE)):
            return False
    return True


class Ensemble:
    """K independent models whose parameters live in stacked `[K, ...]` leaf tensors."""

    def __init__(self, template: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor]):
        self.template = template
        self.params = {name: p.detach().requires_grad_(True) for name, p in params.items()}
        self.buffers = buffers
        self.size = next(iter(self.params.values())).shape[0]
        self.stacked = _is_stackable(template)

    @classmethod
    def from_models(cls, models: list[nn.Module]) -> Ensemble:
        """Stack K plain models of one architecture (their weights are copied)."""
        params, buffers = stack_module_state(models)
        return cls(copy.deepcopy(models[0]), params, buffers)

    @classmethod
    def init(cls, name: str, input_shape, num_classes: int, seeds: list[int], device="cpu") -> Ensemble:
        """K models of registry `name`, model k initialised exactly as `init_model(..., seeds[k])`."""
        models = [init_model(name, tuple(input_shape), num_classes, s) for s in seeds]
        return cls.from_models(models).to(device)

    def to(self, device) -> Ensemble:
        """Move parameters, buffers and template to `device`."""
        self.template = self.template.to(device)
        self.params = {n: p.detach().to(device).requires_grad_(True) for n, p in self.params.items()}
        self.buffers = {n: b.to(device) for n, b in self.buffers.items()}
        return self

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def __call__(self, x: Tensor, shared: bool = False, train: bool = False) -> Tensor:
        """Logits `[K, B, C]` for inputs `[K, B, ...]`, or `[B, ...]` fed to every model when `shared`."""
        self.template.train(train)
        if self.stacked:
            return self._forward_stacked(x.expand(self.size, *x.shape) if shared else x)
        run_one = lambda p, b, xi: functional_call(self.template, (p, b), (xi,))  # noqa: E731
        return vmap(run_one, in_dims=(0, 0, None if shared else 0), randomness="different")(
            self.params, self.buffers, x
        )

    def _forward_stacked(self, x: Tensor) -> Tensor:
        """Layer by layer: linear layers on `[K, B, F]`, conv layers on `[B, K*C, ...]` (grouped by model)."""
        k, batch = self.size, x.shape[1]
        channels_first = False  # False: x is [K, B, ...]; True: x is [B, K*C, *spatial]
        for i, layer in enumerate(self.template):
            weight, bias = self.params.get(f"{i}.weight"), self.params.get(f"{i}.bias")
            if isinstance(layer, nn.Linear):
                out = torch.bmm(x, weight.transpose(1, 2))
                x = out + bias.unsqueeze(1) if bias is not None else out
            elif isinstance(layer, tuple(_CONV_FN)):
                if not channels_first:
                    x = x.transpose(0, 1).reshape(batch, -1, *x.shape[3:])
                    channels_first = True
                x = _CONV_FN[type(layer)](
                    x, weight.flatten(0, 1), None if bias is None else bias.flatten(),
                    stride=layer.stride, padding=layer.padding, groups=k,
                )
            elif isinstance(layer, nn.Flatten):
                x = x.reshape(batch, k, -1).transpose(0, 1) if channels_first else x.flatten(2)
                channels_first = False
            elif channels_first or isinstance(layer, (nn.ReLU, nn.Identity)):
                x = layer(x)  # elementwise, or pooling acting per channel
            else:
                x = layer(x.flatten(0, 1)).unflatten(0, (k, batch))
        return x

    def model(self, k: int) -> nn.Module:
        """Model k as a plain nn.Module (a copy)."""
        module = copy.deepcopy(self.template)
        state = {n: p[k].detach().clone() for n, p in self.params.items()}
        state.update({n: b[k].clone() for n, b in self.buffers.items()})
        module.load_state_dict(state)
        return module

    def state(self) -> dict[str, Tensor]:
        """A detached copy of all stacked parameters and buffers."""
        return {n: t.detach().clone() for n, t in {**self.params, **self.buffers}.items()}


@dataclass
class Evaluation:
    """Per-model, per-example outcomes, each `[K, N]` on the CPU."""

    correct: Tensor  # bool
    label_prob: Tensor  # softmax probability of the given label
    margin: Tensor  # logit of the given label minus the largest other logit
    loss: Tensor  # cross-entropy

    def accuracy(self) -> Tensor:
        """`[K]` fraction correct."""
        return self.correct.float().mean(1)


def example_outcomes(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(correct, label_prob, margin, loss) of logits `[K, B, C]` against labels `[K, B]` or `[B]`."""
    labels = labels.expand(logits.shape[:2]).unsqueeze(-1)
    log_probs = logits.log_softmax(-1)
    label_logit = logits.gather(-1, labels).squeeze(-1)
    other_best = logits.scatter(-1, labels, float("-inf")).amax(-1)
    correct = logits.argmax(-1) == labels.squeeze(-1)
    loss = -log_probs.gather(-1, labels).squeeze(-1)
    return correct, (-loss).exp(), label_logit - other_best, loss


@torch.no_grad()
def evaluate(ensemble: Ensemble, x: Tensor, y: Tensor, examples_per_chunk: int = 65536) -> Evaluation:
    """Every model on every example of `x` (`[N, ...]`), in chunks of bounded memory."""
    chunk = max(1, examples_per_chunk // ensemble.size)
    parts = []
    for start in range(0, len(x), chunk):
        xb = x[start : start + chunk].to(ensemble.device, non_blocking=True)
        yb = y[start : start + chunk].to(ensemble.device, non_blocking=True)
        parts.append([t.cpu() for t in example_outcomes(ensemble(xb, shared=True), yb)])
    if not parts:
        empty = torch.empty(ensemble.size, 0)
        return Evaluation(empty.bool(), empty, empty, empty)
    return Evaluation(*(torch.cat(columns, dim=1) for columns in zip(*parts)))
