"""The GPU benchmark refuses clearly where there is no GPU, and its toy CPU run goes through the whole script."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from core.data.sources import FASHION_MNIST_DIR


def test_gpu_benchmark_refuses_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine that has one
    done = subprocess.run([sys.executable, "-m", "bench.gpu_cscore"], cwd=Path(__file__).parents[1], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("bench.gpu_cscore needs an NVIDIA GPU: torch.cuda.is_available() is False")
    assert "on a CPU use bench.cscore instead" in done.stderr


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="Fashion-MNIST is installed by `make`")
@pytest.mark.usefixtures("prefect_harness")
def test_the_cpu_smoke_run_goes_through_the_whole_script(tmp_path, monkeypatch, capsys):
    """What a GPU session would run, at a toy size on the CPU: flow, tables, and every reported figure. It runs in
    this process, on the session's Prefect API (the test above runs the script as a command)."""
    from prefect.settings import PREFECT_API_URL

    from bench.gpu_cscore import main

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # the smoke run's API when set
    main(["--cpu-smoke", "--data-root", str(tmp_path)])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["bench"], result["smoke"], result["models"], result["train_examples"]) == ("gpu_cscore", True, 18, 2000)
    assert result["model_epochs_per_s"] > 0 and 0 < result["fraction_of_matmul"] and result["peak_memory_gib"] is None
    (folder,) = (tmp_path / "runs" / "cscore").iterdir()
    assert len(pd.read_parquet(folder / "cscores.parquet")) == 2000 and (folder / "report.md").is_file()
