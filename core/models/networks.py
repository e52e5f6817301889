"""Model registry: names carry their grid coordinates (width, depth) so grids can sweep them."""
from __future__ import annotations

import contextlib
import math
import re
import threading
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

MODEL_PATTERNS = {
    "mlp_w{width}_d{depth}": "MLP with `depth` hidden layers of `width` units (any input)",
    "mlp_h{w1}-{w2}-...": "MLP with hidden layers of these widths, e.g. mlp_h512-256 (the C-score paper's MNIST MLP)",
    "cnn1d_w{width}_d{depth}": "1-D CNN with `depth` conv layers of `width` channels (MNIST-1D, [C, L] inputs)",
    "cnn_w{width}_d{depth}": "2-D CNN with `depth` 3x3 conv layers of `width` channels (images, [C, H, W])",
    "cnn1d_bn_w{width}_d{depth}": "cnn1d with BatchNorm after each (bias-free) conv, before its ReLU ([C, L] inputs)",
    "cnn_bn_w{width}_d{depth}": "cnn with BatchNorm after each (bias-free) conv, before its ReLU ([C, H, W] inputs)",
    "lenet_300_100": "LeNet-300-100 fully connected network (any input)",
    "deq_w{width}": "deep equilibrium classifier: z* = tanh(W z* + U x + b) of `width` units, then linear (any input)",
    "resnet18": "torchvision ResNet-18 (images; meant for GPU users)",
    "dct_{any above but resnet18}": "every Linear/Conv a DCT+Sparse layer (Price & Tanner 2021), e.g. dct_mlp_w64_d2",
    "subspace{m}_{any above but resnet18}": "every Linear/Conv/BatchNorm holds m = 2..9 endpoints (Wortsman et al. "
                                            "2021), e.g. subspace2_mlp_w64_d2",
}
# the families the stacked fast path runs (dct_, subspace)
DCT_FAMILIES = ("mlp", "mlp_h", "lenet_300_100", "cnn1d", "cnn", "cnn1d_bn", "cnn_bn")


class ModelNameError(ValueError):
    """An unknown or malformed model name."""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model name: its family and, where it has them, width and depth."""

    name: str
    family: str
    width: int | None = None
    depth: int | None = None
    hidden: tuple[int, ...] = ()  # hidden widths of an mlp_h network
    dct_plus_sparse: bool = False  # a dct_ name: every Linear/Conv a DCT+Sparse layer
    endpoints: int = 0  # a subspace{m}_ name: every Linear/Conv/BatchNorm a subspace layer of m endpoints


_GRID_NAME = re.compile(r"^(mlp|cnn1d|cnn|cnn1d_bn|cnn_bn)_w(\d+)_d(\d+)$")
_HIDDEN_NAME = re.compile(r"^mlp_h(\d+(?:-\d+)*)$")
_DEQ_NAME = re.compile(r"^deq_w(\d+)$")
_SUBSPACE_PREFIX = re.compile(r"^subspace([2-9])_")


def _parse_plain_name(name: str) -> ModelSpec | None:
    """The spec of a registry name without the dct_ prefix, or None."""
    if name in ("lenet_300_100", "resnet18"):
        return ModelSpec(name, name)
    match = _GRID_NAME.match(name)
    if match and int(match[2]) >= 1 and int(match[3]) >= 1:
        return ModelSpec(name, match[1], int(match[2]), int(match[3]))
    match = _DEQ_NAME.match(name)
    if match and int(match[1]) >= 1:
        return ModelSpec(name, "deq", int(match[1]))
    match = _HIDDEN_NAME.match(name)
    if match and all(int(w) >= 1 for w in match[1].split("-")):
        return ModelSpec(name, "mlp_h", hidden=tuple(int(w) for w in match[1].split("-")))
    return None


def parse_model_name(name: str) -> ModelSpec:
    """Parse a registry name, or fail with the list of valid patterns."""
    subspace = _SUBSPACE_PREFIX.match(name)
    rest = name[subspace.end():] if subspace else name
    plain = rest.removeprefix("dct_")
    spec = _parse_plain_name(plain)
    if spec is not None and plain == name:
        return spec
    if spec is not None and spec.family in DCT_FAMILIES and (subspace is None) != (plain == rest):  # one prefix
        return replace(spec, name=name, dct_plus_sparse=plain != rest, endpoints=int(subspace[1]) if subspace else 0)
    valid = "\n".join(f"  {pattern:30s} {text}" for pattern, text in MODEL_PATTERNS.items())
    raise ModelNameError(
        f"unknown model {name!r}; width and depth must be positive integers. Valid names:\n{valid}\n"
        "e.g. mlp_w64_d2, cnn1d_w32_d3, cnn_w16_d4, dct_mlp_w64_d2"
    )


def _mlp(in_features: int, hidden: list[int], num_classes: int) -> nn.Sequential:
    """Flatten, then Linear+ReLU per hidden size, then a linear classifier."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, num_classes))


