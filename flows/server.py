"""The project-local Prefect server: SQLite under `.prefect/`, loopback only, analytics off, and basic
authentication when the user's environment asks for it.

Settings are environment variables, so they must be in place before `prefect` is imported.
Here: the environment of the server and its clients, and its life cycle (start, stop, status, `up`, `down`);
which port and whose server holds it: `flows/server_port.py`; basic authentication: `flows/server_auth.py`.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flows.server_auth import auth_settings, check_auth
from flows.server_port import (
    PORT_ENV,
    REPO_ROOT,
    SERVER_PID_FILE,
    SERVER_PORT_FILE,
    alive,
    api_port,
    configured_port,
    explicit_port,
    free_port_near,
    port_holder,
    prefect_home,
    record_port,
    recorded_port,
    running_server_pid,
)

START_TIMEOUT_S = 120


def _loopback_settings() -> dict[str, str]:
    """Address, home and analytics of the project-local server and its clients."""
    port = api_port()
    return {
        "PREFECT_HOME": str(prefect_home()),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",  # always: expose it through a TLS reverse proxy (README), never directly
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # also stops outbound telemetry
    }


def local_settings() -> dict[str, str]:
    """Environment of a client or server bound to the project-local API (with the basic-auth pair when one is set)."""
    return {**_loopback_settings(), **auth_settings()}


def ephemeral_settings() -> dict[str, str]:
    """Environment for Prefect's per-process temporary API (quick runs): a throwaway Prefect home, so
    its SQLite file is never the one the local server serves."""
    home = tempfile.mkdtemp(prefix="regularity-ephemeral-prefect-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    # a fresh home migrates its database first: Prefect's 20 s start-up limit was seen to run out on 2 busy cores
    timeout = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # Prefect's temporary server (127.0.0.1, a free port) inherits SERVER_AUTH from the environment; its client then
    # needs CLIENT_AUTH, so the pair goes here too
    return {"PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": timeout, **auth_settings()}


def _prefect(*args: str) -> subprocess.CompletedProcess:
    """Run the Prefect CLI of this environment with the local settings."""
    env = {**os.environ, **local_settings()}
    return subprocess.run([sys.executable, "-m", "prefect", *args], env=env, capture_output=True, text=True)


def start_server() -> str:
    """Start this checkout's server in the background unless it is already up; returns the API URL once the server is
    up and demands the authentication the environment asks for (see `check_auth`). A port held by another checkout's
    server or another program is refused (`api_port` has already moved off it unless REGULARITY_PREFECT_PORT asked
    for it), and so is a second server of our home on another port."""
    settings = local_settings()
    api_url, port = settings["PREFECT_API_URL"], int(settings["PREFECT_SERVER_API_PORT"])
    holder = port_holder(port)
    if holder is None:
        starting = running_server_pid()  # another command of this checkout started it a moment ago
        if starting is not None and recorded_port() == port:
            _wait_until_ours(port, lambda: alive(starting))
        elif starting is not None:
            elsewhere = f"on port {recorded_port()}" if recorded_port() else "on another port"
            raise RuntimeError(f"this checkout's Prefect server (pid {starting}) runs {elsewhere}, not on port {port}, "
                               f"and a second one would share its database: unset {PORT_ENV} or set it to that port, "
                               "or stop that server first (`regularity server stop`)")
        else:
            spawned = _spawn_server(settings)
            _wait_until_ours(port, lambda: spawned.poll() is None)
    elif not holder.ours:
        asked = f" ({PORT_ENV})" if explicit_port() is not None else ""
        raise RuntimeError(f"port {port}{asked} is held by {holder.who}, not by this checkout's Prefect server: "
                           f"set {PORT_ENV} to a free port (e.g. {free_port_near(port)}), or {holder.how_to_stop}")
    check_auth(api_url)
    return api_url


def _wait_until_ours(port: int, running: Callable[[], bool]) -> None:
    """Wait until this checkout's server answers on `port`; raise with the end of its log if it exits (`running()`
    turns false) or takes longer than START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while (holder := port_holder(port)) is None or not holder.ours:
        if not running() or time.monotonic() > deadline:
            ended = "exited" if not running() else f"did not answer within {START_TIMEOUT_S} s"
            raise RuntimeError(f"the Prefect server on port {port} {ended}; the end of {server_log()}:\n"
                               f"{tail(server_log())}\nIf port {port} is taken, set {PORT_ENV} to a free port.")
        time.sleep(0.5)


def server_log() -> Path:
    """Where the local server's output goes."""
    return prefect_home() / "server.log"


def tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a text file ('' if it is missing)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _spawn_server(settings: dict[str, str]) -> subprocess.Popen:
    """`prefect server start` with `settings` in its own session, its output appended to `server_log()`, its pid
    where `prefect server stop` looks and its port in server.port. Not `--background`: that leaves the server writing
    to pipes nobody reads once the starting command exits, and an error the server logs then fails the request it
    was serving."""
    prefect_home().mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings}
    with open(server_log(), "ab") as log:  # the child keeps its own handle
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start"], env=env, stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    record_port(int(settings["PREFECT_SERVER_API_PORT"]))
    (prefect_home() / SERVER_PID_FILE).write_text(str(server.pid))
    return server


