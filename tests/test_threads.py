"""Torch threads chosen from the cores, the concurrent tasks and other processes' load; the wait policy set first."""
import logging
import math
import os
import subprocess
import sys

import pytest
import torch

import core.config
import core.runtime
import flows.runner
from core.config import RuntimeConfig
from core.runtime import busy_from_ticks, choose_threads, others_busy_cores, threads_for_load
from tasks.common import task_threads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("cores, workers, busy, threads", [
    (2, 1, 0.0, 2),  # a quiet machine: all cores
    (2, 1, 0.49, 2),  # others keep a core busy less than half the time: still ours
    (2, 1, 0.5, 1),  # half the time or more: theirs
    (2, 1, 1.0, 1),  # one competing CPU-bound process
    (2, 1, 2.0, 1),  # every core taken: still one thread
    (2, 1, 5.0, 1),  # more load than cores (as the sample never says, but the rule must hold)
    (2, 2, 0.0, 1),  # two concurrent tasks share two cores
    (8, 1, 2.6, 5),  # three cores taken
    (8, 2, 3.0, 2),  # five free cores, two tasks: two each
    (16, 4, 0.0, 4),
])
def test_spinning_threads_get_the_free_cores_shared_by_the_tasks(cores, workers, busy, threads):
    assert threads_for_load(cores, workers, busy, threads_sleep=False) == threads


@pytest.mark.parametrize("cores, workers, busy, threads", [
    (2, 1, 0.0, 2), (2, 1, 1.0, 2), (2, 1, 2.0, 2), (2, 2, 1.0, 1), (8, 2, 6.0, 4), (2, 4, 0.0, 1),
])
def test_sleeping_threads_get_the_cores_shared_by_the_tasks_whatever_the_load(cores, workers, busy, threads):
    assert threads_for_load(cores, workers, busy, threads_sleep=True) == threads


def spinning(monkeypatch) -> None:
    """This process as if torch had loaded libgomp without a wait policy."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)


def sleeping(monkeypatch) -> None:
    """This process as if OMP_WAIT_POLICY=PASSIVE had been set before torch loaded."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setattr(core.runtime, "_policy_set_before_torch", True)


def test_the_choice_on_two_cores_under_one_busy_core_follows_the_wait_policy(monkeypatch):
    monkeypatch.setattr(core.config, "available_cores", lambda: 2)
    spinning(monkeypatch)
    assert RuntimeConfig().torch_threads(busy_cores=0.2) == 2
    assert RuntimeConfig().torch_threads(busy_cores=1.0) == 1
    assert RuntimeConfig(dask_workers=1).dask_worker_threads(busy_cores=1.0) == 1
    sleeping(monkeypatch)
    assert RuntimeConfig().torch_threads(busy_cores=1.0) == 2
    assert RuntimeConfig(max_workers=2).torch_threads(busy_cores=0.0) == 1
    assert RuntimeConfig(dask_workers=1).dask_worker_threads(busy_cores=1.0) == 2


def test_runtime_threads_override_the_rule_whatever_the_load():
    choice = choose_threads(3, cores=2, workers=1, busy_cores=2.0)
    assert (choice.threads, choice.override) == (3, True)
    assert RuntimeConfig(threads=3).torch_threads(busy_cores=2.0) == 3
    assert RuntimeConfig(threads=2, max_workers=4).dask_worker_threads(busy_cores=1.0) == 2


def test_an_unmeasured_load_counts_as_none(monkeypatch):
    monkeypatch.setattr(core.config, "available_cores", lambda: 4)
    spinning(monkeypatch)
    assert RuntimeConfig(max_workers=2).torch_threads(None) == 2


