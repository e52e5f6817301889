"""Whether a file of a run is whole, the run's own, and built from its inputs as they are now."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core.runs.files import decode_provenance, decode_tensor_metadata, file_metadata, tensor_digest


class CorruptFileError(RuntimeError):
    """A file of a run folder is cut short, garbled, or another run's."""


def file_stamp(meta: dict[str, Any] | None) -> dict[str, str] | None:
    """What identifies one write of a file: its `table_id` (files written before ids: `created_at` or checksum),
    and the code revision that wrote it."""
    if meta is None:
        return None
    return {"id": meta.get("table_id") or meta.get("created_at") or meta.get("sha256") or "",
            "code_revision": meta.get("code_revision", "unknown")}


def changed_inputs(folder: Path, meta: dict[str, Any]) -> list[str]:
    """The inputs in `meta`'s `built_from` (names inside `folder`, or absolute paths) that were rewritten or
    removed after it was built."""
    recorded = meta.get("built_from") or {}
    return [name for name, stamp in recorded.items()
            if (file_stamp(file_metadata(folder / name)) or {}).get("id") != stamp.get("id")]


def whole_file_provenance(path: Path, run_id: str) -> dict[str, Any]:
    """Provenance of the table or safetensors file `path` of run `run_id`; CorruptFileError unless it is whole and
    that run's."""
    return read_tensor_file(path, run_id)[0] if path.suffix == ".safetensors" else table_provenance(path, run_id)


def read_tensor_file(path: Path, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, tensors) of a safetensors file of run `run_id`, checked as `RunStore.read_tensors` says."""
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            meta, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for a cut or garbled header
        raise CorruptFileError(f"{path} is unreadable ({type(err).__name__}: {err})") from err
    if meta.get("run_id") != run_id:
        raise CorruptFileError(f"{path} was written by run {meta.get('run_id')!r}, not {run_id!r}")
    if "sha256" in meta and meta["sha256"] != tensor_digest(tensors):  # files written before checksums have none
        raise CorruptFileError(f"{path} has tensors that do not match their checksum")
    return decode_tensor_metadata(meta), tensors


def table_provenance(path: Path, run_id: str) -> dict[str, Any]:
    """Provenance of `path`, or CorruptFileError unless it is a readable Parquet table of run `run_id` (its footer
    is written last)."""
    try:
        meta = decode_provenance(pq.read_schema(path).metadata)
    except (pa.ArrowException, OSError) as err:
        raise CorruptFileError(f"{path} is unreadable ({type(err).__name__}: {err})") from err
    if meta.get("run_id") != run_id:
        raise CorruptFileError(f"{path} was written by run {meta.get('run_id')!r}, not {run_id!r}")
    return meta
