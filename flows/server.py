"""The project-local Prefect server: SQLite under `.prefect/`, loopback only, analytics off, and basic
authentication when the user's environment asks for it.

Settings are environment variables, so they must be in place before `prefect` is imported.
"""
from __future__ import annotations

import atexit
import base64
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PORT_ENV = "REGULARITY_PREFECT_PORT"
DEFAULT_PORT = 4200
START_TIMEOUT_S = 120


def prefect_home() -> Path:
    """Where the local server keeps its SQLite database and pid file."""
    return Path(os.environ.get("REGULARITY_PREFECT_HOME", REPO_ROOT / ".prefect")).resolve()


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


def _loopback_settings() -> dict[str, str]:
    """Address, home and analytics of the project-local server and its clients."""
    port = int(os.environ.get(PORT_ENV, DEFAULT_PORT))
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
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as response:
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
    """Start the local server in the background unless it is already up; returns the API URL once the server is up
    and demands the authentication the environment asks for (see `check_auth`)."""
    api_url = local_settings()["PREFECT_API_URL"]
    if not is_healthy(api_url):
        server = _spawn_server()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not is_healthy(api_url):
            if server.poll() is not None or time.monotonic() > deadline:
                ended = "exited" if server.poll() is not None else f"did not answer within {START_TIMEOUT_S} s"
                raise RuntimeError(f"the Prefect server at {api_url} {ended}; the end of {server_log()}:\n"
                                   f"{tail(server_log())}\nIf port {local_settings()['PREFECT_SERVER_API_PORT']} is "
                                   f"taken, set {PORT_ENV}.")
            time.sleep(0.5)
    check_auth(api_url)
    return api_url


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


def _spawn_server() -> subprocess.Popen:
    """`prefect server start` in its own session, its output appended to `server_log()`, its pid where
    `prefect server stop` looks. Not `--background`: that leaves the server writing to pipes nobody reads
    once the starting command exits, and an error the server logs then fails the request it was serving."""
    prefect_home().mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **local_settings()}
    with open(server_log(), "ab") as log:  # the child keeps its own handle
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start"], env=env, stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (prefect_home() / SERVER_PID_FILE).write_text(str(server.pid))
    return server


def stop_server() -> str:
    """Stop the local server started by `start_server`; returns what Prefect said. Needs no auth setting (it stops
    the process recorded under the Prefect home), so a wrong one never keeps a server running."""
    env = {**os.environ, **_loopback_settings()}
    stopped = subprocess.run([sys.executable, "-m", "prefect", "server", "stop"], env=env, capture_output=True, text=True)
    return (stopped.stdout + stopped.stderr).strip()


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
    """True when a process with this id exists (one of our own children that exited is reaped, not alive)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:  # not our child: started by another `regularity up`
        pass
    try:
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


WORKER_STOP_TIMEOUT_S = 20


def _stop_worker(pid: int) -> str:
    """SIGTERM the worker's process group (it and the flow runs it started); SIGKILL what is left after
    WORKER_STOP_TIMEOUT_S, since a worker can hang in its shutdown once the server is unreachable."""
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not _alive(pid):
        return f"worker {pid} stopped"
    os.killpg(pid, signal.SIGKILL)
    return f"worker {pid} killed (it ignored SIGTERM for {WORKER_STOP_TIMEOUT_S} s)"


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
            said.append(_stop_worker(pid))
        pid_file.unlink()
    return "\n".join([*said, stop_server()])
