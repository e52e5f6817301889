"""Model names: a registry name carries its family and grid coordinates (width, depth), parsed without torch so that
configs validate names cheaply (`regularity config` never loads torch); any other valid name is an installed
package's entry point, found here in package metadata without importing the package (core.models.entry_points
loads it)."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from importlib import metadata
from typing import Literal

MODEL_PATTERNS = {
    "mlp_w{width}_d{depth}": "MLP with `depth` hidden layers of `width` units (any input)",
    "mlp_h{w1}-{w2}-...": "MLP with hidden layers of these widths, e.g. mlp_h512-256 (the C-score paper's MNIST MLP)",
    "cnn1d_w{width}_d{depth}": "1-D CNN with `depth` conv layers of `width` channels (MNIST-1D, [C, L] inputs)",
    "cnn_w{width}_d{depth}": "2-D CNN with `depth` 3x3 conv layers of `width` channels (images, [C, H, W])",
    "cnn1d_bn_w{width}_d{depth}": "cnn1d with BatchNorm after each (bias-free) conv, before its ReLU ([C, L] inputs)",
    "cnn_bn_w{width}_d{depth}": "cnn with BatchNorm after each (bias-free) conv, before its ReLU ([C, H, W] inputs)",
    "lenet_300_100": "LeNet-300-100 fully connected network (any input)",
    "deq_w{width}": "deep equilibrium classifier: z* = tanh(W z* + U x + b) of `width` units, then linear (any input)",
    "deq_conv_c{channels}": "convolutional DEQ: z* = GroupNorm(relu(conv(z*) + conv(x))) of `channels` (a multiple "
                            "of 4), then global average pooling and linear ([C, H, W] images)",
    "unrolled{L}_w{width}": "the DEQ's cell run L times from z = 0, weights tied, plain backprop, then linear",
    "explicit{L}_w{width}": "L tanh layers of `width` units, each its own W and b (U shared), then linear",
    "resnet18": "torchvision ResNet-18 (images; meant for GPU users)",
    "dct_{any above but resnet18}": "every Linear/Conv a DCT+Sparse layer (Price & Tanner 2021), e.g. dct_mlp_w64_d2",
    "subspace{m}_{any above but resnet18}": "every Linear/Conv/BatchNorm holds m = 2..9 endpoints (Wortsman et al. "
                                            "2021), e.g. subspace2_mlp_w64_d2",
    "{your model}": "the name of an installed package's `regularity.models` entry point (README: Your own model)",
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
    package: str = ""  # family "entry_point": the installed package that provides it, as name==version


_GRID_NAME = re.compile(r"^(mlp|cnn1d|cnn|cnn1d_bn|cnn_bn)_w(\d+)_d(\d+)$")
_HIDDEN_NAME = re.compile(r"^mlp_h(\d+(?:-\d+)*)$")
_DEQ_NAME = re.compile(r"^deq_w(\d+)$")
_DEQ_CONV_NAME = re.compile(r"^deq_conv_c(\d+)$")  # width: the channels, a multiple of 4 (GroupNorm's groups)
_UNROLLED_NAME = re.compile(r"^(unrolled|explicit)(\d+)_w(\d+)$")  # the DEQ's explicit baselines: L, width
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
    match = _DEQ_CONV_NAME.match(name)
    if match and int(match[1]) >= 4 and int(match[1]) % 4 == 0:
        return ModelSpec(name, "deq_conv", int(match[1]))
    match = _UNROLLED_NAME.match(name)
    if match and int(match[2]) >= 1 and int(match[3]) >= 1:
        return ModelSpec(name, match[1], int(match[3]), int(match[2]))
    match = _HIDDEN_NAME.match(name)
    if match and all(int(w) >= 1 for w in match[1].split("-")):
        return ModelSpec(name, "mlp_h", hidden=tuple(int(w) for w in match[1].split("-")))
    return None


def parse_registry_name(name: str) -> ModelSpec | None:
    """The spec of a registry name (with at most one dct_ or subspace{m}_ prefix), or None."""
    subspace = _SUBSPACE_PREFIX.match(name)
    rest = name[subspace.end():] if subspace else name
    plain = rest.removeprefix("dct_")
    spec = _parse_plain_name(plain)
    if spec is not None and plain == name:
        return spec
    if spec is not None and spec.family in DCT_FAMILIES and (subspace is None) != (plain == rest):  # one prefix
        return replace(spec, name=name, dct_plus_sparse=plain != rest, endpoints=int(subspace[1]) if subspace else 0)
    return None


# Models of installed packages: names read from package metadata, importing neither torch nor the package
GROUP = "regularity.models"
PLAIN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")  # no ':' or '/': a model name never reads as an import path
HOW_TO = "README: Your own model"


@dataclass(frozen=True)
class EntryPointModel:
    """One model an installed package registers: its name in configs, the package, and where its factory is."""

    name: str
    package: str
    version: str
    entry_point: metadata.EntryPoint

    @property
    def provider(self) -> str:
        """The package and its version, as `name==version` (part of the run id)."""
        return f"{self.package}=={self.version}"


def installed_models() -> dict[str, EntryPointModel]:
    """Every model of the group by name; a ModelNameError naming the packages when a name is not a plain name, reads
    as a registry name, or is registered twice."""
    models: dict[str, EntryPointModel] = {}
    for entry in metadata.entry_points(group=GROUP):
        model = EntryPointModel(entry.name, entry.dist.name, entry.dist.version, entry)
        if not PLAIN_NAME.fullmatch(entry.name):
            raise ModelNameError(f"{model.provider} registers model {entry.name!r} under {GROUP}: a model name is a "
                                 "letter, then letters, digits, '_', '.' or '-'; rename it in that package")
        if parse_registry_name(entry.name) is not None:
            raise ModelNameError(f"{model.provider} registers model {entry.name!r} under {GROUP}, which is a registry "
                                 "name of regularity; rename it in that package")
        if entry.name in models:
            raise ModelNameError(f"model {entry.name!r} is registered under {GROUP} by two packages, "
                                 f"{models[entry.name].provider} and {model.provider}; uninstall or rename one")
        models[entry.name] = model
    return models


def describe_installed(installed: dict[str, EntryPointModel], name: str = "") -> str:
    """One line for an unknown model's error: the installed entry-point models, and why an import path is no name."""
    found = ", ".join(f"{m.name} ({m.provider})" for m in installed.values())
    line = (f"installed models of the entry-point group {GROUP}: {found}" if installed
            else f"no installed package registers a model under the entry-point group {GROUP} ({HOW_TO})")
    if ":" in name or "/" in name:
        line += (f"; {name!r} is not a model name: a config never names code to import. Register the factory as an "
                 f"entry point of {GROUP} in your package, install it, and name the entry point ({HOW_TO})")
    return line


