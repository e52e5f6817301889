"""Claims on units of work, so that processes running the same config at once never compute one twice.

A claim is a small file created with O_EXCL (atomic on local and NFS v3+ file systems) that names its
holder: host, pid, a random token. While held, a thread touches it every HEARTBEAT_S seconds. A process
that finds a claim waits until it is released, or takes it over once it is stale: its holder is a dead
process on this host, or its file has not been touched for STALE_S seconds (a holder on another host
that died). Two processes that find the same stale claim at once both try to move it aside by rename;
each checks that the file it moved is the stale one it judged (same holder, inode and modification time:
inode numbers alone are reused at once), and puts back a fresh claim
it moved by mistake, so one of them takes over and the other waits. Claims only save work: every output
is still written atomically and checked when read, so a claim lost to a race costs a duplicate
computation, never a wrong table.
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


def _read_claim(path: Path) -> tuple[dict, os.stat_result] | None:
    """The holder recorded in a claim file ({} if it cannot be read: being written) and the file's stat, both
    from one open file; None if it is gone."""
    try:
        with open(path, "rb") as f:
            stat, raw = os.fstat(f.fileno()), f.read()
    except FileNotFoundError:
        return None
    try:
        return json.loads(raw), stat
    except ValueError:
        return {}, stat


def _read_holder(path: Path) -> dict | None:
    """The holder recorded in a claim file; None if it is gone, {} if it cannot be read (being written)."""
    found = _read_claim(path)
    return None if found is None else found[0]


def _stale(holder: dict, stat: os.stat_result) -> bool:
    """Whether a claim file of `holder` and `stat` has lost its holder."""
    return time.time() - stat.st_mtime > STALE_S or (bool(holder) and not _holder_alive(holder))


def _same_claim(a: tuple[dict, os.stat_result], b: tuple[dict, os.stat_result]) -> bool:
    """Whether two reads of claim files saw the same file, untouched in between."""
    (holder_a, stat_a), (holder_b, stat_b) = a, b
    return holder_a == holder_b and (stat_a.st_dev, stat_a.st_ino, stat_a.st_mtime_ns) == \
        (stat_b.st_dev, stat_b.st_ino, stat_b.st_mtime_ns)


def _take_over(path: Path, judged: tuple[dict, os.stat_result]) -> bool:
    """Move the claim file read as `judged` (and found stale) away from `path`; False if another process moved
    it first. A fresh claim that replaced it meanwhile is moved back, untouched (its holder's heartbeat goes on)."""
    aside = path.with_name(f"{path.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    moved = _read_claim(aside)
    if moved is not None and _same_claim(moved, judged):
        os.unlink(aside)
        return True
    try:
        os.link(aside, path)  # back where it was, unless a third claim is there already (then: work done twice)
    except FileExistsError:
        pass
    os.unlink(aside)
    return False


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
            pass  # moved aside for an instant by a process taking over a stale claim; it puts it back


@contextmanager
def claim(path: Path, on_wait=None) -> Iterator[None]:
    """Hold the claim file `path` for the duration of the block, waiting while a live holder has it.
    `on_wait(holder)` is called once if this process has to wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex, "since": time.time()}
    waited = False
    while not _try_create(path, holder):
        found = _read_claim(path)
        other = None if found is None else found[0]
        if found is not None and _stale(*found):
            if _take_over(path, found):
                warnings.warn(f"{path}: taking over a claim whose holder is gone ({other})", RuntimeWarning, stacklevel=3)
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
