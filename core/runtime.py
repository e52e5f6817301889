"""Process-wide settings, each set in this one place at start-up: OpenMP's wait policy, torch's CPU threads, the
device and its float32 precision, and glibc's allocator (flows.runner.configure_runtime, tasks.common.task_dataset).

The wait policy must be in the environment before torch loads libgomp (it reads it once, then), so this module never
imports torch at its top, and `set_wait_policy` runs first thing in the `regularity` CLI and in the tests' conftest.
Flow processes that a Prefect worker or a local Dask cluster starts inherit it from the process that started them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: torch loads inside the functions that use it
    import torch

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


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` means CUDA when present, else CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_bf16() -> bool:
    """Whether this CPU does bfloat16 arithmetic natively (oneDNN's test: AVX-512 BF16 or AMX)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision this device cannot run fast, before any work (see RuntimeConfig.precision)."""
    import torch

    if precision != "bf16":
        return
    if device.type == "cpu" and not cpu_has_bf16():
        raise ValueError("runtime.precision=bf16: this CPU has no native bfloat16 arithmetic (AVX-512 BF16 or AMX), "
                         "so bf16 matmuls run hundreds of times slower than fp32 here; use precision fp32")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ValueError(f"runtime.precision=bf16: {torch.cuda.get_device_name(device)} has no native bfloat16; "
                         "use precision fp32 or tf32")


def use_precision(precision: str) -> None:
    """This process's float32 matmul and conv mode on NVIDIA GPUs: TF32 for `tf32`, else IEEE fp32 (cuDNN would
    pick TF32 convs by default). Process-wide, as torch's threads are; CPUs compute fp32 either way."""
    import torch

    mode = "tf32" if precision == "tf32" else "ieee"
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode


@functools.cache
def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of giving it back to the OS (process-wide, once).

    By default glibc maps every large block afresh and trims the heap on free, so each multi-MB tensor
    of a training step pays a page fault per 4 KiB page: a third of the stacked CNN's step time at
    K=64 on the CPU. The cost: the process keeps its peak heap. False where glibc is not the allocator.
    """
    libc = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(libc), "mallopt", None) if libc else None
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 1 << 30) and mallopt(m_trim_threshold, (1 << 31) - 1))
