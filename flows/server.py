"""The project-local Prefect server: SQLite under `.prefect/`, loopback only, analytics off, and basic
authentication when the user's environment asks for it.

Settings are environment variables, so they must be in place before `prefect` is imported.
"""
from __future__ import annotations

import atexit
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HOME_ENV = "REGULARITY_PREFECT_HOME"
PORT_ENV = "REGULARITY_PREFECT_PORT"
DEFAULT_PORT = 4200
NEARBY_PORTS = 100  # when the default port is another's, the first free one of the next NEARBY_PORTS is taken
START_TIMEOUT_S = 120
# a busy server on 2 shared cores was seen to take over 2 s for one request; a program that has not answered after
# this long is not taken for a Prefect server
ANSWER_TIMEOUT_S = 15


def prefect_home() -> Path:
    """Where the local server keeps its SQLite database and pid file."""
    return Path(os.environ.get(HOME_ENV, REPO_ROOT / ".prefect")).resolve()


# Prefect's basic-auth settings (prefect/settings/models/server/api.py and models/api.py, Prefect 3): the server
# answers 401 to every API request whose `Authorization: Basic` header does not decode to SERVER_AUTH (GET /health and
# /ready excepted, for probes); clients (the CLI, workers, flow runs) send CLIENT_AUTH.
SERVER_AUTH = "PREFECT_SERVER_API_AUTH_STRING"
CLIENT_AUTH = "PREFECT_API_AUTH_STRING"


def auth_settings() -> dict[str, str]:
    """Both basic-auth settings for the local server and its clients, from the user's environment; {} when neither is set.

    When only one is set, the other gets its value. Safer than failing: a server started with only the client's string
    would run WITHOUT authentication while the user believes it has some (fails open), and one started with only the
    server's string would refuse our own CLI and worker. Copying never sends a secret anywhere new: these settings only
    reach the server we start on 127.0.0.1 and the clients we point at it; a PREFECT_API_URL of the user's own (another
    server, Cloud) is left to Prefect, with whatever PREFECT_API_AUTH_STRING the user gave it. Messages name the
    settings, never their values.
    """
    given = {name: os.environ[name] for name in (SERVER_AUTH, CLIENT_AUTH) if name in os.environ}
    for name, value in given.items():
        user, colon, password = value.partition(":")
        if not (user and colon and password):
            raise RuntimeError(f"{name} must read user:password (both parts non-empty)")
    if len(set(given.values())) > 1:
        raise RuntimeError(f"{SERVER_AUTH} and {CLIENT_AUTH} differ: the local server would refuse its own clients; "
                           "give both the same user:password, or set only one")
    return {name: value for value in given.values() for name in (SERVER_AUTH, CLIENT_AUTH)}


# ---- which port: this checkout's server, told from another's -----------------------------------------------------
# A Prefect 3 server names its home in GET /api/admin/settings ("home"): that is how our own server (whose home is
# prefect_home()) is told from another checkout's on the same port. That route sits behind the server's basic auth,
# and our credentials are never sent to a server not yet known to be ours: a server that answers 401 is ours only when
# the process in our home's server.pid is a live Prefect server started on that port (server.port records it).

SERVER_PORT_FILE = "server.port"  # the port of this home's server: written when it starts or moves, removed on stop


@dataclass(frozen=True)
class PortHolder:
    """What answers on a loopback port: this checkout's Prefect server, or something else and how its owner stops it."""
    ours: bool
    who: str
    how_to_stop: str = ""


OURS = PortHolder(ours=True, who="this checkout's Prefect server")


def explicit_port() -> int | None:
    """The port REGULARITY_PREFECT_PORT asks for; None when it is not set."""
    raw = os.environ.get(PORT_ENV)
    if raw is None:
        return None
    if not (raw.strip().isdigit() and 1 <= int(raw) <= 65535):
        raise RuntimeError(f"{PORT_ENV}={raw!r} is not a TCP port: set it to a free port such as 4300, or unset it")
    return int(raw)