def stop_server() -> str:
    """Stop this checkout's server (the process in our home's server.pid, once `running_server_pid` vouches for it)
    and wait for it to exit; never another checkout's server, whatever holds the port. Needs no auth setting, so a
    wrong one never keeps a server running. Returns one line, which names what holds the port if it is not ours."""
    pid, pid_file = running_server_pid(), prefect_home() / SERVER_PID_FILE
    try:
        port = configured_port()  # read before server.port goes
    except RuntimeError:  # a malformed REGULARITY_PREFECT_PORT must not keep our server running
        port = None
    if pid is not None:
        said = _stop_process(pid, "Prefect server")
    elif pid_file.exists():
        said = f"this checkout's Prefect server is not running (its stale {pid_file} removed)"
    else:
        said = "this checkout's Prefect server is not running"
    pid_file.unlink(missing_ok=True)
    (prefect_home() / SERVER_PORT_FILE).unlink(missing_ok=True)
    holder = port_holder(port) if port else None
    if holder is not None and not holder.ours:
        said += f"; port {port} is held by {holder.who}, left running: {holder.how_to_stop}"
    return said


def server_status() -> tuple[str, bool]:
    """One line on this checkout's server (up, where, its pid and home; or down, and what holds its port), and whether
    it is up. Changes nothing: no port is chosen or recorded."""
    port, home = configured_port(), prefect_home()
    holder, pid = port_holder(port), running_server_pid()
    if holder is not None and holder.ours:
        started = f"pid {pid}, " if pid else ""  # none when it was started without our commands
        return f"this checkout's Prefect server is up at http://127.0.0.1:{port}/api ({started}home {home})", True
    said = f"this checkout's Prefect server (home {home}) is not answering on port {port}"
    if pid is not None:
        return f"{said}, though its process {pid} runs; see {server_log()}, or `regularity server stop`", False
    if holder is None:
        return f"{said}: down", False
    if explicit_port() is not None:
        then = f"`regularity server start` refuses it: set {PORT_ENV} to a free port, or {holder.how_to_stop}"
    else:
        then = "`regularity server start`, `run` and `up` start ours on a free port near it"
    return f"{said}: it is held by {holder.who}; {then}", False


def api_owner(explicit_api: str | None) -> str:
    """Whose API a command talks to, for the line it prints: the user's PREFECT_API_URL, or this checkout's server."""
    return "from PREFECT_API_URL" if explicit_api else f"this checkout's Prefect server, home {prefect_home()}"


def use_local_server() -> str:
    """Point this process at the local server (started if needed), unless PREFECT_API_URL is already set."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    api_url = start_server()
    os.environ.update(local_settings())
    return api_url


WORK_POOL = "regularity"
DEPLOYMENTS = REPO_ROOT / "deployments" / "prefect.yaml"


def _worker_pid_file() -> Path:
    """Where `up` records the background worker's process id."""
    return prefect_home() / "worker.pid"


STOP_TIMEOUT_S = 20


def _stop_process(pid: int, name: str) -> str:
    """SIGTERM `pid`'s process group (a worker and the flow runs it started), or the process alone when it leads no
    group; SIGKILL what is left after STOP_TIMEOUT_S, since a worker can hang in its shutdown once the server is
    unreachable. Returns one line, `name` first."""
    try:
        send = os.killpg if os.getpgid(pid) == pid else os.kill
        send(pid, signal.SIGTERM)
    except ProcessLookupError:
        return f"{name} {pid} stopped"
    if _exits_within(pid, STOP_TIMEOUT_S):
        return f"{name} {pid} stopped"
    send(pid, signal.SIGKILL)
    _exits_within(pid, STOP_TIMEOUT_S)  # gone when we return: a `down` then `up` must not meet it
    return f"{name} {pid} killed (it ignored SIGTERM for {STOP_TIMEOUT_S} s)"


def _exits_within(pid: int, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for process `pid` to end; True once it has."""
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not alive(pid)


def up() -> str:
    """Server, work pool, every deployment of deployments/prefect.yaml, and a background worker; returns the UI URL."""
    api_url = start_server()
    env = {**os.environ, **local_settings(), "REGULARITY_REPO": str(REPO_ROOT)}
    pool = _prefect("work-pool", "create", WORK_POOL, "--type", "process")
    if pool.returncode != 0 and "already exists" not in pool.stdout + pool.stderr:
        raise RuntimeError(f"could not create work pool {WORK_POOL}:\n{pool.stdout}{pool.stderr}")
    deployed = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file",
                               str(DEPLOYMENTS)], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if deployed.returncode != 0:
        raise RuntimeError(f"`prefect deploy` failed:\n{deployed.stdout}{deployed.stderr}")
    pid_file = _worker_pid_file()
    if not (pid_file.is_file() and alive(int(pid_file.read_text()))):
        log = open(prefect_home() / "worker.log", "ab")  # noqa: SIM115  (the worker keeps writing to it)
        worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", WORK_POOL],
                                  cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        pid_file.write_text(str(worker.pid))
    return api_url.removesuffix("/api")


def down() -> str:
    """Stop the worker started by `up`, then the server."""
    pid_file, said = _worker_pid_file(), []
    if pid_file.is_file():
        pid = int(pid_file.read_text())
        if alive(pid):
            said.append(_stop_process(pid, "worker"))
        pid_file.unlink()
    return "\n".join([*said, stop_server()])
