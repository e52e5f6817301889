"""Process-wide settings, each set in this one place at start-up: OpenMP's wait policy and torch's CPU threads.

The wait policy must be in the environment before torch loads libgomp (it reads it once, then), so this module never
imports torch at its top, and `set_wait_policy` runs first thing in the `regularity` CLI and in the tests' conftest.
Flow processes that a Prefect worker or a local Dask cluster starts inherit it from the process that started them.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

# Idle OpenMP threads sleep instead of spinning. libgomp's default spins up to 300,000 times before it sleeps, and on a
# core shared with another process the spinning thread takes the time its partner needs: 2 threads beside one CPU-bound
# process ran the demo's shard 2.8-7x slower than alone, 1.2-1.6x with PASSIVE, which costs 1.2-1.36x on a quiet
# machine (bench/README.md, threads.py).
WAIT_POLICY = "PASSIVE"
LOAD_SAMPLE_S = 0.2  # seconds over which other processes' use of our cores is measured when a flow starts
BUSY_ROUNDING = 0.5  # a core counts as taken when other processes keep it busy at least this fraction of the time

_policy_set_before_torch: bool | None = None  # None: set_wait_policy never ran in this process


def set_wait_policy() -> str:
    """Put OMP_WAIT_POLICY=PASSIVE in this process's environment (and so its children's), unless the user set one;
    returns the policy now in the environment. Call it before anything imports torch; a second call changes nothing."""
    global _policy_set_before_torch
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
        _policy_set_before_torch = "torch" not in sys.modules
    return os.environ["OMP_WAIT_POLICY"]


def policy_in_effect() -> str | None:
    """OMP_WAIT_POLICY as libgomp read it when torch loaded it into this process; None for its default (spinning):
    the variable is unset, or was set in this process after torch had loaded."""
    policy = os.environ.get("OMP_WAIT_POLICY")
    if policy is None or not (_policy_set_before_torch or _started_with_policy() is not False):
        return None
    return policy.upper()


def _started_with_policy() -> bool | None:
    """Whether this process was started with OMP_WAIT_POLICY in its environment; None where that cannot be read."""
    try:
        with open("/proc/self/environ", "rb") as environ:
            return any(entry.startswith(b"OMP_WAIT_POLICY=") for entry in environ.read().split(b"\0"))
    except OSError:
        return None


def wait_policy() -> str:
    """The OpenMP wait policy this process's torch runs with, in words for the run's log."""
    policy, given = policy_in_effect(), os.environ.get("OMP_WAIT_POLICY")
    if policy is not None:
        return policy
    if given is not None:
        return f"libgomp's default (OMP_WAIT_POLICY={given} was set after torch had loaded)"
    return "libgomp's default (threads spin before they sleep; set OMP_WAIT_POLICY=PASSIVE where flows start)"


def threads_for_load(cores: int, workers: int, busy_cores: float, threads_sleep: bool) -> int:
    """Torch threads per task: the cores shared among the run's `workers` concurrent tasks, at least one. Threads that
    spin while they wait (`threads_sleep` False: libgomp's default) get only the cores that other processes leave
    free, a core counting as taken when others keep it busy at least BUSY_ROUNDING of the time.

    Measured on 2 cores beside one CPU-bound process (bench/README.md, threads.py): 2 spinning threads ran 2.8-20x
    slower than alone, 1 thread 1.2-1.7x. 2 sleeping (PASSIVE) threads ran 1.6-1.9x, within 1.3x of 1 thread, and
    faster beside two processes; keeping them means the run's numbers (1 and 2 threads sum floats in other orders)
    do not depend on the neighbours' load."""
    if threads_sleep:
        return max(1, cores // workers)
    taken = min(cores, math.floor(busy_cores + 1 - BUSY_ROUNDING))
    return max(1, (cores - taken) // workers)


@dataclass(frozen=True)
class ThreadChoice:
    """Torch threads per task and what they were chosen from, for the run's log."""

    threads: int
    cores: int
    workers: int
    busy_cores: float | None  # other processes' use of our cores at start-up; None: not measured
    policy: str  # `wait_policy()` as the choice was made
    override: bool  # runtime.threads was set

    def describe(self) -> str:
        """One line: the count, why, and the wait policy."""
        if self.override:
            why = "runtime.threads"
        else:
            load = "load unknown" if self.busy_cores is None else f"others kept {self.busy_cores:.2f} of them busy"
            why = f"{self.cores} cores, {load}, {self.workers} concurrent task{'s' * (self.workers != 1)}"
            if self.threads < max(1, self.cores // self.workers):
                why += "; spinning threads keep off the busy cores"
        return f"torch threads per task: {self.threads} ({why}); OpenMP wait policy: {self.policy}"


def choose_threads(setting: int, cores: int, workers: int, busy_cores: float | None) -> ThreadChoice:
    """`setting` (runtime.threads) when it is not 0, else `threads_for_load` under this process's wait policy; an
    unmeasured load counts as none."""
    sleep = policy_in_effect() == "PASSIVE"
    threads = setting or threads_for_load(cores, workers, busy_cores or 0.0, sleep)
    return ThreadChoice(threads, cores, workers, busy_cores, wait_policy(), bool(setting))


def available_cores() -> int:
    """CPU cores this process may run on (its affinity, which containers and taskset narrow), else the count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cpu_ticks(cores: set[int]) -> tuple[int, int, int] | None:
    """(all, idle) clock ticks of `cores` since boot, and this process's own CPU ticks; None without /proc."""
    try:
        with open("/proc/stat") as stat:
            lines = [line.split() for line in stat if line.startswith("cpu") and line[3].isdigit()]
        with open("/proc/self/stat") as own:
            fields = own.read().rpartition(")")[2].split()
    except OSError:
        return None
    rows = [[int(v) for v in line[1:]] for line in lines if int(line[0][3:]) in cores]
    total = sum(sum(row[:8]) for row in rows)  # user nice system idle iowait irq softirq steal (guest is in user)
    idle = sum(row[3] + row[4] for row in rows)
    return total, idle, int(fields[11]) + int(fields[12])  # utime + stime, all threads


def busy_from_ticks(before: tuple[int, int, int], after: tuple[int, int, int], cores: int) -> float:
    """Cores kept busy by other processes between two `cpu_ticks` samples: all busy ticks less this process's own."""
    total, idle, own = (a - b for a, b in zip(after, before))
    if total <= 0:
        return 0.0
    others = max(0, total - idle - own)
    return round(min(float(cores), others / total * cores), 2)


def others_busy_cores(seconds: float = LOAD_SAMPLE_S) -> float | None:
    """How many of this process's cores other processes keep busy, measured over `seconds`; None without /proc."""
    cores = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
    before = cpu_ticks(cores)
    if before is None or not cores:
        return None
    time.sleep(seconds)
    after = cpu_ticks(cores)
    return None if after is None else busy_from_ticks(before, after, len(cores))


_start_up_load: float | None = None  # measured by `measure_load` when a flow starts; read by its tasks


def measure_load() -> float | None:
    """Measure other processes' load on our cores now, and keep it for this process's tasks (`start_up_load`)."""
    global _start_up_load
    _start_up_load = others_busy_cores()
    return _start_up_load


def start_up_load() -> float | None:
    """Other processes' busy cores as this process's last flow started; None before any, or where unmeasurable."""
    return _start_up_load
