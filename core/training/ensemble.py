"""K models of one architecture with parameters stacked along a leading model axis.

Sequential models of Linear/Conv/elementwise/pooling layers run as batched matmuls and grouped
convolutions (the fast path); any other module (e.g. ResNet-18) runs through torch.func.vmap.

BatchNorm (affine, with running statistics and a momentum) runs as one F.batch_norm over all K*C channels,
updating the stacked `[K, C]` running statistics in place (core.models.stacked.stacked_batch_norm).

Another layer type joins the fast path by offering its own stacked implementation: a `stacked_layout`
attribute ("features": activations `[K, F, B]`, as linear layers take them; "channels": `[B, K*C, *spatial]`
channels-last, as convs take them) and `forward_stacked(x, params, k)`, which maps that layout to itself
given the layer's stacked `[K, ...]` parameters and buffers by their names within the layer (a bias the layer
does not have reads None; e.g. core.models.dct_sparse, core.models.subspaces). Buffers it updates in place stay updated.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn.modules.utils import _single

from core.models.networks import init_model
from core.models.stacked import stacked_batch_norm, stacked_conv, stacked_linear
from core.runtime import check_precision

_CONV = (nn.Conv1d, nn.Conv2d)  # run as one grouped conv for all K models
_BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d)  # one F.batch_norm over all K*C channels
_PARAMETER_FREE = (nn.ReLU, nn.Flatten, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.Identity)


def _own_stacked_layout(layer: nn.Module) -> str | None:
    """The layout a layer with its own `forward_stacked` runs on ("features" or "channels"), else None."""
    layout = getattr(layer, "stacked_layout", None) if callable(getattr(layer, "forward_stacked", None)) else None
    return layout if layout in ("features", "channels") else None


def _is_stackable(template: nn.Module) -> bool:
    """True when every layer of a Sequential has a batched-matmul / grouped-conv equivalent or its own stacked one."""
    if not isinstance(template, nn.Sequential):
        return False
    for layer in template:
        if isinstance(layer, _CONV):
            if layer.groups != 1 or layer.padding_mode != "zeros" or set(layer.dilation) != {1}:
                return False
        elif isinstance(layer, _BATCH_NORM):
            # momentum None averages over each model's own batch count; no affine or no running stats: rare enough
            if not (layer.affine and layer.track_running_stats and layer.momentum is not None):
                return False
        elif not (isinstance(layer, (nn.Linear, *_PARAMETER_FREE)) or _own_stacked_layout(layer)):
            return False
    return True


def training_path(template: nn.Module) -> str:
    """Where K copies of `template` train: "stacked" (batched matmuls, grouped convs) or "vmap" (torch.func.vmap)."""
    return "stacked" if _is_stackable(template) else "vmap"


def _execution_order(template: nn.Sequential) -> list[tuple[int, nn.Module]]:
    """(index, layer) pairs in run order: a ReLU directly before a MaxPool runs after it instead.

    ReLU is monotonic, so max and ReLU commute, values and gradients alike; pooling first lets the ReLU
    (and its backward) touch a tensor `kernel_size` times smaller.
    """
    layers = list(enumerate(template))
    for j in range(len(layers) - 1):
        if isinstance(layers[j][1], nn.ReLU) and isinstance(layers[j + 1][1], (nn.MaxPool1d, nn.MaxPool2d)):
            layers[j], layers[j + 1] = layers[j + 1], layers[j]
    return layers


def _to_channels(x: Tensor) -> Tensor:
    """`[K, B, C, *spatial]` -> `[B, K*C, *spatial]` stored channels-last (oneDNN's fast grouped-conv layout)."""
    k, batch, channels, *spatial = x.shape
    channels_last = x.permute(1, *range(3, x.dim()), 0, 2).contiguous()  # [B, *spatial, K, C]
    return channels_last.view(batch, *spatial, k * channels).movedim(-1, 1)


def _pool_channels_last(layer: nn.Module, x: Tensor) -> Tensor:
    """A pooling layer on `[B, K*C, *spatial]`; 1-D pooling runs as 2-D of height 1, keeping channels-last."""
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        return layer(x)
    size, stride, padding = (1, *_single(layer.kernel_size)), (1, *_single(layer.stride)), (0, *_single(layer.padding))
    if isinstance(layer, nn.MaxPool1d):
        out = F.max_pool2d(x.unsqueeze(2), size, stride, padding, (1, *_single(layer.dilation)), layer.ceil_mode)
    else:
        out = F.avg_pool2d(x.unsqueeze(2), size, stride, padding, layer.ceil_mode, layer.count_include_pad)
    return out.squeeze(2)


def _channels_to_features(x: Tensor, k: int) -> Tensor:
    """`[B, K*C, *spatial]` -> `[K, C*prod(spatial), B]`, each model's features in nn.Flatten's order."""
    return x.unflatten(1, (k, -1)).flatten(2).permute(1, 2, 0)


def _to_batch(x: Tensor, layout: str, k: int) -> Tensor:
    """Any of the forward's layouts back to `[K, B, ...]` (a view)."""
    if layout == "features":
        return x.transpose(1, 2)
    if layout == "channels":
        return x.unflatten(1, (k, -1)).transpose(0, 1)
    return x


def _to_layout(x: Tensor, layout: str, wanted: str, k: int) -> Tensor:
    """`x` from `layout` into `wanted`: "features" `[K, F, B]` or "channels" `[B, K*C, *spatial]` channels-last."""
    if layout == wanted:
        return x
    x = _to_batch(x, layout, k)
    return x.transpose(1, 2) if wanted == "features" else _to_channels(x)


class Ensemble:
    """K independent models whose parameters live in stacked `[K, ...]` leaf tensors."""

    def __init__(self, template: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor],
                 precision: str = "fp32"):
        self.template = template
        self.params = {name: p.detach().requires_grad_(True) for name, p in params.items()}
        self.buffers = buffers
        self.size = next(iter(self.params.values())).shape[0]
        self.stacked = _is_stackable(template)
        self.precision = precision  # bf16: forward under autocast; parameters, gradients and logits stay fp32

    @classmethod
    def from_models(cls, models: list[nn.Module]) -> Ensemble:
        """Stack K plain models of one architecture (their weights are copied)."""
        params, buffers = stack_module_state(models)
        return cls(copy.deepcopy(models[0]), params, buffers)

    @classmethod
    def init(cls, name: str, input_shape, num_classes: int, seeds: list[int], device="cpu",
             precision: str = "fp32") -> Ensemble:
        """K models of registry `name`, model k initialised exactly as `init_model(..., seeds[k])`."""
        check_precision(precision, torch.device(device))
        models = [init_model(name, tuple(input_shape), num_classes, s) for s in seeds]
        ensemble = cls.from_models(models).to(device)
        ensemble.precision = precision
        return ensemble

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
        """Logits `[K, B, C]` (float32) for inputs `[K, B, ...]`, or `[B, ...]` fed to every model when `shared`."""
        if self.precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return self._forward(x, shared, train).float()
        return self._forward(x, shared, train)

    def _forward(self, x: Tensor, shared: bool, train: bool) -> Tensor:
        """The forward pass of `__call__`, at the ambient precision."""
        self.template.train(train)
        if self.stacked:
            return self._forward_stacked(x.expand(self.size, *x.shape) if shared else x)
        run_one = lambda p, b, xi: functional_call(self.template, (p, b), (xi,))  # noqa: E731
        return vmap(run_one, in_dims=(0, 0, None if shared else 0), randomness="different")(
            self.params, self.buffers, x
        )

    def _forward_stacked(self, x: Tensor) -> Tensor:
        """Layer by layer, each layer kind in the activation layout its batched kernel runs fastest on."""
        k, batch = self.size, x.shape[1]
        layout = "batch"  # batch: [K, B, ...]; features: [K, F, B]; channels: [B, K*C, *spatial], channels-last
        fresh = False  # x is a linear layer's own output (not a view, not needed by its backward)
        for i, layer in _execution_order(self.template):
            weight, bias = self.params.get(f"{i}.weight"), self.params.get(f"{i}.bias")
            if isinstance(layer, nn.Linear):
                x = stacked_linear(_to_layout(x, layout, "features", k), weight, bias)  # after BatchNorm1d: channels
                layout, fresh = "features", True
            elif isinstance(layer, _CONV):
                x = stacked_conv(layer, x if layout == "channels" else _to_channels(x), weight, bias, k)
                layout, fresh = "channels", False  # 1-D results are views: in place, autograd would be slow
            elif isinstance(layer, _BATCH_NORM):
                x = stacked_batch_norm(layer, _to_layout(x, layout, "channels", k), weight, bias, self._state(i, layer))
                layout, fresh = "channels", False
            elif own_layout := _own_stacked_layout(layer):
                x = layer.forward_stacked(_to_layout(x, layout, own_layout, k), self._state(i, layer), k)
                # its output may be a view, or needed by its own backward, unless the layer says otherwise
                layout, fresh = own_layout, getattr(layer, "stacked_output_fresh", False)
            elif isinstance(layer, nn.Flatten) and layout == "channels":
                x, layout, fresh = _channels_to_features(x, k), "features", False
            elif isinstance(layer, nn.Flatten):
                x = x if layout == "features" else x.flatten(2)  # features are flat already
            elif isinstance(layer, nn.ReLU):
                # in place: one big allocation (and its page faults) fewer; not twice, as ReLU's backward reads it
                x, fresh = (x.relu_() if fresh else x.relu()), False
            elif isinstance(layer, nn.Identity):
                pass
            elif layout == "channels":
                x, fresh = _pool_channels_last(layer, x), False
            else:  # pooling on the input itself, or after a linear layer
                x = layer(_to_batch(x, layout, k).flatten(0, 1)).unflatten(0, (k, batch))
                layout, fresh = "batch", False
        return _to_batch(x, layout, k)

    def _state(self, i: int, layer: nn.Module) -> dict[str, Tensor | None]:
        """Layer i's stacked parameters and buffers by their names within the layer."""
        state: dict[str, Tensor | None] = {"bias": None}  # a bias=False layer has none (nn.Conv's bias is None too)
        state.update({name: self.params[f"{i}.{name}"] for name, _ in layer.named_parameters()})
        state.update({name: self.buffers[f"{i}.{name}"] for name, _ in layer.named_buffers()})
        return state

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
    el2n: Tensor  # |softmax - one-hot label|_2
    probability_sum: Tensor | None = None  # `[N, C]` float64, when `evaluate` was asked to sum some models' softmax

    def accuracy(self) -> Tensor:
        """`[K]` fraction correct."""
        return self.correct.float().mean(1)


