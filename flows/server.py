"""The project-local Prefect server: SQLite under `.prefect/`, loopback only, analytics off.

Settings are environment variables, so they must be in place before `prefect` is imported.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PORT_ENV = "REGULARITY_PREFECT_PORT"
DEFAULT_PORT = 4200
START_TIMEOUT_S = 120


def prefect_home() -> Path:
    """Where the local server keeps its SQLite database and pid file."""
    return Path(os.environ.get("REGULARITY_PREFECT_HOME", REPO_ROOT / ".prefect")).resolve()


def local_settings() -> dict[str, str]:
    """Environment of a client or server bound to the project-local API."""
    port = int(os.environ.get(PORT_ENV, DEFAULT_PORT))
    return {
        "PREFECT_HOME": str(prefect_home()),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # also stops outbound telemetry
    }


def ephemeral_settings() -> dict[str, str]:
    """Environment for Prefect's per-process temporary API (tests, quick runs; records may be lost)."""
    return {"PREFECT_HOME": str(prefect_home()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def is_healthy(api_url: str) -> bool:
    """True when a Prefect API answers its health check at `api_url`."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _prefect(*args: str) -> subprocess.CompletedProcess:
    """Run the Prefect CLI of this environment with the local settings."""
    env = {**os.environ, **local_settings()}
    return subprocess.run([sys.executable, "-m", "prefect", *args], env=env, capture_output=True, text=True)


def start_server() -> str:
    """Start the local server in the background unless it is already up; returns the API URL."""
    api_url = local_settings()["PREFECT_API_URL"]
    if is_healthy(api_url):
        return api_url
    prefect_home().mkdir(parents=True, exist_ok=True)
    started = _prefect("server", "start", "--background")
    if started.returncode != 0:
        raise RuntimeError(f"`prefect server start --background` failed:\n{started.stdout}{started.stderr}\n"
                           f"If port {local_settings()['PREFECT_SERVER_API_PORT']} is taken, set {PORT_ENV}.")
    deadline = time.monotonic() + START_TIMEOUT_S
    while not is_healthy(api_url):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Prefect server did not answer at {api_url} within {START_TIMEOUT_S} s")
        time.sleep(0.5)
    return api_url


def stop_server() -> str:
    """Stop the local server started by `start_server`; returns what Prefect said."""
    stopped = _prefect("server", "stop")
    return (stopped.stdout + stopped.stderr).strip()


def use_local_server() -> str:
    """Point this process at the local server (started if needed), unless PREFECT_API_URL is already set."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    api_url = start_server()
    os.environ.update(local_settings())
    return api_url
