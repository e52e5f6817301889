"""The project-local Prefect server: loopback only, analytics off, an explicit API URL wins, `down` stops the worker;
a port held by another checkout's server or another program is refused when asked for, moved off when it is the
default, and never stopped. (That the server starts once, in its home, and stops: tests/test_deployments.py, on the
server `up` starts there.)"""
import contextlib
import os
import re
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from flows import server, server_auth, server_port
from flows.cli import main


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def local(tmp_path, monkeypatch):
    """Settings that point at a private port and home, so a developer's server is never touched."""
    monkeypatch.setenv("REGULARITY_PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv(server_port.PORT_ENV, str(free_port()))
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
    monkeypatch.setattr(server, "STOP_TIMEOUT_S", 1)
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


# ---- a port held by something that is not this checkout's server ---------------------------------------------------

class HealthOnly(BaseHTTPRequestHandler):
    """A web app that answers GET /api/health like a Prefect server (the old test of "our server") and 404 otherwise."""

    def do_GET(self):  # noqa: N802  (http.server's name)
        self.send_response(200 if self.path == "/api/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"true" if self.path == "/api/health" else b'{"detail": "Not Found"}')

    def log_message(self, *args):
        pass


class AsksForCredentials(HealthOnly):
    """A server that answers 401 to everything but its health check, as a Prefect server with basic auth does."""

    def do_GET(self):  # noqa: N802
        self.send_response(200 if self.path == "/api/health" else 401)
        self.end_headers()
        self.wfile.write(b"true" if self.path == "/api/health" else b'{"exception_message": "Unauthorized"}')


class NotHttp(socketserver.StreamRequestHandler):
    """A program that speaks another protocol on the port: a greeting, then it hangs up."""

    def handle(self):
        self.wfile.write(b"SSH-2.0-OpenSSH_9.2\r\n")


@contextlib.contextmanager
def listening(handler) -> Iterator[int]:
    """A stub server with `handler` on a free loopback port, for the duration of the block; yields its port."""
    base = ThreadingHTTPServer if issubclass(handler, BaseHTTPRequestHandler) else socketserver.ThreadingTCPServer
    stub = base(("127.0.0.1", 0), handler)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        yield stub.server_address[1]
    finally:
        stub.shutdown()
        stub.server_close()


NOT_PREFECT = "a program that is not a Prefect server"
HOLDERS = {  # stub: (who it is said to be, how its owner stops it)
    HealthOnly: (f"{NOT_PREFECT} (GET /api/admin/settings: HTTP 404)", "stop that program"),
    AsksForCredentials: ("another server, which asks for credentials (another checkout's Prefect server with "
                         "authentication?)", "stop it from the checkout that started it"),
    NotHttp: (f"{NOT_PREFECT} (no HTTP answer: BadStatusLine)", "stop that program"),  # not what it sent
}


def bindable(port: int) -> bool:
    """True when this test could listen on 127.0.0.1:`port` (an independent check of a suggested free port)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("handler", list(HOLDERS), ids=lambda h: h.__name__)
def test_an_asked_for_port_held_by_another_program_is_refused_with_the_way_out(local, tmp_path, monkeypatch, handler):
    who, how_to_stop = HOLDERS[handler]
    with listening(handler) as port:
        monkeypatch.setenv(server_port.PORT_ENV, str(port))
        with pytest.raises(RuntimeError) as refused:
            server.start_server()
        said = str(refused.value)
        head = f"port {port} ({server_port.PORT_ENV}) is held by {who}"
        assert said.startswith(head) and "\n" not in said, said
        suggested = re.fullmatch(re.escape(head) + r", not by this checkout's Prefect server: set "
                                 rf"{server_port.PORT_ENV} to a free port \(e\.g\. (\d+)\), or "
                                 rf"{re.escape(how_to_stop)}", said)
        assert suggested, said
        assert int(suggested.group(1)) > port and bindable(int(suggested.group(1)))
        assert not (tmp_path / "prefect" / server_port.SERVER_PID_FILE).exists()  # no server of ours was started


def test_the_default_port_held_by_another_program_moves_ours_and_every_process_agrees(local, tmp_path, monkeypatch,
                                                                                      capsys):
    monkeypatch.delenv(server_port.PORT_ENV)
    record = tmp_path / "prefect" / server_port.SERVER_PORT_FILE
    with listening(HealthOnly) as port:
        monkeypatch.setattr(server_port, "DEFAULT_PORT", port)
        said, up = server.server_status()
        assert not up and not record.exists()  # status only looks
        assert said == (f"this checkout's Prefect server (home {tmp_path / 'prefect'}) is not answering on port "
                        f"{port}: it is held by {HOLDERS[HealthOnly][0]}; `regularity server start`, `run` and `up` "
                        "start ours on a free port near it")
        moved = int(server.local_settings()["PREFECT_SERVER_API_PORT"])
        assert moved != port and bindable(moved) and record.read_text() == f"{moved}\n"
        assert capsys.readouterr().err == (
            f"regularity: port {port} is held by {HOLDERS[HealthOnly][0]}, not by this checkout's Prefect server: this "
            f"checkout's server uses port {moved} instead (recorded in {record}; set {server_port.PORT_ENV} to choose "
            "another)\n")
        assert server.local_settings()["PREFECT_API_URL"] == f"http://127.0.0.1:{moved}/api"
        assert capsys.readouterr().err == ""  # said once, when chosen
        code = "from flows import server; print(server.local_settings()['PREFECT_API_URL'])"
        other = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True,
                               cwd=server_port.REPO_ROOT, check=True)
        assert other.stdout == f"http://127.0.0.1:{moved}/api\n"  # a later command: the recorded port
        monkeypatch.setenv(server_port.PORT_ENV, str(moved + 1))
        assert server.local_settings()["PREFECT_SERVER_API_PORT"] == str(moved + 1)  # asked for: the setting wins


def test_stop_and_down_leave_another_program_running_and_say_so(local, tmp_path, monkeypatch):
    """A stale pid file whose number now belongs to another (live) process is not obeyed either."""
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    home = tmp_path / "prefect"
    try:
        with listening(HealthOnly) as port:
            monkeypatch.setenv(server_port.PORT_ENV, str(port))
            for stop in (server.stop_server, lambda: server.down()):
                home.mkdir(exist_ok=True)
                (home / server_port.SERVER_PID_FILE).write_text(str(stranger.pid))
                (home / server_port.SERVER_PORT_FILE).write_text(f"{port}\n")
                assert stop() == (f"this checkout's Prefect server is not running (its stale {home / 'server.pid'} "
                                  f"removed); port {port} is held by {HOLDERS[HealthOnly][0]}, left running: "
                                  "stop that program")
                assert stranger.poll() is None and server_port.port_holder(port).who == HOLDERS[HealthOnly][0]
                assert not (home / server_port.SERVER_PID_FILE).exists()
                assert not (home / server_port.SERVER_PORT_FILE).exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_status_and_a_malformed_port_setting(local, monkeypatch, capsys):
    port = local["PREFECT_SERVER_API_PORT"]
    assert main(["server", "status"]) == 1
    assert capsys.readouterr().out == (f"this checkout's Prefect server (home {local['PREFECT_HOME']}) is not "
                                       f"answering on port {port}: down\n")
    monkeypatch.setenv(server_port.PORT_ENV, "42OO")
    assert main(["server", "start"]) == 2
    assert capsys.readouterr().err == (f"regularity: error: {server_port.PORT_ENV}='42OO' is not a TCP port: set it "
                                       "to a free port such as 4300, or unset it\n")
    assert server.stop_server() == "this checkout's Prefect server is not running"  # stopping needs no port


def cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    """`regularity ARGS` in another process, as the checkout whose Prefect home is `home` (no port asked for)."""
    env = {**os.environ, "REGULARITY_PREFECT_HOME": str(home)}
    env.pop(server_port.PORT_ENV, None)
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], env=env, capture_output=True, text=True,
                          cwd=server_port.REPO_ROOT, timeout=120)


def test_another_checkouts_server_is_refused_avoided_and_never_stopped(local, tmp_path, monkeypatch, capsys):
    """One real server, of checkout A (its own home); checkout B (another home) meets it on its port."""
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("REGULARITY_PREFECT_HOME", str(home_a))
    for name in (server_auth.SERVER_AUTH, server_auth.CLIENT_AUTH):
        monkeypatch.delenv(name, raising=False)
    port = int(local["PREFECT_SERVER_API_PORT"])
    api = server.start_server()
    pid = int((home_a / server_port.SERVER_PID_FILE).read_text())
    try:
        assert api == f"http://127.0.0.1:{port}/api"
        status = cli("server", "status", home=home_a)  # another process of A: ours, found through server.port
        assert (status.returncode, status.stdout) == (0, f"this checkout's Prefect server is up at {api} (pid {pid}, "
                                                         f"home {home_a})\n")

        monkeypatch.setenv("REGULARITY_PREFECT_HOME", str(home_b))  # checkout B, port asked for
        a_server = f"the Prefect server of {home_a}"
        stop_a = (f"stop it from its own checkout (`regularity server stop` there, or `PREFECT_HOME={home_a} prefect "
                  "server stop`)")
        with pytest.raises(RuntimeError, match=rf"^port {port} \({server_port.PORT_ENV}\) is held by "
                                               rf"{re.escape(a_server)}, not by this checkout's Prefect server: set "
                                               rf"{server_port.PORT_ENV} to a free port \(e\.g\. \d+\), or "
                                               rf"{re.escape(stop_a)}$"):
            server.start_server()
        assert main(["server", "status"]) == 1
        refused = f"on port {port}: it is held by {a_server}; `regularity server start` refuses it"
        assert refused in capsys.readouterr().out
        assert main(["server", "stop"]) == 0 and main(["down"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out == [f"this checkout's Prefect server is not running; port {port} is held by {a_server}, left "
                       f"running: {stop_a}"] * 2
        assert server_port.port_holder(port) == server_port.PortHolder(False, a_server, stop_a)
        assert server_port.alive(pid)

        monkeypatch.delenv(server_port.PORT_ENV)  # checkout B, default port: moves off A's server
        monkeypatch.setattr(server_port, "DEFAULT_PORT", port)
        moved = int(server.local_settings()["PREFECT_SERVER_API_PORT"])
        assert moved != port and f"port {port} is held by {a_server}" in capsys.readouterr().err
        assert cli("server", "status", home=home_b).stdout == (f"this checkout's Prefect server (home {home_b}) is not "
                                                                f"answering on port {moved}: down\n")
    finally:
        monkeypatch.setenv("REGULARITY_PREFECT_HOME", str(home_a))
        said = server.down()
    assert said == f"Prefect server {pid} stopped" and not server_port.alive(pid)
    assert server_port.port_holder(port) is None
    assert not (home_a / server_port.SERVER_PID_FILE).exists() and not (home_a / server_port.SERVER_PORT_FILE).exists()


def test_a_second_server_of_the_same_home_is_refused_and_one_starting_is_waited_for(local, tmp_path, monkeypatch):
    """server.pid names a live Prefect process (a stand-in here): never a second server on its database."""
    home, port = tmp_path / "prefect", int(local["PREFECT_SERVER_API_PORT"])
    home.mkdir()
    code = "import sys, time; time.sleep(float(sys.argv[1]))"
    stand_in = subprocess.Popen([sys.executable, "-c", code, "60", "prefect-server-stand-in"])
    try:
        (home / server_port.SERVER_PID_FILE).write_text(str(stand_in.pid))
        (home / server_port.SERVER_PORT_FILE).write_text(f"{port + 1}\n")
        with pytest.raises(RuntimeError) as refused:
            server.start_server()
        assert str(refused.value) == (f"this checkout's Prefect server (pid {stand_in.pid}) runs on port {port + 1}, "
                                      f"not on port {port}, and a second one would share its database: unset "
                                      f"{server_port.PORT_ENV} or set it to that port, or stop that server first "
                                      "(`regularity server stop`)")
    finally:
        stand_in.kill()
        stand_in.wait()
    # lives until its stdin closes, so it is alive however long start_server takes to look (a 1 s sleeper was not,
    # under load, and a real server was started)
    starting = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", "prefect-server-stand-in"],
                                stdin=subprocess.PIPE)
    (home / server_port.SERVER_PID_FILE).write_text(str(starting.pid))
    (home / server_port.SERVER_PORT_FILE).write_text(f"{port}\n")  # another command started it on this port
    waits = []

    def exit_once_waited_for(seconds: float) -> None:
        """The first wait of start_server's loop ends the stand-in, which never served."""
        waits.append(seconds)
        starting.stdin.close()
        starting.wait()

    monkeypatch.setattr(server, "time", SimpleNamespace(monotonic=time.monotonic, sleep=exit_once_waited_for))
    with pytest.raises(RuntimeError, match=rf"^the Prefect server on port {port} exited; the end of "):
        server.start_server()
    assert waits == [0.5] and starting.returncode == 0  # waited for it once, then saw it exit
    assert not (home / "server.log").exists()  # none of ours was spawned
