"""Claims on units of work, so that processes running the same config at once never compute one twice.

A claim is a small file created with O_EXCL (atomic on local and NFS v3+ file systems) that names its
holder: host, pid, a random token. While held, a thread touches it every HEARTBEAT_S seconds. A process
that finds a claim waits until it is released, or takes it over once it is stale: its holder is a dead
process on this host, or its file has not been touched for STALE_S seconds (a holder on another host
that died). Claims only save work: every output is still written atomically and checked when read, so
a claim lost to a race costs a duplicate computation, never a wrong table.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HEARTBEAT_S = 30.0  # how often a holder touches its claim
STALE_S = 300.0  # a claim untouched this long has lost its holder
POLL_S = 0.5  # how often a waiting process looks again


def _holder_alive(holder: dict) -> bool:
    """False when the holder is a process of this host that no longer exists."""
    if holder.get("host") != socket.gethostname():
        return True  # another host's process: only its heartbeat can tell
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def _read_holder(path: Path) -> dict | None:
    """The holder recorded in a claim file; None if it is gone, {} if it cannot be read (being written)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _stale(path: Path, holder: dict) -> bool:
    """Whether the claim at `path` has lost its holder."""
    try:
        untouched = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False  # released meanwhile
    return untouched > STALE_S or (bool(holder) and not _holder_alive(holder))


def _try_create(path: Path, holder: dict) -> bool:
    """Create the claim file for `holder`; False if it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(holder, f)
    return True


def _heartbeat(path: Path, stop: threading.Event) -> None:
    """Touch the claim file until `stop` is set."""
    while not stop.wait(HEARTBEAT_S):
        try:
            os.utime(path)
        except FileNotFoundError:
            return


@contextmanager
def claim(path: Path, on_wait=None) -> Iterator[None]:
    """Hold the claim file `path` for the duration of the block, waiting while a live holder has it.
    `on_wait(holder)` is called once if this process has to wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex, "since": time.time()}
    waited = False
    while not _try_create(path, holder):
        other = _read_holder(path)
        if other is not None and _stale(path, other):
            warnings.warn(f"{path}: taking over a claim whose holder is gone ({other})", RuntimeWarning, stacklevel=3)
            path.unlink(missing_ok=True)
            continue
        if not waited and on_wait is not None and other:
            on_wait(other)
        waited = True
        time.sleep(POLL_S)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, stop), daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        if _read_holder(path) == holder:  # never remove a claim another process took over
            path.unlink(missing_ok=True)
