"""Shared fixtures; Prefect settings are environment variables, so they are set before it is imported."""
import os
import socket
import tempfile

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="regularity-prefect-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)  # tests never talk to a real server
# nor look at port 4200 or write the checkout's .prefect/: with 4200 held (another checkout's server, a stopped one),
# `regularity run` said so on stderr before a hostile input's error, and recorded a moved port in the user's home.
# The tests of the default port and home set both themselves.
os.environ["REGULARITY_PREFECT_HOME"] = tempfile.mkdtemp(prefix="regularity-home-")
with socket.socket() as _probe:
    _probe.bind(("127.0.0.1", 0))
    os.environ["REGULARITY_PREFECT_PORT"] = str(_probe.getsockname()[1])

from core.runtime import set_wait_policy  # noqa: E402

set_wait_policy()  # as the CLI does, before a test loads torch: tests share the cores with other processes

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API (SQLite in a temp dir) for all flow tests of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def session_torch_threads() -> int:
    """torch's intra-op threads as the session began (OMP_NUM_THREADS, else the cores)."""
    import torch

    return torch.get_num_threads()


@pytest.fixture(autouse=True)
def torch_threads_as_at_start(session_torch_threads):
    """Every test starts with torch's threads as the session began. A flow run in this process sets them for its
    tasks (`configure_runtime`, `task_dataset`: the cores shared by the workers) and leaves them set, so without
    this the tests after it ran with another thread count than alone; on a busy 2-core machine, 2 threads made
    small models' steps several times slower (test_training.py: 7 s alone, 40 s after a flow test)."""
    import torch

    torch.set_num_threads(session_torch_threads)
    yield
    torch.set_num_threads(session_torch_threads)


@pytest.fixture(scope="session")
def flow_processes(prefect_harness):
    """Flow runs in processes of their own, on the session's API, that can SIGKILL themselves mid-write
    (tests/kill_driver.py): each is forked from one process that imported torch and Prefect once."""
    from prefect.settings import PREFECT_API_URL

    from kill_driver import FlowProcesses

    processes = FlowProcesses({**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()})
    yield processes
    processes.close()


@pytest.fixture
def prefect_log():
    """Every message logged through Prefect's loggers during the test, in order (flow and task run logs)."""
    import logging

    class Records(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    handler = Records()
    logging.getLogger("prefect").addHandler(handler)
    yield handler.messages
    logging.getLogger("prefect").removeHandler(handler)
