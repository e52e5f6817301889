"""Flow runs in processes of their own that SIGKILL themselves at their N-th atomic file write, for
tests/test_kill.py and tests/test_claims.py.

`python tests/kill_driver.py` imports every module of the project, and what its flows import only when they run,
once; then it reads one JSON request per line on stdin:
  {"start": [FLOW, CONFIG_JSON, DATA_ROOT, "during" | "after", N, STDOUT_PATH, STDERR_PATH]}
      forks a child that runs the flow (its output to the two files) and answers {"pid": PID} at once;
  {"wait": PID}   answers {"returncode": ...} once that child ends (-9: it SIGKILLed itself).
N counts the writes into run folders (not the dataset cache). `during`: the N-th write's temp file gets half its
bytes, then the child dies before the rename (what a kill in the middle of writing a table leaves). `after`: it dies
right after the N-th write lands. Without a kill (N larger than the writes) the child prints the run folder and exits
0. A child is a fresh process as far as a run can tell (its own pid, Prefect client and threads); only the imports,
seconds of them, are done once.
"""
from __future__ import annotations

import importlib
import json
import os
import pkgutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def die() -> None:
    """SIGKILL this process: no cleanup, no except or finally clause runs."""
    os.kill(os.getpid(), signal.SIGKILL)


def dying_write(real, mode: str, n: int, runs: Path):
    """`store.atomic_write` (`real`) that kills the process at its `n`-th call on a file under `runs` (the run
    folders; not the dataset cache beside them)."""
    calls = [0]

    def write(path: Path, body) -> None:
        inside = Path(path).resolve().is_relative_to(runs)
        calls[0] += inside
        if calls[0] != n or not inside:
            return real(path, body)
        if mode == "after":
            real(path, body)
            die()

        def half(file) -> None:
            body(file)
            file.flush()
            file.truncate(max(1, file.tell() // 2))
            file.flush()
            os.fsync(file.fileno())
            die()

        real(path, half)

    return write


def run_child(flow_name: str, config_json: str, data_root: str, mode: str, n: int, out: str, err: str) -> None:
    """In the forked child: output to the files, the dying write in place, the flow run; exits with its outcome."""
    from core.runs import store
    from flows.registry import FLOWS

    for stream, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), stream)
    store.atomic_write = dying_write(store.atomic_write, mode, n, Path(data_root).resolve() / "runs")
    flow, config_class = FLOWS[flow_name].load()
    code = 0
    try:
        print(flow(config_class.model_validate_json(config_json), data_root=data_root), flush=True)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    raise SystemExit(code)  # unwinds out of `serve`: the child never reads the parent's requests


# What the flows import inside functions, at their first run (datasets, cleanlab, figures, and torch._dynamo, which
# torch loads at the DEQ solver's and the optimizer's first use): imported once here, not again in every child (a
# child spent 5-6 s of a 7 s kill attempt on them)
RUN_TIME_IMPORTS = ["sklearn.datasets", "sklearn.metrics", "sklearn.model_selection", "cleanlab.filter",
                    "cleanlab.rank", "pyarrow.dataset", "matplotlib.pyplot", "torch._dynamo"]


def import_everything() -> None:
    """Every module of core, tasks and flows, and RUN_TIME_IMPORTS; none of them starts a thread."""
    for package in ("core", "tasks", "flows"):
        for module in pkgutil.walk_packages([str(REPO / package)], prefix=f"{package}."):
            importlib.import_module(module.name)
    for name in RUN_TIME_IMPORTS:
        importlib.import_module(name)


def serve() -> None:
    """Import every flow and what it needs, then answer start and wait requests (see the module's docstring)."""
    sys.path.insert(0, str(REPO))
    import_everything()
    assert threading.active_count() == 1, threading.enumerate()  # a fork copies no thread: none may hold a lock
    for line in sys.stdin:
        request = json.loads(line)
        if "start" in request:
            pid = os.fork()  # safe: nothing above starts a thread (Prefect's start with the first run, in the child)
            if pid == 0:
                run_child(*request["start"])
            answer = {"pid": pid}
        else:
            status = os.waitpid(request["wait"], 0)[1]
            answer = {"returncode": os.waitstatus_to_exitcode(status)}
        print(json.dumps(answer), flush=True)


class FlowProcesses:
    """The test side: a `serve` process started with `env`, and calls that start and wait for its children."""

    def __init__(self, env: dict[str, str]):
        self.server = subprocess.Popen([sys.executable, __file__], env=env, cwd=REPO, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)

    def _ask(self, request: dict) -> dict:
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        answer = self.server.stdout.readline()
        assert answer, f"tests/kill_driver.py ended (exit {self.server.wait()})"
        return json.loads(answer)

    def start(self, flow: str, config_json: str, root: Path, how: str, at: int, logs: Path) -> int:
        """Start `flow` in a child that SIGKILLs itself at its `at`-th atomic write (`how`: during or after it);
        its output goes to `logs`.out and `logs`.err. Returns its pid."""
        return self._ask({"start": [flow, config_json, str(root), how, at, f"{logs}.out", f"{logs}.err"]})["pid"]

    def wait(self, pid: int) -> int:
        """The child's return code, as subprocess gives it (-9: killed by SIGKILL)."""
        return self._ask({"wait": pid})["returncode"]

    def close(self) -> None:
        """End the `serve` process (at once, if it is stuck waiting for a child)."""
        self.server.stdin.close()
        try:
            self.server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.server.kill()


if __name__ == "__main__":
    serve()