def recorded_port() -> int | None:
    """The port recorded in our home's server.port (None when there is none, or it is unreadable)."""
    try:
        text = (prefect_home() / SERVER_PORT_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() and 1 <= int(text) <= 65535 else None


def configured_port() -> int:
    """The port of this checkout's server, without looking at the network: REGULARITY_PREFECT_PORT, else the port
    recorded in our home, else 4200."""
    return explicit_port() or recorded_port() or DEFAULT_PORT


def running_server_pid() -> int | None:
    """The pid in our home's server.pid while that process lives and (where /proc tells) runs Prefect; else None.
    The check keeps a stale pid file, whose number the system gave to another process since, from being obeyed."""
    try:
        pid = int((prefect_home() / SERVER_PID_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not _alive(pid):
        return None
    try:
        return pid if b"prefect" in Path(f"/proc/{pid}/cmdline").read_bytes() else None
    except FileNotFoundError:  # no /proc (macOS): a live pid is all there is to go on
        return pid if not Path("/proc/self").exists() else None


def _listening(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _anonymous_json(url: str) -> tuple[int, object]:
    """HTTP status and JSON body (None when it is not JSON) of GET `url`, sent without credentials."""
    try:
        with urllib.request.urlopen(url, timeout=ANSWER_TIMEOUT_S) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def port_holder(port: int) -> PortHolder | None:
    """Who holds 127.0.0.1:`port`: None (nobody), OURS, or another checkout's server or program."""
    if not _listening(port):
        return None
    not_prefect = "stop that program"
    try:
        status, settings = _anonymous_json(f"http://127.0.0.1:{port}/api/admin/settings")
    except (OSError, http.client.HTTPException) as err:
        # the error's name, not its text: that can quote whatever the program sent
        return PortHolder(False, f"a program that is not a Prefect server (no HTTP answer: {type(err).__name__})",
                          not_prefect)
    if status == 401:
        if running_server_pid() is not None and recorded_port() in (port, None):
            return OURS
        return PortHolder(False, "another server, which asks for credentials (another checkout's Prefect server with "
                                 "authentication?)", "stop it from the checkout that started it")
    home = settings.get("home") if status == 200 and isinstance(settings, dict) else None
    if not isinstance(home, str):
        return PortHolder(False, f"a program that is not a Prefect server (GET /api/admin/settings: HTTP {status})",
                          not_prefect)
    if Path(home).expanduser().resolve() == prefect_home():
        return OURS
    return PortHolder(False, f"the Prefect server of {home}", "stop it from its own checkout (`regularity server "
                             f"stop` there, or `PREFECT_HOME={home} prefect server stop`)")


def _bindable(port: int) -> bool:
    """True when a server could listen on 127.0.0.1:`port` now (SO_REUSEADDR, as uvicorn binds)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_near(port: int) -> int:
    """The first port above `port`, within NEARBY_PORTS, that a server could listen on; else one the system gives."""
    for candidate in range(port + 1, min(port + NEARBY_PORTS, 65535) + 1):
        if _bindable(candidate):
            return candidate
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def record_port(port: int) -> None:
    """Write the port of this home's server to server.port, where every later command (and process) reads it."""
    prefect_home().mkdir(parents=True, exist_ok=True)
    (prefect_home() / SERVER_PORT_FILE).write_text(f"{port}\n")


def api_port() -> int:
    """`configured_port()`, or, when that port is held by something other than this checkout's server and it was not
    asked for by REGULARITY_PREFECT_PORT, a free port near 4200: recorded in our home (so that `run`, `up`, `down` and
    the worker agree) and said on stderr."""
    port = configured_port()
    if explicit_port() is not None or running_server_pid() is not None:
        return port  # the user's choice stands (start_server refuses if it is taken); a running server stays put
    holder = port_holder(port)
    if holder is None or holder.ours:
        return port
    moved = free_port_near(DEFAULT_PORT)
    record_port(moved)
    print(f"regularity: port {port} is held by {holder.who}, not by this checkout's Prefect server: this checkout's "
          f"server uses port {moved} instead (recorded in {prefect_home() / SERVER_PORT_FILE}; set {PORT_ENV} to "
          "choose another)", file=sys.stderr)
    return moved


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


def _status(url: str, auth: str | None) -> int:
    """HTTP status of GET `url` (a URL of the LOCAL server: it carries the local auth string when given)."""
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=ANSWER_TIMEOUT_S) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def is_healthy(api_url: str) -> bool:
    """True when the local Prefect API answers its health check at `api_url`. The auth string goes along when one is
    set, so this does not rest on Prefect exempting GET /health from authentication (3.9 does)."""
    try:
        return _status(f"{api_url}/health", auth_settings().get(CLIENT_AUTH)) == 200
    except OSError:
        return False


def check_auth(api_url: str) -> None:
    """Raise, naming the fix, unless the server at `api_url` demands exactly the authentication this environment asks
    for: none, or the basic-auth string set (a server started earlier without it would leave the API open)."""
    auth = auth_settings().get(CLIENT_AUTH)
    probe = f"{api_url}/admin/version"  # behind the server's authentication, unlike /health
    anonymous = _status(probe, None)
    if auth is None:
        if anonymous == 401:
            raise RuntimeError(f"the Prefect server at {api_url} requires authentication: set {CLIENT_AUTH}=user:password "
                               "to the string it was started with")
        return
    if anonymous != 401:
        raise RuntimeError(f"the Prefect server already running at {api_url} answers without authentication although "
                           f"{SERVER_AUTH} or {CLIENT_AUTH} is set; stop it (`regularity down` or `regularity server "
                           "stop`) and start it again with the setting in place")
    if _status(probe, auth) == 401:
        raise RuntimeError(f"the Prefect server at {api_url} refuses the auth string set in {CLIENT_AUTH} / {SERVER_AUTH}: "
                           "it was started with another one; use that one, or restart the server")


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
            _wait_until_ours(port, lambda: _alive(starting))
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


SERVER_PID_FILE = "server.pid"  # prefect.cli._server_utils.SERVER_PID_FILE_NAME: `prefect server stop` reads it


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


def _alive(pid: int) -> bool:
    """True when a process with this id runs (one of our own children that exited is reaped, not alive; another's
    that exited but is not yet reaped, a zombie, is not alive either)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:  # not our child: started by another `regularity up`
        pass
    try:
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    try:  # e.g. a server started by a bench script that still runs: `down` must not wait for its parent's reaping
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS)
        return True


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
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not _alive(pid)


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
    if not (pid_file.is_file() and _alive(int(pid_file.read_text()))):
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
        if _alive(pid):
            said.append(_stop_process(pid, "worker"))
        pid_file.unlink()
    return "\n".join([*said, stop_server()])
