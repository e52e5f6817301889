"""Writing and reading the project's files: atomic writes, provenance metadata, tensor files, the data root and the
code revision."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import subprocess
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO, Callable

import pandas as pd
import pyarrow.parquet as pq

DATA_ROOT_ENV = "REGULARITY_DATA_ROOT"
META_PREFIX = "regularity."
REPO_ROOT = Path(__file__).resolve().parents[2]  # core/runs/files.py
_JSON_FIELDS = ("config", "inputs", "versions", "hardware", "built_from")
_PACKAGES = ("torch", "numpy", "pandas", "pyarrow", "scikit-learn", "scipy", "prefect")


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


def resolve_root(data_root: Path | str | None) -> Path:
    """Absolute data root: process workers run from temporary directories."""
    return default_data_root() if data_root is None else Path(data_root).expanduser().resolve()


def dataset_cache(data_root: Path | str | None = None) -> Path:
    """`<data root>/cache`: generated or decompressed datasets shared by all runs."""
    return resolve_root(data_root) / "cache"


@functools.cache
def package_versions() -> dict[str, str | None]:
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


def hardware() -> dict[str, Any]:
    """Platform, CPU count, torch threads and CUDA device; computed per write (threads vary)."""
    import torch  # deferred: only writers pay for the import

    # only name a device this process already uses: initializing CUDA here would break forks
    used = torch.cuda.is_initialized()
    return {"platform": platform.platform(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda_available": torch.cuda.is_available(),
            "cuda_device": torch.cuda.get_device_name() if used else None}


def decode_provenance(raw: dict[bytes, bytes] | None) -> dict[str, Any]:
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
    return decode_provenance(pq.read_schema(path).metadata)


def decode_tensor_metadata(raw: dict[str, str] | None) -> dict[str, Any]:
    """A safetensors header's string metadata, `built_from` parsed."""
    meta = dict(raw or {})
    meta["built_from"] = json.loads(meta.get("built_from") or "{}")
    return meta


def _tensor_metadata(path: Path) -> dict[str, Any]:
    """The metadata of a safetensors file's header (the tensors are not read)."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return decode_tensor_metadata(f.metadata())


def file_metadata(path: Path) -> dict[str, Any] | None:
    """Provenance of a table (Parquet footer) or weights file (safetensors header); None if missing or unreadable."""
    try:
        return _tensor_metadata(path) if path.suffix == ".safetensors" else read_provenance(path)
    except Exception:  # noqa: BLE001 (pyarrow and safetensors raise their own types for cut or garbled files)
        return None


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
