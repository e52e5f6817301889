"""Basic authentication of the project-local Prefect server: the settings from the user's environment, and the
checks that the server answers and demands exactly what they ask for.
"""
from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request

from flows.server_port import ANSWER_TIMEOUT_S

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

