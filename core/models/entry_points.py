"""Models from other packages: a distribution registers a factory `(input_shape, num_classes) -> nn.Module` under the
entry-point group `regularity.models`, and the entry point's name is the model name configs use.

Only installed entry points are ever loaded: a config, a CLI flag or a UI form names a model, never an import path,
so a form cannot make the worker import code that no installed package registered. Reading the names (package
metadata) imports neither torch nor the package; the package is imported when its model is built.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from core.models.names import ModelNameError, parse_registry_name

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


def entry_point_model(name: str) -> EntryPointModel | None:
    """The installed entry-point model `name`, or None for any other name (a registry name is never looked up)."""
    return None if parse_registry_name(name) is not None else installed_models().get(name)


def load_factory(name: str) -> Callable[..., Any]:
    """The factory of installed entry-point model `name` (imports its package); a ModelNameError for any other."""
    model = entry_point_model(name)
    if model is None:
        raise ModelNameError(f"{name!r} is no installed entry-point model of {GROUP}; "
                             f"{describe_installed(installed_models(), name)}")
    factory = model.entry_point.load()
    if not callable(factory):
        raise ModelNameError(f"model {name!r} of {model.provider} points at {model.entry_point.value}, which is not "
                             "callable; it must be a factory (input_shape, num_classes) -> nn.Module")
    return factory


def model_package(config: Any) -> dict[str, str]:
    """{"model_package": "name==version"} when `config.model` is an entry-point model, else {}: a run's input, so
    that the run id and every file's provenance name the package and version that built its networks."""
    name = getattr(config, "model", None)
    model = entry_point_model(name) if isinstance(name, str) else None
    return {"model_package": model.provider} if model else {}
