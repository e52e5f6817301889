"""A stop request that a run's step loops obey. Python delivers Ctrl-C to the main thread only: without this, a shard
training in a worker thread went on to its end (an hour, for a LIME pretraining) while the interrupted run waited for
it, and the Ctrl-C seemed to do nothing."""
from __future__ import annotations

import threading

_requested = threading.Event()


class Stopped(KeyboardInterrupt):
    """The interrupt, carried to a step loop in a worker thread: the shard ends as the main thread's run does (Prefect
    marks its task run Crashed, without a traceback)."""


def request_stop() -> None:
    """Ask every step loop of this process to stop at its next step."""
    _requested.set()


def clear_stop() -> None:
    """Let step loops run again, once the stopped ones have ended."""
    _requested.clear()


def check_stop() -> None:
    """Raise Stopped once a stop was requested; step loops call it once a step (an Event check: ~0.1 µs)."""
    if _requested.is_set():
        raise Stopped("the run was interrupted: this shard stopped at its next step")