def _cnn(input_shape: tuple[int, ...], width: int, depth: int, num_classes: int,
         batch_norm: bool = False) -> nn.Sequential:
    """Conv+ReLU layers (halving the resolution after each of the first three while >= 4), then linear; with
    `batch_norm`, Conv+BatchNorm+ReLU, the conv without a bias (BatchNorm's own bias replaces it)."""
    one_d = len(input_shape) == 2
    conv, pool = (nn.Conv1d, nn.MaxPool1d) if one_d else (nn.Conv2d, nn.MaxPool2d)
    norm = nn.BatchNorm1d if one_d else nn.BatchNorm2d
    channels, size = input_shape[0], list(input_shape[1:])
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(conv(channels, width, kernel_size=3, padding=1, bias=not batch_norm))
        layers += [norm(width), nn.ReLU()] if batch_norm else [nn.ReLU()]
        channels = width
        if i < 3 and min(size) >= 4:
            layers.append(pool(2))
            size = [s // 2 for s in size]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * math.prod(size), num_classes))


def _deq(in_features: int, width: int, num_classes: int) -> nn.Sequential:
    """Flatten, one DEQ block of `width` units (core.models.deq.DEQLinear), then a linear classifier."""
    from core.models.deq import DEQLinear  # not at the top: core.models.deq needs core.training.ensemble, which imports us

    return nn.Sequential(nn.Flatten(), DEQLinear(in_features, width), nn.Linear(width, num_classes))


def _resnet18(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with its stem adapted to the number of input channels."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    if input_shape[0] != 3:
        model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialised plain PyTorch model (uses the global torch RNG)."""
    spec = parse_model_name(name)
    flat = math.prod(input_shape)
    builders: dict[str, Callable[[], nn.Module]] = {
        "mlp": lambda: _mlp(flat, [spec.width] * (spec.depth or 0), num_classes),
        "mlp_h": lambda: _mlp(flat, list(spec.hidden), num_classes),
        "lenet_300_100": lambda: _mlp(flat, [300, 100], num_classes),
        "cnn1d": lambda: _cnn(input_shape, spec.width, spec.depth, num_classes),
        "cnn": lambda: _cnn(input_shape, spec.width, spec.depth, num_classes),
        "cnn1d_bn": lambda: _cnn(input_shape, spec.width, spec.depth, num_classes, batch_norm=True),
        "cnn_bn": lambda: _cnn(input_shape, spec.width, spec.depth, num_classes, batch_norm=True),
        "resnet18": lambda: _resnet18(input_shape, num_classes),
        "deq": lambda: _deq(flat, spec.width, num_classes),
    }
    rank = {"cnn1d": 2, "cnn1d_bn": 2, "cnn": 3, "cnn_bn": 3, "resnet18": 3}.get(spec.family)
    if rank is not None and len(input_shape) != rank:
        kind = "[C, L] sequences" if rank == 2 else "[C, H, W] images"
        raise ModelNameError(f"model {name!r} needs {kind}, but the dataset's examples have shape {list(input_shape)}")
    if spec.dct_plus_sparse:
        from core.models.dct_sparse import dct_plus_sparse  # not at the top: it needs core.training.ensemble, which imports us

        return dct_plus_sparse(builders[spec.family]())  # the plain network's initial weights become S
    if spec.endpoints:
        from core.models.subspaces import subspace_network  # not at the top: see dct_plus_sparse

        return subspace_network(builders[spec.family](), spec.endpoints)  # fresh endpoints after the plain init
    return builders[spec.family]()


_GLOBAL_RNG = threading.Lock()  # nn layers draw their init from torch's global generator


def init_model(name: str, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """The model `name` initialised from `seed`, independent of the global RNG state, device and other threads."""
    with seeded_init(seed):
        return build_model(name, input_shape, num_classes)


@contextlib.contextmanager
def seeded_init(seed: int):
    """Inside, torch's global generator starts from `seed`, one thread at a time; its state is restored after."""
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def prunable_parameters(model: nn.Module) -> list[str]:
    """Names of weights of linear and conv layers, DCT+Sparse layers' S included, in layer order (biases, the
    DCT+Sparse alphas and normalisation stay dense)."""
    from core.models.dct_sparse import DCTPlusSparseConv, DCTPlusSparseLinear  # not at the top: see build_model

    return [
        f"{module_name}.weight" if module_name else "weight"
        for module_name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, DCTPlusSparseLinear, DCTPlusSparseConv))
    ]
