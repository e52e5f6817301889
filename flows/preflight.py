"""What `regularity run` settles before a server starts or a run folder exists (the dataset loads and fits, each run
a setting names exists), and what it says when the run is interrupted (where the run folder stands).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from flows.registry import FLOWS


def check_data(flow: str, config: Any, data_root: str | None) -> None:
    """Load the dataset `config` names and check the flow's models can train on it, before a server starts or a run
    folder exists: a missing or malformed file fails in one line. The dataset stays loaded in this process
    (`tasks.common.shared_dataset`), so the flow does not load it again. Flows without a dataset skip this."""
    from core.data.config import DatasetConfig
    from core.runs.files import dataset_cache
    from tasks.common import shared_dataset

    if isinstance(getattr(config, "dataset", None), DatasetConfig):
        FLOWS[flow].check_fits()(config, shared_dataset(config.dataset, dataset_cache(data_root)))


def resolve_run_references(config: Any, data_root: str | None) -> Any:
    """`config` with each setting that names a run (`RUN_REFERENCE`) given as its whole id: the start of one is taken
    (`cscore_run=cscore-8e05`), and a run that does not exist fails here, before a server starts."""
    from core.config import RUN_REFERENCE
    from core.runs.catalog import find_run

    resolved = {}
    for name, field in type(config).model_fields.items():
        given = getattr(config, name)
        if RUN_REFERENCE in field.metadata and given:
            resolved[name] = find_run(given, data_root, prefix=True).name
            if resolved[name] != given:
                print(f"{name}={given} is run {resolved[name]}", file=sys.stderr)
    return config.model_copy(update=resolved) if resolved else config


def run_folder_of(flow: str, config: Any, data_root: str | None) -> Path | None:
    """The newest run folder of `flow` whose config.json holds `config` (runtime aside), or None."""
    from core.config import canonical_json
    from core.runs.files import default_data_root

    wanted, found = canonical_json(config), []
    for path in Path(data_root or default_data_root()).glob(f"runs/{flow}/*/config.json"):
        try:  # validated as the run's own config was, so settings added since compare as their defaults
            if canonical_json(type(config).model_validate(json.loads(path.read_text())["config"])) == wanted:
                found.append(path.parent)
        except (OSError, ValueError, KeyError, TypeError):  # a folder being written, not a run's, or of older code
            continue
    return max(found, key=lambda folder: folder.stat().st_mtime, default=None)


def interrupted(flow: str, config: Any, data_root: str | None) -> str:
    """The one line a Ctrl-C of a run prints: what is written, and that the same command resumes from it."""
    from core.runs.catalog import run_status

    folder = run_folder_of(flow, config, data_root)
    if folder is None:
        return "interrupted before the run folder was made; run the same command again to start the run"
    return (f"interrupted: run {folder.name} is {run_status(folder)} in {folder}; run the same command again "
            "to resume it from there")