def parse_model_name(name: str) -> ModelSpec:
    """Parse a registry name or an installed entry-point model's name (without importing it), or fail with the list
    of valid patterns and of the installed entry-point models."""
    spec = parse_registry_name(name)
    if spec is not None:
        return spec
    installed = installed_models()
    if name in installed:
        return ModelSpec(name, "entry_point", package=installed[name].provider)
    valid = "\n".join(f"  {pattern:30s} {text}" for pattern, text in MODEL_PATTERNS.items())
    raise ModelNameError(
        f"unknown model {name!r}; width and depth must be positive integers. Valid names:\n{valid}\n"
        f"e.g. mlp_w64_d2, cnn1d_w32_d3, cnn_w16_d4, dct_mlp_w64_d2\n{describe_installed(installed, name)}"
    )


# The subspaces a subspace{m}_ network can train (Wortsman et al.), by the name the subspaces flow takes
Kind = Literal["line", "curve", "simplex"]
METHODS: dict[str, tuple[Kind, int, bool]] = {  # name: (kind, endpoints, layerwise)
    "line": ("line", 2, False),
    "layerwise_line": ("line", 2, True),
    "curve": ("curve", 3, False),
    "layerwise_curve": ("curve", 3, True),
    "simplex3": ("simplex", 3, False),
    "layerwise_simplex3": ("simplex", 3, True),
    "simplex4": ("simplex", 4, False),
    "layerwise_simplex4": ("simplex", 4, True),
}
STANDARD = "standard"  # the baseline: plain networks, standard training, as many epochs
SWA = "swa"  # the plain network trained as standard, its weights averaged over the last epochs (Izmailov et al. 2018)
