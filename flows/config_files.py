"""Flow configs as files: read from YAML (or a run folder's config.json) with `--set` overrides and validated, an
unknown setting answered with the closest one; a flow's default config written as YAML with each setting's
description above it.
"""
from __future__ import annotations

import difflib
import textwrap
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A config file or override that cannot become a valid flow config."""


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Set `a.b.c=value` in nested `data`; the value is parsed as YAML (numbers, lists, null...)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set train.lr=0.1")
    *parents, leaf = key.split(".")
    if not all([*parents, leaf]):
        raise ConfigError(f"--set {assignment!r}: the key {key!r} has an empty name between dots; "
                          "write it like train.lr or dataset.n_train")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {part!r} is a value, not a group of settings")
        node = child
    try:
        node[leaf] = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {assignment!r}: the value is not valid YAML ({err.__class__.__name__}); "
                          "quote lists and strings, e.g. --set 'ratios=[0.1, 0.5]'") from err


def load_config(config_class: type, path: str | None, overrides: list[str], flow: str | None = None) -> Any:
    """The flow config from an optional YAML file (or the config.json of a run of `flow`) plus `--set` overrides,
    validated."""
    data: Any = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))  # YAML is UTF-8 text
        except UnicodeDecodeError as err:
            raise ConfigError(f"cannot read config {path}: it is not UTF-8 text ({err.reason} at byte "
                              f"{err.start}); give a YAML file") from err
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read config {path}: {err}") from err
        if data is None:  # an empty file, only comments, or `null`: most likely not what was meant
            raise ConfigError(f"config {path} is empty (no settings); write the settings to change, e.g. "
                              "`regularity config FLOW > FILE`, or leave out --config for the defaults")
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a mapping of settings, not {type(data).__name__}")
        if {"flow", "run_id", "config"} <= set(data):  # a run folder's config.json: run that run again
            if flow is not None and data["flow"] != flow:
                raise ConfigError(f"config {path} is the config.json of a {data['flow']} run, not of a {flow} run")
            data = data["config"]
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        return config_class.model_validate(data)
    except ValidationError as err:
        lines = [f"  {'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']} (got {e.get('input')!r})"
                 f"{did_you_mean(config_class, e['loc']) if e['type'] == 'extra_forbidden' else ''}"
                 for e in err.errors()]
        raise ConfigError("invalid config:\n" + "\n".join(lines)) from err


def group_class(config_class: type, path: tuple) -> type | None:
    """The config class of the group at `path` (field names from the top), or None where no group is."""
    for name in path:
        field = config_class.model_fields.get(name) if isinstance(config_class, type) else None
        if field is None:
            return None
        groups = [t for t in (field.annotation, *typing.get_args(field.annotation))
                  if isinstance(t, type) and issubclass(t, BaseModel)]  # a group, or an optional one
        if not groups:
            return None
        config_class = groups[0]
    return config_class


def did_you_mean(config_class: type, loc: tuple) -> str:
    """`; did you mean train.epochs?` for an unknown setting `loc` close to a field of its group, else ''."""
    *parents, unknown = loc
    group = group_class(config_class, tuple(parents))
    close = difflib.get_close_matches(str(unknown), list(group.model_fields), n=1) if group else []
    return f"; did you mean {'.'.join(map(str, [*parents, close[0]]))}?" if close else ""


def commented_yaml(config: BaseModel, indent: int = 0) -> list[str]:
    """The YAML lines of `config`, each field's description as a comment above its key, groups nested below theirs."""
    pad, values, lines = " " * indent, config.model_dump(mode="json"), []
    for name, field in type(config).model_fields.items():
        lines += [f"{pad}# {line}" for line in textwrap.wrap(field.description or "", 118 - indent)]
        group = getattr(config, name)
        if isinstance(group, BaseModel) and type(group).model_fields:
            lines += [f"{pad}{name}:", *commented_yaml(group, indent + 2)]
        else:
            lines += [pad + line for line in yaml.safe_dump({name: values[name]}, sort_keys=False).splitlines()]
    return lines


SHIPPED_CONFIGS = Path(__file__).parent / "configs"


def run_commands(runs: list[tuple[str, str]], data_root: Path | str | None = None) -> dict[str, str]:
    """The command that gives each (flow, run id) under the data root: `regularity run FLOW` for a flow's default
    config, with `--config flows/configs/NAME.yaml` for a shipped config, else with the run folder's config.json. A
    run id also hashes the fingerprints of the files a run read (its config.json's `inputs`), so each is checked
    with those."""
    import json

    from core.config import run_id
    from core.runs.files import resolve_root

    root, commands, known = resolve_root(data_root), {}, {}
    for flow, run in runs:
        config_file = root / "runs" / flow / run / "config.json"
        if flow not in known:
            known[flow] = shipped_configs(flow)
        inputs = json.loads(config_file.read_text()).get("inputs")
        commands[run] = next((command for config, command in known[flow] if run_id(flow, config, inputs) == run),
                             f"regularity run {flow} --config {config_file}")
    return commands


def shipped_configs(flow: str) -> list[tuple[Any, str]]:
    """The flow's default config and every shipped config of it, each with the command that runs it."""
    from flows.registry import FLOWS

    if flow not in FLOWS:
        return []
    config_class = FLOWS[flow].config_class()
    configs = [(config_class(), f"regularity run {flow}")]
    for path in sorted(SHIPPED_CONFIGS.glob("*.yaml")):
        try:  # a shipped config is valid for one flow only; the others refuse its settings
            configs.append((load_config(config_class, str(path), [], flow),
                            f"regularity run {flow} --config flows/configs/{path.name}"))
        except (ConfigError, ValueError):
            continue
    return configs
