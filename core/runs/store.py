"""Run folders, atomic Parquet writes with provenance, and dense per-model list columns."""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import json
import os
import platform
import re
import subprocess
import time
import uuid
import warnings
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from core.config import canonical_json, run_id

DATA_ROOT_ENV = "REGULARITY_DATA_ROOT"
RUN_ID = re.compile(r"[a-z_]+-[0-9a-f]{12}")
RUN_PREFIX = re.compile(r"[a-z_]+(-[0-9a-f]{0,12})?")  # the start of a run id, flow name first
META_PREFIX = "regularity."
REPO_ROOT = Path(__file__).resolve().parents[2]  # core/runs/store.py
TMP_ABANDONED_S = 3600  # a temp file untouched this long belongs to a write that a kill interrupted
_JSON_FIELDS = ("config", "inputs", "versions", "hardware", "built_from")
_PACKAGES = ("torch", "numpy", "pandas", "pyarrow", "scikit-learn", "scipy", "prefect")


class RunConflictError(RuntimeError):
    """A run folder's config.json does not match the config that maps to its id."""


class CorruptFileError(RuntimeError):
    """A file of a run folder is cut short, garbled, or another run's."""


def tensor_digest(tensors: dict[str, Any]) -> str:
    """Hex SHA-256 over the names, dtypes, shapes and bytes of `tensors` (CPU, contiguous), in name order."""
    import torch  # deferred: only writers and readers of weights pay for the import

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def default_data_root() -> Path:
    """`$REGULARITY_DATA_ROOT` if set, else `<repo>/data`, as an absolute path."""
    env = os.environ.get(DATA_ROOT_ENV)
    return Path(env).expanduser().resolve() if env else (REPO_ROOT / "data").resolve()


def _resolve_root(data_root: Path | str | None) -> Path:
    """Absolute data root: process workers run from temporary directories."""
    return default_data_root() if data_root is None else Path(data_root).expanduser().resolve()


def dataset_cache(data_root: Path | str | None = None) -> Path:
    """`<data root>/cache`: generated or decompressed datasets shared by all runs."""
    return _resolve_root(data_root) / "cache"


@functools.cache
def _versions() -> dict[str, str | None]:
    """Versions of python and the key packages, read without importing them."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.cache
def code_revision() -> str:
    """Git commit of the repo; with local changes `+dirty.<8 hex>` of what changed (so two different edits are two
    revisions); `unknown` without git or commits."""
    def git(*args: str) -> bytes:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, check=True, timeout=30).stdout
    try:
        commit = git("rev-parse", "HEAD").decode().strip()
        if not git("status", "--porcelain"):
            return commit
        changes = hashlib.sha256(git("diff", "HEAD", "--binary"))
        for name in sorted(git("ls-files", "--others", "--exclude-standard", "-z").split(b"\0")):
            if name:  # untracked source changes results too; named with its size and time, not read
                stat = (REPO_ROOT / os.fsdecode(name)).stat()
                changes.update(name + f"|{stat.st_size}|{stat.st_mtime_ns}\0".encode())
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty.{changes.hexdigest()[:8]}"


def short_revision(revision: str) -> str:
    """A commit cut to 12 hex digits, keeping a `+dirty.<hash>` suffix."""
    commit, plus, dirty = revision.partition("+")
    return commit[:12] + plus + dirty


def _hardware() -> dict[str, Any]:
    """Platform, CPU count, torch threads and CUDA device; computed per write (threads vary)."""
    import torch  # deferred: only writers pay for the import

    # only name a device this process already uses: initializing CUDA here would break forks
    used = torch.cuda.is_initialized()
    return {"platform": platform.platform(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda_available": torch.cuda.is_available(),
            "cuda_device": torch.cuda.get_device_name() if used else None}


def _decode(raw: dict[bytes, bytes] | None) -> dict[str, Any]:
    """`regularity.*` schema metadata without the prefix, JSON fields parsed."""
    out: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        k = key.decode()
        if k.startswith(META_PREFIX):
            k = k[len(META_PREFIX):]
            out[k] = json.loads(value) if k in _JSON_FIELDS else value.decode()
    return out


def read_table(path: Path | str) -> pd.DataFrame:
    """Any Parquet table of the project as a DataFrame."""
    return pq.read_table(path).to_pandas()


def read_provenance(path: Path | str) -> dict[str, Any]:
    """Decoded provenance of any Parquet file of the project (footer only)."""
    return _decode(pq.read_schema(path).metadata)


def _decode_tensor_metadata(raw: dict[str, str] | None) -> dict[str, Any]:
    """A safetensors header's string metadata, `built_from` parsed."""
    meta = dict(raw or {})
    meta["built_from"] = json.loads(meta.get("built_from") or "{}")
    return meta


