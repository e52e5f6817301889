"""`regularity run` interrupted by Ctrl-C: what it says, and that the same command resumes the run."""
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest


def test_ctrl_c_says_what_is_written_and_a_rerun_resumes(tmp_path, prefect_harness):
    """A real SIGINT to `regularity run` after its first shard: one line, no traceback; the same command again
    finishes the run, and its folder is the last line of stdout and stderr together. Both runs use the session's API
    (PREFECT_API_URL, as a user's own server): a temporary server per run would cost ~20 s each, and
    test_run_prints_the_run_folder_last checks --ephemeral's own last line."""
    import signal
    import time

    from prefect.settings import PREFECT_API_URL

    # a shell that runs this suite in the background (`make test &`) starts it with SIGINT ignored, and Python then
    # never turns Ctrl-C into KeyboardInterrupt: the child gets the handler an interactive `regularity run` has
    # SIGUSR1 prints every thread's stack: what a rerun that never finishes was waiting for
    ctrl_c_as_in_a_terminal = ("import faulthandler, runpy, signal, sys; "
                               "signal.signal(signal.SIGINT, signal.default_int_handler); "
                               "faulthandler.register(signal.SIGUSR1, all_threads=True); "
                               "sys.argv[0] = 'regularity'; runpy.run_module('flows.cli', run_name='__main__')")
    command = [sys.executable, "-c", ctrl_c_as_in_a_terminal, "run", "train", "--data-root", str(tmp_path),
               "--set", "dataset.name=digits", "--set", "model=mlp_w8_d1", "--set", "n_models=8",
               "--set", "shard_size=1", "--set", "train.epochs=40"]  # shards long enough for the SIGINT to land
    # inside the run even when this process waits a second for a busy core
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    repo = Path(__file__).parents[1]
    process = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("runs/train/*/shards/*.parquet")) and process.poll() is None:
        assert time.monotonic() < deadline, "no shard written in 300 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    (folder,) = tmp_path.glob("runs/train/*")
    shards = len(list(folder.glob("shards/*.parquet")))
    assert process.returncode == 130 and out == "" and "Traceback" not in err and 1 <= shards < 8
    assert err.splitlines()[-1] == (f"regularity: interrupted: run {folder.name} is partial ({shards} shard tables) "
                                    f"in {folder}; run the same command again to resume it from there")

    again = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = again.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        again.send_signal(signal.SIGUSR1)
        time.sleep(2)
        again.kill()
        out, _ = again.communicate()
        pytest.fail(f"the rerun did not finish in 300 s; its last output and stacks:\n{out[-6000:]}")
    assert again.returncode == 0 and out.splitlines()[-1] == str(folder), out[-3000:]
    assert pq.read_metadata(folder / "models.parquet").num_rows == 8  # every model, the first ones found again
