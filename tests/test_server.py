"""The project-local Prefect server: loopback only, analytics off, an explicit API URL wins, `down` stops the worker.
(That the server starts once, in its home, and stops: tests/test_deployments.py, on the server `up` starts there.)"""
import socket
import subprocess
import sys

import pytest

from flows import server


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def local(tmp_path, monkeypatch):
    """Settings that point at a private port and home, so a developer's server is never touched."""
    monkeypatch.setenv("REGULARITY_PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv(server.PORT_ENV, str(free_port()))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return server.local_settings()


def test_settings_bind_loopback_with_analytics_off(local, tmp_path):
    port = local["PREFECT_SERVER_API_PORT"]
    assert local["PREFECT_API_URL"] == f"http://127.0.0.1:{port}/api"
    assert local["PREFECT_SERVER_API_HOST"] == "127.0.0.1"
    assert local["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert local["PREFECT_HOME"] == str(tmp_path / "prefect")


def test_an_explicit_api_url_wins(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    assert server.use_local_server() == "http://127.0.0.1:1/api"


@pytest.mark.parametrize("ignores_sigterm", [False, True])
def test_down_stops_the_worker_even_one_that_ignores_sigterm(local, tmp_path, monkeypatch, ignores_sigterm):
    monkeypatch.setattr(server, "WORKER_STOP_TIMEOUT_S", 1)
    handler = "signal.SIG_IGN" if ignores_sigterm else "signal.SIG_DFL"
    code = f"import signal, time; signal.signal(signal.SIGTERM, {handler}); print('ready', flush=True); time.sleep(60)"
    worker = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert worker.stdout.readline().strip() == "ready"
    (tmp_path / "prefect").mkdir()
    (tmp_path / "prefect" / "worker.pid").write_text(str(worker.pid))
    said = server.down()
    ending = "killed (it ignored SIGTERM for 1 s)" if ignores_sigterm else "stopped"
    assert said.splitlines()[0] == f"worker {worker.pid} {ending}"
    assert worker.poll() is not None and not (tmp_path / "prefect" / "worker.pid").exists()
