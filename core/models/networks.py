"""Model registry: names carry their grid coordinates (width, depth) so grids can sweep them."""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Callable

import torch
from torch import nn

from core.models.dct_sparse import DCTPlusSparseConv, DCTPlusSparseLinear, dct_plus_sparse
from core.models.deq import DEQLinear
from core.models.deq_conv import DEQConv2d, injection_stride
from core.models.entry_points import load_factory
from core.models.names import ModelNameError, parse_model_name
from core.models.subspaces import subspace_network
from core.models.unrolled import UnrolledTanh


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
    return nn.Sequential(nn.Flatten(), DEQLinear(in_features, width), nn.Linear(width, num_classes))


def _deq_conv(input_shape: tuple[int, ...], channels: int, num_classes: int) -> nn.Sequential:
    """One conv DEQ block of `channels` (core.models.deq_conv.DEQConv2d), global average pooling, then linear."""
    stride = injection_stride(min(input_shape[1:]))
    side = [(s + 1) // 2 if stride == 2 else s for s in input_shape[1:]]  # a 3x3 conv of padding 1 and this stride
    return nn.Sequential(DEQConv2d(input_shape[0], channels, stride), nn.AvgPool2d(tuple(side)), nn.Flatten(),
                         nn.Linear(channels, num_classes))


def _unrolled(in_features: int, width: int, depth: int, tied: bool, num_classes: int) -> nn.Sequential:
    """Flatten, the DEQ's tanh cell run `depth` times (core.models.unrolled.UnrolledTanh), then a linear classifier."""
    return nn.Sequential(nn.Flatten(), UnrolledTanh(in_features, width, depth, tied), nn.Linear(width, num_classes))


def _resnet18(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with its stem adapted to the number of input channels."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    if input_shape[0] != 3:
        model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def _entry_point_model(name: str, provider: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The network of installed entry-point model `name`, checked: an nn.Module giving `[B, num_classes]` logits."""
    factory = load_factory(name)
    try:
        model = factory(tuple(input_shape), num_classes)
    except Exception as err:  # the user's code: say whose, and for which shape
        raise ModelNameError(f"model {name!r} of {provider}: its factory failed for input_shape {tuple(input_shape)}, "
                             f"num_classes {num_classes} ({type(err).__name__}: {err})") from err
    if not isinstance(model, nn.Module):
        raise ModelNameError(f"model {name!r} of {provider}: its factory returned a {type(model).__name__}, not an "
                             "nn.Module")
    _check_logits(model, f"model {name!r} of {provider}", input_shape, num_classes)
    return model


def _check_logits(model: nn.Module, what: str, input_shape: tuple[int, ...], num_classes: int) -> None:
    """A ModelNameError unless `model` maps a batch of 2 zero examples to logits `[2, num_classes]`."""
    training, dummy = model.training, torch.zeros(2, *input_shape)
    try:  # in eval mode: BatchNorm statistics stay as initialised
        with torch.no_grad():
            out = model.eval()(dummy)
    except Exception as err:  # the user's code: any error means it cannot take this input
        raise ModelNameError(f"{what} fails on examples of shape {list(input_shape)} "
                             f"({type(err).__name__}: {err})") from err
    finally:
        model.train(training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelNameError(f"{what} gives {got} for a batch of 2 examples of shape {list(input_shape)}; it must "
                             f"give logits [2, {num_classes}]")


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialised plain PyTorch model (uses the global torch RNG)."""
    spec = parse_model_name(name)
    if spec.family == "entry_point":
        return _entry_point_model(name, spec.package, input_shape, num_classes)
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
        "deq_conv": lambda: _deq_conv(input_shape, spec.width, num_classes),
        "unrolled": lambda: _unrolled(flat, spec.width, spec.depth, True, num_classes),
        "explicit": lambda: _unrolled(flat, spec.width, spec.depth, False, num_classes),
    }
    rank = {"cnn1d": 2, "cnn1d_bn": 2, "cnn": 3, "cnn_bn": 3, "resnet18": 3, "deq_conv": 3}.get(spec.family)
    if rank is not None and len(input_shape) != rank:
        kind = "[C, L] sequences" if rank == 2 else "[C, H, W] images"
        raise ModelNameError(f"model {name!r} needs {kind}, but the dataset's examples have shape {list(input_shape)}")
    if spec.dct_plus_sparse:
        return dct_plus_sparse(builders[spec.family]())  # the plain network's initial weights become S
    if spec.endpoints:
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
    return [
        f"{module_name}.weight" if module_name else "weight"
        for module_name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, DCTPlusSparseLinear, DCTPlusSparseConv))
    ]