def example_outcomes(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(correct, label_prob, margin, loss, el2n) of logits `[K, B, C]` against labels `[K, B]` or `[B]`."""
    labels = labels.expand(logits.shape[:2]).unsqueeze(-1)
    log_probs = logits.log_softmax(-1)
    label_logit = logits.gather(-1, labels).squeeze(-1)
    other_best = logits.scatter(-1, labels, float("-inf")).amax(-1)
    correct = logits.argmax(-1) == labels.squeeze(-1)
    loss = -log_probs.gather(-1, labels).squeeze(-1)
    label_prob = (-loss).exp()
    # |p - e_y|^2 = sum_c p_c^2 - 2 p_y + 1, without materialising the one-hot vectors
    el2n = (log_probs.exp().square().sum(-1) - 2 * label_prob + 1).clamp(min=0).sqrt()
    return correct, label_prob, label_logit - other_best, loss, el2n


def _example_chunks(ensemble: Ensemble, n: int, examples_per_chunk: int) -> list[slice]:
    """Slices of range(n) small enough that all models together see about `examples_per_chunk` examples each."""
    chunk = max(1, examples_per_chunk // ensemble.size)
    return [slice(start, start + chunk) for start in range(0, n, chunk)]


@torch.no_grad()
def evaluate(ensemble: Ensemble, x: Tensor, y: Tensor, examples_per_chunk: int = 65536,
             sum_probabilities_of: Tensor | None = None) -> Evaluation:
    """Every model on every example of `x` (`[N, ...]`), in chunks of bounded memory. With `sum_probabilities_of`
    (bool `[K, N]`), also each example's softmax probabilities summed over the models marked for it, from the same
    forward pass (e.g. the models that held it out)."""
    parts, sums = [], []
    for rows in _example_chunks(ensemble, len(x), examples_per_chunk):
        xb = x[rows].to(ensemble.device, non_blocking=True)
        yb = y[rows].to(ensemble.device, non_blocking=True)
        logits = ensemble(xb, shared=True)
        parts.append([t.cpu() for t in example_outcomes(logits, yb)])
        if sum_probabilities_of is not None:
            marked = sum_probabilities_of[:, rows].to(logits.device, torch.float64)
            sums.append(torch.einsum("kb,kbc->bc", marked, logits.softmax(-1).double()).cpu())
    if not parts:
        empty = torch.empty(ensemble.size, 0)
        return Evaluation(empty.bool(), empty, empty, empty, empty)
    evaluation = Evaluation(*(torch.cat(columns, dim=1) for columns in zip(*parts)))
    evaluation.probability_sum = torch.cat(sums) if sums else None
    return evaluation


@torch.no_grad()
def predict_probabilities(ensemble: Ensemble, x: Tensor, examples_per_chunk: int = 65536) -> Tensor:
    """`[K, N, C]` softmax probabilities of every model on every example of `x`, on the CPU."""
    parts = [ensemble(x[rows].to(ensemble.device, non_blocking=True), shared=True).softmax(-1).cpu()
             for rows in _example_chunks(ensemble, len(x), examples_per_chunk)]
    return torch.cat(parts, dim=1) if parts else torch.empty(ensemble.size, 0, 0)


def _last_linear(template: nn.Module) -> str:
    """The name of the last linear-like layer: an nn.Linear, or a layer whose stacked form takes features."""
    return [n for n, m in template.named_modules() if isinstance(m, nn.Linear) or _own_stacked_layout(m) == "features"][-1]


def _penultimate(template: nn.Module) -> nn.Module:
    """A copy of `template` whose last linear layer passes its input through (so it outputs features)."""
    features = copy.deepcopy(template)
    name = _last_linear(features)
    parent, _, leaf = name.rpartition(".")
    setattr(features.get_submodule(parent) if parent else features, leaf, nn.Identity())
    return features


@torch.no_grad()
def embed(ensemble: Ensemble, x: Tensor, examples_per_chunk: int = 65536) -> Tensor:
    """Penultimate-layer activations `[K, N, F]` (the input of each model's last linear layer), on the CPU."""
    features = _penultimate(ensemble.template).eval()
    last = _last_linear(ensemble.template)
    params = {n: p for n, p in ensemble.params.items() if not n.startswith(f"{last}.")}
    run_one = lambda p, b, xi: functional_call(features, (p, b), (xi,))  # noqa: E731
    parts = [vmap(run_one, in_dims=(0, 0, None))(params, ensemble.buffers, x[rows].to(ensemble.device)).cpu()
             for rows in _example_chunks(ensemble, len(x), examples_per_chunk)]
    return torch.cat(parts, dim=1) if parts else torch.empty(ensemble.size, 0, 0)