def _tensor_metadata(path: Path) -> dict[str, Any]:
    """The metadata of a safetensors file's header (the tensors are not read)."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return _decode_tensor_metadata(f.metadata())


def file_metadata(path: Path) -> dict[str, Any] | None:
    """Provenance of a table (Parquet footer) or weights file (safetensors header); None if missing or unreadable."""
    try:
        return _tensor_metadata(path) if path.suffix == ".safetensors" else read_provenance(path)
    except Exception:  # noqa: BLE001 (pyarrow and safetensors raise their own types for cut or garbled files)
        return None


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


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Run `write(file)` on a same-directory temp file, fsync, then rename onto `path` (all or nothing)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # a full disk, no permission, a vanished folder: say which file, and what is safe
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise type(err)(err.errno, f"cannot write {path}: {err.strerror or err}; the files written before it are "
                                   "intact, and a re-run resumes from them once this is fixed") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:  # the rename itself is durable only once the directory is synced
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class RunStore:
    """The folder `<data root>/runs/<flow>/<run id>/` holding one run's config and tables."""

    def __init__(self, flow: str, config: BaseModel, data_root: Path, inputs: dict[str, str | None] | None = None):
        self.flow, self.config = flow, config
        self.inputs = {name: value for name, value in (inputs or {}).items() if value is not None}
        self.run_id = run_id(flow, config, self.inputs)
        self.config_json = canonical_json(config)
        self.root = data_root / "runs" / flow / self.run_id

    @classmethod
    def open(cls, flow: str, config: BaseModel, data_root: Path | str | None = None,
             inputs: dict[str, str | None] | None = None) -> RunStore:
        """Create or reopen the run folder of `config` reading input files of fingerprints `inputs` (name ->
        `core.data.fingerprint` value; None = no file), checking its config.json."""
        store = cls(flow, config, _resolve_root(data_root), inputs)
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
        return cls(flow, config, _resolve_root(data_root), inputs).root

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
                "versions": json.dumps(_versions(), sort_keys=True),
                "code_revision": code_revision(),
                "hardware": json.dumps(_hardware(), sort_keys=True),
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
        return self._read_tensor_file(self._file(name))[1]

    def _read_tensor_file(self, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """(metadata, tensors) of a safetensors file of this run, checked as `read_tensors` says."""
        from safetensors import safe_open

        try:
            with safe_open(path, "pt") as f:
                meta, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # safetensors raises its own error types for a cut or garbled header
            raise CorruptFileError(f"{path} is unreadable ({type(err).__name__}: {err})") from err
        if meta.get("run_id") != self.run_id:
            raise CorruptFileError(f"{path} was written by run {meta.get('run_id')!r}, not {self.run_id!r}")
        if "sha256" in meta and meta["sha256"] != tensor_digest(tensors):  # files written before checksums have none
            raise CorruptFileError(f"{path} has tensors that do not match their checksum")
        return _decode_tensor_metadata(meta), tensors

    def claim(self, name: str, on_wait: Callable[[dict], Any] | None = None):
        """Context manager holding this run's claim on computing output `name` (`core.runs.claims`): a second
        process running the same config waits for the first to finish it instead of computing it again."""
        from core.runs.claims import claim

        return claim(self._file(f"claims/{name.replace('/', '__')}.claim"), on_wait)

    def _if_whole(self, name: str, read: Callable[[Path], Any]) -> Any | None:
        """`read(path)` when `name` exists and reads as whole; None when it is missing, or bad (CorruptFileError:
        then it is deleted, with a warning)."""
        path = self._file(name)
        if not path.exists():
            return None
        try:
            return read(path)
        except CorruptFileError as err:
            warnings.warn(f"{err}; deleting it, it will be recomputed", RuntimeWarning, stacklevel=3)
            path.unlink(missing_ok=True)
            return None

    def _table_metadata(self, path: Path) -> dict[str, Any]:
        """Provenance of `path`, or CorruptFileError unless it is a readable Parquet table of this run (its footer
        is written last)."""
        try:
            meta = _decode(pq.read_schema(path).metadata)
        except (pa.ArrowException, OSError) as err:
            raise CorruptFileError(f"{path} is unreadable ({type(err).__name__}: {err})") from err
        if meta.get("run_id") != self.run_id:
            raise CorruptFileError(f"{path} was written by run {meta.get('run_id')!r}, not {self.run_id!r}")
        return meta

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
        and from the files it recorded as they are now; a bad or foreign file is deleted."""
        tensors = name.endswith(".safetensors")
        meta = self._if_whole(name, (lambda path: self._read_tensor_file(path)[0]) if tensors else self._table_metadata)
        return meta is not None and self._is_current(name, meta, built_from)

    def figures(self, draw: Callable[[], list[Path]]) -> list[Path]:
        """The run's figures: the files `draw()` writes, drawn from the tables at the run's top level. Unless this code
        drew them from those tables as they are now: then they are left as they are (a rerun of a finished run
        draws nothing, and matplotlib takes seconds a figure)."""
        record_path = self.root / FIGURES_RECORD
        drawn_from = {"code_revision": code_revision(),
                      "tables": json.loads(self._stamps(sorted(p.name for p in self.root.glob("*.parquet"))))}
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
        found = self._if_whole(name, self._read_tensor_file)
        return found[1] if found is not None and self._is_current(name, found[0], None) else None

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


# What tells runs of a flow apart at a glance, in the order `config_summary` shows it; dataset and model bare.
SUMMARY_KEYS = ["dataset.name", "dataset.path", "dataset.n_train", "dataset.label_noise", "model", "family", "widths",
                "depths", "data_fractions", "seeds", "n_models", "runs_per_ratio", "ratios", "fractions", "arms",
                "pruning.levels", "learning_rates", "layer_types", "densities", "heuristic", "methods", "label_noise",
                "gammas", "task", "examples", "train.epochs", "train.lr", "cscore_run", "scores", "prune_run"]


def config_summary(config: dict[str, Any]) -> str:
    """One line of a run's salient settings, e.g. `digits n_train=300 mlp_w8_d1 runs_per_ratio=2 epochs=2`."""
    parts = []
    for key in SUMMARY_KEYS:
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None or (key == "dataset.label_noise" and value == 0):
            continue
        if isinstance(value, list):
            value = "/".join(map(str, value)) if len(value) <= 4 else f"{value[0]}..{value[-1]} ({len(value)})"
        name = key.rsplit(".", 1)[-1].replace("label_", "")
        parts.append(str(value) if key in ("dataset.name", "model") else f"{name}={value}")
    return " ".join(parts)


FIGURES_RECORD = "figures/drawn_from.json"  # which tables, and which code, drew the figures listed in it
REPORT = "report.md"  # every flow writes its markdown report last: its presence means the run is complete


def run_status(folder: Path) -> str:
    """`complete` once the flow wrote its report, else how many shard tables are done."""
    if (folder / REPORT).is_file():
        return "complete"
    return f"partial ({sum(1 for _ in folder.glob('shards/**/*.parquet'))} shard tables)"


def list_runs(data_root: Path | str | None = None) -> pd.DataFrame:
    """One row per run folder: flow, run_id, status, summary, path, created, n_tables, size_bytes."""
    rows = []
    for cfg in sorted(_resolve_root(data_root).glob("runs/*/*/config.json")):
        run_dir = cfg.parent
        files = [p for p in run_dir.rglob("*") if p.is_file() and not p.name.startswith(".")]
        rows.append({"flow": run_dir.parent.name, "run_id": run_dir.name, "status": run_status(run_dir),
                     "summary": config_summary(json.loads(cfg.read_text())["config"]), "path": str(run_dir),
                     "created": pd.Timestamp(cfg.stat().st_mtime, unit="s", tz="UTC"),
                     "n_tables": sum(p.suffix == ".parquet" for p in files),
                     "size_bytes": sum(p.stat().st_size for p in files)})
    columns = ["flow", "run_id", "status", "summary", "path", "created", "n_tables", "size_bytes"]
    return pd.DataFrame(rows, columns=columns).sort_values("created", ignore_index=True)


def audit_run(folder: Path | str) -> pd.DataFrame:
    """One row per table and weights file of a run folder: name, rows, columns, code_revision, created_at, and
    `changed`: the inputs it was built from that were rewritten or removed since (it is out of date)."""
    folder, rows = Path(folder), []
    for path in sorted([*folder.rglob("*.parquet"), *folder.rglob("*.safetensors")]):
        if path.name.startswith("."):
            continue
        shape = None
        if path.suffix == ".parquet":  # one footer read gives both the shape and the provenance
            try:
                shape = pq.read_metadata(path)
            except (pa.ArrowException, OSError):
                pass
            meta = None if shape is None else _decode(shape.metadata)
        else:
            meta = file_metadata(path)
        rows.append({"name": path.relative_to(folder).as_posix(), "rows": shape.num_rows if shape else None,
                     "columns": shape.num_columns if shape else None,
                     "code_revision": (meta or {}).get("code_revision", "unreadable"),
                     "created_at": (meta or {}).get("created_at"),
                     "changed": changed_inputs(folder, meta) if meta else []})
    columns = ["name", "rows", "columns", "code_revision", "created_at", "changed"]
    return pd.DataFrame(rows, columns=columns).astype({"rows": "Int64", "columns": "Int64"})


def _pack_rows(matrix: Any, dtype: type, pa_type: pa.DataType) -> pa.Array:
    """[K, N] array -> list array of K rows of N values."""
    try:
        values = np.asarray(matrix, dtype=dtype)
    except ValueError as err:
        raise ValueError(f"rows must all have the same length: {err}") from err
    if values.ndim != 2:
        raise ValueError(f"expected a 2-d [models, examples] array, got shape {values.shape}")
    k, n = values.shape
    offsets = np.arange(k + 1, dtype=np.int64) * n
    flat = pa.array(values.ravel(), type=pa_type)
    if k * n < 2**31:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat)
    return pa.LargeListArray.from_arrays(pa.array(offsets), flat)


