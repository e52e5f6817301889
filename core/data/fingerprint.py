"""Content fingerprints of the files a run reads, so that a run's id changes when its data does.

A file's SHA-256 is cached by (path, size, mtime) in `<cache dir>/fingerprints.json`: a large
dataset is hashed once, and afterwards each run costs one `stat` per file. A file edited in place
gets a new mtime, so it is hashed again.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from core.runs.files import atomic_write

CACHE_FILE = "fingerprints.json"
CHUNK = 1 << 20  # bytes read at a time while hashing


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _read_cache(path: Path) -> dict[str, list]:
    """The cache's entries, or none when it is missing or unreadable (it is only a cache)."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def fingerprint(files: list[Path], cache_dir: Path | None = None, decoding: str | None = None) -> str | None:
    """16 hex digits naming the contents and relative names of `files` (None for no files), and how they are read
    (`decoding`, e.g. "grayscale images as 1 channel") where earlier code read them otherwise: the same files read
    into other arrays are other data, so the run ids that read them change; with None, ids stay as they were."""
    if not files:
        return None
    resolved = sorted(Path(f).resolve() for f in files)
    root = Path(os.path.commonpath(resolved)) if len(resolved) > 1 else resolved[0].parent
    cache_path = Path(cache_dir) / CACHE_FILE if cache_dir is not None else None
    cache = _read_cache(cache_path) if cache_path else {}
    names, changed = {}, False
    for path in resolved:
        stat = path.stat()
        key, signature = str(path), [stat.st_size, stat.st_mtime_ns]
        entry = cache.get(key)
        if not (isinstance(entry, list) and entry[:2] == signature):
            cache[key], changed = [*signature, sha256_of(path)], True
        names[str(path.relative_to(root))] = cache[key][2]
    if cache_path and changed:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache_path, lambda f: f.write(json.dumps(cache, sort_keys=True).encode()))
    identity = json.dumps(names, sort_keys=True) + (f"\ndecoded as: {decoding}" if decoding else "")
    return hashlib.sha256(identity.encode()).hexdigest()[:16]
