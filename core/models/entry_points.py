"""Loading models from other packages: a distribution registers a factory `(input_shape, num_classes) -> nn.Module`
under the entry-point group `regularity.models`, and the entry point's name is the model name configs use (the names
are read from package metadata in core.models.names, which imports neither torch nor the package).

Only installed entry points are ever loaded: a config, a CLI flag or a UI form names a model, never an import path,
so a form cannot make the worker import code that no installed package registered; the package is imported when its
model is built.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.models.names import GROUP, EntryPointModel, ModelNameError, describe_installed, installed_models, \
    parse_registry_name


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