def _unpack_rows(column: Any, dtype: type) -> np.ndarray:
    """List column of equal-length rows -> [K, N] array."""
    if isinstance(column, pd.Series):
        column = pa.array(column.tolist())  # pandas holds list cells as numpy arrays
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return np.empty((0, 0), dtype=dtype)
    if column.null_count:
        raise ValueError("list column has null rows")
    k = len(column)
    lengths = pc.list_value_length(column).to_numpy()
    n = int(lengths[0]) if k else 0
    if (lengths != n).any():
        raise ValueError(f"rows have different lengths ({lengths.min()}..{lengths.max()})")
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(dtype, copy=False).reshape(k, n)


def pack_bool_rows(matrix: np.ndarray) -> pa.Array:
    """[K, N] bools -> `list<bool>` column, one list of N per model row."""
    return _pack_rows(matrix, np.bool_, pa.bool_())


def unpack_bool_rows(column: pa.Array | pa.ChunkedArray | pd.Series) -> np.ndarray:
    """`list<bool>` column of equal-length rows -> [K, N] bool array."""
    return _unpack_rows(column, np.bool_)


def pack_float_rows(matrix: np.ndarray) -> pa.Array:
    """[K, N] floats -> `list<float32>` column, one list of N per model row."""
    return _pack_rows(matrix, np.float32, pa.float32())


