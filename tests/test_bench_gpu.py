"""The GPU benchmark refuses clearly where there is no GPU, before it imports or starts anything else."""
import os
import subprocess
import sys
from pathlib import Path


def test_gpu_benchmark_refuses_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine that has one
    done = subprocess.run([sys.executable, "-m", "bench.gpu_cscore"], cwd=Path(__file__).parents[1], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("bench.gpu_cscore needs an NVIDIA GPU: torch.cuda.is_available() is False")
    assert "on a CPU use bench.cscore instead" in done.stderr