def test_busy_cores_are_all_busy_ticks_less_this_process():
    # 200 ticks on 2 cores: 50 idle, 150 busy, 50 of them this process's own -> others kept 1 core busy
    assert busy_from_ticks((1000, 800, 50), (1200, 850, 100), cores=2) == 1.0
    assert busy_from_ticks((1000, 800, 50), (1200, 1000, 100), cores=2) == 0.0  # never below 0
    assert busy_from_ticks((1000, 800, 50), (1000, 800, 50), cores=2) == 0.0  # no ticks passed


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="the load is read from Linux's /proc/stat")
def test_a_competing_process_takes_a_core_from_spinning_threads_only(monkeypatch):
    """One CPU-bound process beside us is measured as (at least most of) a core, which spinning threads leave to it."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = others_busy_cores(seconds=0.5)
    finally:
        hog.kill()
        hog.wait()
    cores = core.config.available_cores()
    assert busy is not None and busy >= 0.8, busy
    spinning(monkeypatch)
    assert RuntimeConfig().torch_threads(busy) == max(1, cores - math.floor(busy + 0.5))  # taken: busy, rounded
    sleeping(monkeypatch)
    assert RuntimeConfig().torch_threads(busy) == cores


def configure(monkeypatch, caplog, runtime: RuntimeConfig, busy: float) -> list[str]:
    """Run `configure_runtime` on 2 cores with `busy` of them taken by others; the lines it logged."""
    monkeypatch.setattr(core.config, "available_cores", lambda: 2)
    monkeypatch.setattr(flows.runner, "measure_load", lambda: busy)
    monkeypatch.setattr(flows.runner, "get_run_logger", lambda: logging.getLogger("test_threads"))
    with caplog.at_level(logging.INFO, logger="test_threads"):
        flows.runner.configure_runtime(runtime)
    return caplog.messages


def test_configure_runtime_sets_and_logs_the_choice_once(monkeypatch, caplog):
    sleeping(monkeypatch)
    assert configure(monkeypatch, caplog, RuntimeConfig(device="cpu"), busy=1.0) == [
        "torch threads per task: 2 (2 cores, others kept 1.00 of them busy, 1 concurrent task); "
        "OpenMP wait policy: PASSIVE"]
    assert torch.get_num_threads() == 2


def test_configure_runtime_keeps_spinning_threads_off_a_busy_core(monkeypatch, caplog):
    spinning(monkeypatch)
    assert configure(monkeypatch, caplog, RuntimeConfig(device="cpu"), busy=1.0) == [
        "torch threads per task: 1 (2 cores, others kept 1.00 of them busy, 1 concurrent task; spinning threads "
        "keep off the busy cores); OpenMP wait policy: libgomp's default (threads spin before they sleep; set "
        "OMP_WAIT_POLICY=PASSIVE where flows start)"]
    assert torch.get_num_threads() == 1


def test_configure_runtime_with_the_override_measures_nothing(monkeypatch, caplog):
    sleeping(monkeypatch)
    monkeypatch.setattr(flows.runner, "get_run_logger", lambda: logging.getLogger("test_threads"))
    monkeypatch.setattr(flows.runner, "measure_load", lambda: pytest.fail("the load was measured"))
    with caplog.at_level(logging.INFO, logger="test_threads"):
        flows.runner.configure_runtime(RuntimeConfig(device="cpu", threads=1))
    assert torch.get_num_threads() == 1
    assert caplog.messages == ["torch threads per task: 1 (runtime.threads); OpenMP wait policy: PASSIVE"]


def test_tasks_take_the_load_measured_when_the_flow_started(monkeypatch):
    monkeypatch.setattr(core.config, "available_cores", lambda: 2)
    spinning(monkeypatch)
    monkeypatch.setattr(core.runtime, "_start_up_load", 1.0)
    assert task_threads(RuntimeConfig()) == 1
    monkeypatch.setattr(core.runtime, "_start_up_load", 0.0)
    assert task_threads(RuntimeConfig()) == 2
    assert task_threads(RuntimeConfig(threads=3)) == 3


def python(code: str, **env: str) -> str:
    """stdout of `code` in a fresh interpreter at the repository root, without OMP_WAIT_POLICY unless given."""
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=environ, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_cli_sets_the_passive_policy_before_torch_loads_and_keeps_the_users():
    show = ("import flows.cli, os; from core.runtime import wait_policy; "
            "print(os.environ['OMP_WAIT_POLICY'], wait_policy())")
    assert python(show) == "PASSIVE PASSIVE"
    assert python(show, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE ACTIVE"


def test_a_policy_set_after_torch_is_reported_as_not_in_effect():
    late = ("import sys, types; sys.modules['torch'] = types.ModuleType('torch'); "  # as if torch had loaded
            "from core.runtime import set_wait_policy as s, wait_policy as w; s(); print(w())")
    assert python(late) == "libgomp's default (OMP_WAIT_POLICY=PASSIVE was set after torch had loaded)"
    assert python("from core.runtime import wait_policy; print(wait_policy())").startswith("libgomp's default (threads")


def test_setting_the_policy_again_after_torch_loaded_keeps_it_in_effect(monkeypatch):
    sleeping(monkeypatch)
    assert core.runtime.set_wait_policy() == "PASSIVE"  # torch is loaded by now: as when a test imports flows.cli
    assert core.runtime.wait_policy() == "PASSIVE"