def unpack_float_rows(column: pa.Array | pa.ChunkedArray | pd.Series) -> np.ndarray:
    """`list<float32>` column of equal-length rows -> [K, N] float32 array."""
    return _unpack_rows(column, np.float32)


def find_run(run: str, data_root: Path | str | None = None, prefix: bool = False) -> Path:
    """The folder of run id `run` (`<flow>-<hash>`) under the data root, or an error naming what exists. With
    `prefix`, `run` may be the start of one run id (`cscore-8e05`); a start shared by several lists them. A config's
    setting that names a run gives the whole id: a run's identity must not depend on which runs exist."""
    if not (RUN_PREFIX if prefix else RUN_ID).fullmatch(run):  # also keeps `..` and absolute paths out of the data root
        raise ValueError(f"{run!r} is not a run id{' or the start of one' * prefix}: those read <flow>-<12 hex "
                         "digits>, e.g. cscore-3f9c0a1b2c3d (`regularity ls` lists them)")
    runs = _resolve_root(data_root) / "runs"
    folder = runs / run.rsplit("-", 1)[0] / run
    if (folder / "config.json").is_file():
        return folder
    known = sorted(p.parent.name for p in runs.glob("*/*/config.json"))
    matches = [name for name in known if prefix and name.startswith(run)]
    if len(matches) == 1:
        return runs / matches[0].rsplit("-", 1)[0] / matches[0]
    if matches:
        raise ValueError(f"{run!r} is the start of {len(matches)} runs under {runs}: {', '.join(matches)}; "
                         "give more of the id")
    start = prefix and not RUN_ID.fullmatch(run)
    raise FileNotFoundError(f"no run {run!r}{' (nor one beginning so)' * start} under {runs}; "
                            f"runs there: {', '.join(known) or 'none'} (set --data-root if it lives elsewhere)")
