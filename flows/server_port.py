"""Which port: this checkout's Prefect server, told from another's. Its home (`prefect_home`), the pid and port files
there, who holds a loopback port, and the port this checkout's server uses (moved off one held by another).
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HOME_ENV = "REGULARITY_PREFECT_HOME"
PORT_ENV = "REGULARITY_PREFECT_PORT"
DEFAULT_PORT = 4200
NEARBY_PORTS = 100  # when the default port is another's, the first free one of the next NEARBY_PORTS is taken
# a busy server on 2 shared cores was seen to take over 2 s for one request; a program that has not answered after
# this long is not taken for a Prefect server
ANSWER_TIMEOUT_S = 15


def prefect_home() -> Path:
    """Where the local server keeps its SQLite database and pid file."""
    return Path(os.environ.get(HOME_ENV, REPO_ROOT / ".prefect")).resolve()


# A Prefect 3 server names its home in GET /api/admin/settings ("home"): that is how our own server (whose home is
# prefect_home()) is told from another checkout's on the same port. That route sits behind the server's basic auth,
# and our credentials are never sent to a server not yet known to be ours: a server that answers 401 is ours only when
# the process in our home's server.pid is a live Prefect server started on that port (server.port records it).

SERVER_PORT_FILE = "server.port"  # the port of this home's server: written when it starts or moves, removed on stop
SERVER_PID_FILE = "server.pid"  # prefect.cli._server_utils.SERVER_PID_FILE_NAME: `prefect server stop` reads it


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
    if not alive(pid):
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


def alive(pid: int) -> bool:
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
