"""Checkpoints of training in progress, inside a run folder: what a long training step (one seed's pretraining) needs
to go on from its last checkpoint after a stop, instead of from its start. Not results: no provenance, written with
`torch.save` (tensors, numbers, strings, and lists and dicts of them), read back with `weights_only=True`, and removed
once the result they lead to is written."""
from __future__ import annotations

import warnings
from typing import Any

from core.runs.files import atomic_write
from core.runs.store import RunStore

FOLDER = "checkpoints/"


def write_checkpoint(store: RunStore, name: str, state: dict[str, Any]) -> None:
    """Write `state` as the run's checkpoint `name` (under checkpoints/) atomically: a stop mid-write keeps the last."""
    import torch

    atomic_write(store.path(FOLDER + name), lambda f: torch.save({"run_id": store.run_id, "state": state}, f))


def read_checkpoint(store: RunStore, name: str) -> dict[str, Any] | None:
    """The state of checkpoint `name` on the CPU, or None when there is none; one that cannot be read, or is another
    run's, is ignored with a warning (the training starts over, and its next checkpoint replaces it)."""
    import torch

    path = store.root / FOLDER / name
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["run_id"] != store.run_id:
            raise ValueError(f"it is run {saved['run_id']}'s")
        return saved["state"]
    except Exception as err:  # noqa: BLE001 - whatever torch.load raises on a damaged file, the fix is to start over
        warnings.warn(f"checkpoint {path} is unusable ({err}); training starts over", RuntimeWarning, stacklevel=2)
        return None


def remove_checkpoint(store: RunStore, name: str) -> None:
    """Delete checkpoint `name` (its result is written)."""
    (store.root / FOLDER / name).unlink(missing_ok=True)
