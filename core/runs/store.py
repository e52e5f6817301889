"""Run folders: one run's config and files, written with provenance, checked, claimed and drawn from."""
from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import time
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from core.config import canonical_json, run_id
from core.models.entry_points import model_package
from core.runs.completeness import CorruptFileError, changed_inputs, file_stamp, read_tensor_file, whole_file_provenance
from core.runs.files import (META_PREFIX, atomic_write, code_revision, dataset_cache, file_metadata, hardware,
                             package_versions, read_provenance, read_table, resolve_root, tensor_digest)

TMP_ABANDONED_S = 3600  # a temp file untouched this long belongs to a write that a kill interrupted
FIGURES_RECORD = "figures/drawn_from.json"  # which tables, and which code, drew the figures listed in it
REPORT = "report.md"  # every flow writes its markdown report last: its presence means the run is complete
FINDINGS = "findings.parquet"  # every flow's checked claims, one row each (`core.findings`)


class RunConflictError(RuntimeError):
    """A run folder's config.json does not match the config that maps to its id."""


class RunStore:
    """The folder `<data root>/runs/<flow>/<run id>/` holding one run's config and tables."""

    def __init__(self, flow: str, config: BaseModel, data_root: Path, inputs: dict[str, str | None] | None = None):
        self.flow, self.config = flow, config
        given = {**(inputs or {}), **model_package(config)}  # a model from a package: that package and its version
        self.inputs = {name: value for name, value in given.items() if value is not None}
        self.run_id = run_id(flow, config, self.inputs)
        self.config_json = canonical_json(config)
        self.root = data_root / "runs" / flow / self.run_id

    @classmethod
    def open(cls, flow: str, config: BaseModel, data_root: Path | str | None = None,
             inputs: dict[str, str | None] | None = None) -> RunStore:
        """Create or reopen the run folder of `config` reading input files of fingerprints `inputs` (name ->
        `core.data.fingerprint` value; None = no file), checking its config.json. A config whose `model` is an
        installed entry-point model adds the input `model_package` (name==version of the package providing it)."""
        store = cls(flow, config, resolve_root(data_root), inputs)
        store.root.mkdir(parents=True, exist_ok=True)
        store._check_or_write_config()
        store._remove_abandoned_writes()
        runtime = getattr(config, "runtime", None)
        if runtime is not None and runtime.recompute:
            store.forget(runtime.recompute)
        return store

    @classmethod
    def folder(cls, flow: str, config: BaseModel, data_root: Path | str | None = None,
               inputs: dict[str, str | None] | None = None) -> Path:
        """The run folder that `open` would create or reopen, found without touching the disk."""
        return cls(flow, config, resolve_root(data_root), inputs).root

    @property
    def data_root(self) -> Path:
        """The data root this run folder lives under."""
        return self.root.parents[2]

    @property
    def cache_dir(self) -> Path:
        """Dataset caches shared by all runs under this data root."""
        return dataset_cache(self.data_root)

    def _check_or_write_config(self) -> None:
        """Write config.json once; afterwards it must describe the same config."""
        path = self.root / "config.json"
        if not path.exists():
            doc = {"flow": self.flow, "run_id": self.run_id,
                   # recompute is a one-off request, so running this config.json again does not repeat it
                   "config": self.config.model_dump(mode="json", exclude={"runtime": {"recompute"}}),
                   "inputs": self.inputs}
            atomic_write(path, lambda f: f.write(json.dumps(doc, indent=2).encode() + b"\n"))
            return
        try:
            doc = json.loads(path.read_text())
            # validated, so that settings added since (core.config.ADDED_SETTING) read as they do in the run id
            stored, inputs = canonical_json(type(self.config).model_validate(doc["config"])), doc.get("inputs", {})
        except (ValueError, KeyError, TypeError) as err:
            raise RunConflictError(f"{path} is unreadable ({err}); move it away to recreate") from err
        if inputs != self.inputs:
            raise RunConflictError(f"{path} was made from input files {inputs}, not {self.inputs} as run id "
                                   f"{self.run_id} says (edited file?); move the folder away to recreate it")
        if stored != self.config_json:
            raise RunConflictError(f"{path} holds a different config than run id {self.run_id} "
                                   f"maps to (hash collision or edited file):\n  stored: {stored}"
                                   f"\n  wanted: {self.config_json}")

    def _remove_abandoned_writes(self) -> None:
        """Delete temp files of writes interrupted by a kill: untouched for TMP_ABANDONED_S, so never a live write."""
        for tmp in self.root.rglob(".*.tmp"):
            with contextlib.suppress(OSError):  # another process may remove it first
                if time.time() - tmp.stat().st_mtime > TMP_ABANDONED_S:
                    tmp.unlink()

    def files(self) -> list[str]:
        """Relative paths of the run's tables, weights, figures and report (config.json, claims, temp files left out)."""
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()
                      and not p.name.startswith(".") and p.name != "config.json" and p.parts[len(self.root.parts)] != "claims")

    def forget(self, patterns: list[str]) -> list[str]:
        """Delete the files `patterns` name (see RuntimeConfig.recompute) and the report, so the next run of the flow
        computes them again and rebuilds whatever was built from them. Returns the deleted names."""
        files, current = self.files(), code_revision()
        chosen: set[str] = set()
        for pattern in patterns:
            if pattern == "all":
                matched = files
            elif pattern == "outdated":
                matched = [f for f in files if f.endswith((".parquet", ".safetensors"))
                           and (file_stamp(file_metadata(self.root / f)) or {}).get("code_revision") != current]
            else:
                matched = [f for f in files if fnmatch.fnmatchcase(f, pattern)]
                if not matched and files:
                    tables = [f for f in files if not f.startswith(("shards/", "weights/", "figures/"))]
                    raise ValueError(f"recompute: {pattern!r} names no file of run {self.run_id}; its files are "
                                     f"{', '.join(tables)} and shards/*, weights/*, figures/* (or say all or outdated)")
            chosen.update(matched)
        if not chosen:
            return []
        deleted = sorted(chosen | {REPORT})  # the run is not complete until they are back
        for name in deleted:
            (self.root / name).unlink(missing_ok=True)
        warnings.warn(f"recompute: deleted {len(deleted)} files of run {self.run_id} to compute them again: "
                      f"{', '.join(deleted[:8])}{' ...' if len(deleted) > 8 else ''}", RuntimeWarning, stacklevel=2)
        return deleted

    def _file(self, name: str) -> Path:
        """Path of `name` inside the run folder; names may not escape it."""
        path = Path(os.path.normpath(self.root / name))  # lexical: a symlinked data root or runs/ is fine
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"table name {name!r} must be a relative path inside the run folder")
        return path

    def path(self, name: str) -> Path:
        """Path of table `name` (e.g. `shards/train-00003.parquet`), parent dirs created."""
        path = self._file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _stamps(self, built_from: list[str] | None) -> str:
        """JSON of `built_from` (names inside the run, or absolute paths of other files) -> their stamps now."""
        stamps = {}
        for name in built_from or []:
            key = self._input_key(name)
            stamp = file_stamp(file_metadata(self._input(key)))
            if stamp is None:
                raise FileNotFoundError(f"{self._input(key)} is missing or unreadable, so nothing can be built from it")
            stamps[key] = stamp
        return json.dumps(stamps, sort_keys=True)

    def _input_key(self, name: str | Path) -> str:
        """How `built_from` records an input: a file of this run by its name; another run's table by its path
        from this run folder (`../../cscore/<run id>/cscores.parquet`), so a data root moved elsewhere keeps its
        records; any other file by its absolute path."""
        path = Path(name)
        if path.is_absolute() and path.is_relative_to(self.data_root):
            return os.path.relpath(path, self.root)
        return str(name)

    def _input(self, key: str) -> Path:
        """Path of an input recorded as `key` (read only, so it may lie outside the run folder)."""
        return Path(os.path.normpath(self.root / key))

    def _provenance(self, extra: dict[str, str] | None, built_from: list[str] | None) -> dict[bytes, bytes]:
        """Schema metadata entries for one table of this run."""
        meta = {"run_id": self.run_id, "flow": self.flow, "config": self.config_json,
                "inputs": json.dumps(self.inputs, sort_keys=True),
                "versions": json.dumps(package_versions(), sort_keys=True),
                "code_revision": code_revision(),
                "hardware": json.dumps(hardware(), sort_keys=True),
                "created_at": datetime.now(timezone.utc).isoformat(),
                "table_id": uuid.uuid4().hex, "built_from": self._stamps(built_from)}
        meta.update({k: str(v) for k, v in (extra or {}).items()})
        return {(META_PREFIX + k).encode(): v.encode() for k, v in meta.items()}

    def write_table(self, name: str, table: pd.DataFrame | pa.Table, extra_metadata: dict[str, str] | None = None,
                    built_from: list[str] | None = None) -> Path:
        """Write `table` atomically with provenance, recording which write of each file in `built_from` it was
        made from (so it is rebuilt once one of them is rewritten); returns its path."""
        if isinstance(table, pd.DataFrame):
            table = pa.Table.from_pandas(table)  # keeps the `pandas` metadata for round-trips
        table = table.replace_schema_metadata(self._with_provenance(table.schema, extra_metadata, built_from).metadata)
        path = self.path(name)
        atomic_write(path, lambda f: pq.write_table(table, f))
        return path

    def write_batches(self, name: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch],
                      extra_metadata: dict[str, str] | None = None, built_from: list[str] | None = None) -> Path:
        """Write `batches` of `schema` as one table, each batch a row group, atomically and with provenance as
        `write_table`; only one batch is held at a time, so `batches` may be a generator of any length."""
        schema = self._with_provenance(schema, extra_metadata, built_from)

        def write(f: BinaryIO) -> None:
            with pq.ParquetWriter(f, schema) as writer:
                for batch in batches:
                    writer.write_batch(batch)

        path = self.path(name)
        atomic_write(path, write)
        return path

    def _with_provenance(self, schema: pa.Schema, extra: dict[str, str] | None,
                         built_from: list[str] | None) -> pa.Schema:
        """`schema` with this run's provenance added to its metadata (see `_provenance`)."""
        return schema.with_metadata({**(schema.metadata or {}), **self._provenance(extra, built_from)})

    def write_tensors(self, name: str, tensors: dict[str, Any], built_from: list[str] | None = None) -> Path:
        """Write tensors as safetensors atomically, with the run id, config, a checksum of the tensors and the
        files they were made from (as `write_table`) as metadata."""
        from safetensors.torch import save

        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        data = save(tensors, metadata={"run_id": self.run_id, "config": self.config_json,
                                       "code_revision": code_revision(), "sha256": tensor_digest(tensors),
                                       "table_id": uuid.uuid4().hex, "built_from": self._stamps(built_from)})
        path = self.path(name)
        atomic_write(path, lambda f: f.write(data))
        return path

    def read_tensors(self, name: str) -> dict[str, Any]:
        """Tensors of a safetensors file of this run (on the CPU); CorruptFileError if the file is not whole,
        not this run's, or its tensors do not match their checksum."""
        return read_tensor_file(self._file(name), self.run_id)[1]

    def claim(self, name: str, on_wait: Callable[[dict], Any] | None = None):
        """Context manager holding this run's claim on computing output `name` (`core.runs.claims`): a second
        process running the same config waits for the first to finish it instead of computing it again."""
        from core.runs.claims import claim

        return claim(self._file(f"claims/{name.replace('/', '__')}.claim"), on_wait)

    def _is_current(self, name: str, meta: dict[str, Any], built_from: list[str] | None) -> bool:
        """Whether `name` (provenance `meta`) was built from `built_from` when given, and from its recorded inputs
        as they are now; if not, says why with a warning (the caller rebuilds it)."""
        recorded = sorted(meta.get("built_from") or {})
        if built_from is not None and recorded != sorted(map(self._input_key, built_from)):
            warnings.warn(f"{self._file(name)} was built from {len(recorded)} files, not from the {len(built_from)} "
                          "it is built from now; rebuilding it", RuntimeWarning, stacklevel=3)
            return False
        changed = changed_inputs(self.root, meta)
        if changed:
            warnings.warn(f"{self._file(name)} was built from {', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}"
                          " before they were rewritten (or removed); rebuilding it", RuntimeWarning, stacklevel=3)
        return not changed

    def is_complete(self, name: str, built_from: list[str] | None = None) -> bool:
        """True if `name` is a readable table (or safetensors file) of this run, built from `built_from` (when given)
        and from the files it recorded as they are now. Only a check: `remove_corrupt` deletes a bad file."""
        path = self._file(name)
        try:
            meta = whole_file_provenance(path, self.run_id) if path.exists() else None
        except CorruptFileError:
            return False
        return meta is not None and self._is_current(name, meta, built_from)

    def remove_corrupt(self, *names: str) -> list[str]:
        """Delete those of `names` that are cut short, garbled or another run's, with a warning, so that they are
        computed again; whole and missing files are left alone. Returns the deleted names."""
        deleted = []
        for name in names:
            path = self._file(name)
            try:
                if path.exists():
                    whole_file_provenance(path, self.run_id)
            except CorruptFileError as err:
                self._discard(path, err)
                deleted.append(name)
        return deleted

    def _discard(self, path: Path, err: CorruptFileError) -> None:
        """Delete the bad file `path`, saying why (`err`) and that it will be recomputed."""
        warnings.warn(f"{err}; deleting it, it will be recomputed", RuntimeWarning, stacklevel=3)
        path.unlink(missing_ok=True)

    def figures(self, draw: Callable[[], list[Path]]) -> list[Path]:
        """The run's figures: the files `draw()` writes, drawn from the tables at the run's top level. Unless this code
        drew them from those tables as they are now: then they are left as they are (a rerun of a finished run
        draws nothing, and matplotlib takes seconds a figure)."""
        record_path = self.root / FIGURES_RECORD
        drawn_from = {"code_revision": code_revision(),
                      "tables": json.loads(self._stamps(sorted(p.name for p in self.root.glob("*.parquet")
                                                               if p.name != FINDINGS)))}  # written after the figures
        try:
            record = json.loads(record_path.read_text())
            kept = [self.root / name for name in record["files"]]
            if record["drawn_from"] == drawn_from and all(p.is_file() for p in kept):
                return kept
        except (OSError, ValueError, KeyError, TypeError):  # none yet, or a garbled one: draw
            pass
        paths = draw()
        body = json.dumps({"drawn_from": drawn_from, "files": [p.relative_to(self.root).as_posix() for p in paths]},
                          indent=1, sort_keys=True).encode()
        record_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(record_path, lambda f: f.write(body))
        return paths

    def whole_tensors(self, name: str) -> dict[str, Any] | None:
        """The tensors of `name` if it is a whole safetensors file of this run, built from its recorded inputs as
        they are now, else None; a bad or foreign file is deleted. One read serves both the check and the use."""
        path = self._file(name)
        if not path.exists():
            return None
        try:
            meta, tensors = read_tensor_file(path, self.run_id)
        except CorruptFileError as err:
            self._discard(path, err)
            return None
        return tensors if self._is_current(name, meta, None) else None

    def revisions(self, names: list[str]) -> dict[str, list[str]]:
        """Code revision -> the files among `names` it wrote."""
        out: dict[str, list[str]] = {}
        for name in names:
            out.setdefault((file_stamp(file_metadata(self._file(name))) or {}).get("code_revision", "missing"), []).append(name)
        return out

    def read_table(self, name: str) -> pd.DataFrame:
        """Table `name` of this run as a DataFrame."""
        return read_table(self._file(name))

    def read_metadata(self, name: str) -> dict[str, Any]:
        """Decoded provenance of table `name` of this run."""
        return read_provenance(self._file(name))
