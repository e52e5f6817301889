"""glibc's allocator setting (core.runtime.reuse_freed_memory) is made where a run configures its process: on the CPU,
as train() made it before it moved there, and not for a GPU run."""
import logging

import torch

import flows.runner
from core.config import RuntimeConfig


def allocator_settings(monkeypatch, device: str) -> int:
    """How many times `configure_runtime` of a run on `device` set the allocator."""
    calls = []
    monkeypatch.setattr(flows.runner, "reuse_freed_memory", lambda: calls.append(device) or True)
    monkeypatch.setattr(flows.runner, "get_run_logger", lambda: logging.getLogger("test_allocator"))
    threads = torch.get_num_threads()
    try:
        flows.runner.configure_runtime(RuntimeConfig(device=device, threads=1))
    finally:
        torch.set_num_threads(threads)
    return len(calls)


def test_a_run_on_the_cpu_reuses_freed_memory_and_a_run_on_a_gpu_does_not(monkeypatch):
    assert allocator_settings(monkeypatch, "cpu") == 1
    assert allocator_settings(monkeypatch, "cuda") == 0
