"""Basic authentication on the project-local server: with PREFECT_SERVER_API_AUTH_STRING set, the server that `regularity
up` starts refuses anonymous API requests, while our CLI, the work pool and deployments `up` creates, and its worker all
authenticate; the secret lands in no file and no output."""
import base64
import json
import os
import secrets
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flows import server
from test_deployments import SMALL, private_server, run_deployment  # noqa: F401  (private_server: `up`/`down` fixture)

PASSWORD = secrets.token_urlsafe(16)
AUTH = f"regularity:{PASSWORD}"
TOKEN = base64.b64encode(AUTH.encode()).decode()  # what travels in the Authorization header
UI_API = "https://regularity.example/api"  # what a TLS reverse proxy would serve the API as


@pytest.fixture(scope="module", autouse=True)
def server_auth_only():
    """Only the server's setting, as a user exposing the server would set it: our code must hand it to its clients.
    Autouse, so it is in place before `private_server` (same scope) runs `up()`."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv(server.SERVER_AUTH, AUTH)
        env.delenv(server.CLIENT_AUTH, raising=False)
        env.setenv("PREFECT_UI_API_URL", UI_API)
        yield


def call(url: str, auth: str | None = None, body: dict | None = None) -> tuple[int, object]:
    """Status and JSON answer of GET (or POST `body` to) `url`, with basic auth `auth` when given."""
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def assert_secret_in_no_file(*folders: Path) -> None:
    """Neither the auth string nor its header form is written in any file under `folders`."""
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                content = path.read_bytes()
                assert PASSWORD.encode() not in content and TOKEN.encode() not in content, f"the secret is in {path}"


def test_the_api_refuses_anonymous_and_wrong_credentials(private_server):
    api = f"{private_server}/api"
    unauthorized = (401, {"exception_message": "Unauthorized"})
    assert call(f"{api}/flows/filter", body={}) == unauthorized
    assert call(f"{api}/admin/version") == unauthorized
    assert call(f"{api}/flows/filter", auth=f"regularity:{PASSWORD}x", body={}) == unauthorized
    assert call(f"{api}/flows/filter", auth=f"admin:{PASSWORD}", body={}) == unauthorized
    status, flows = call(f"{api}/flows/filter", auth=AUTH, body={})
    assert status == 200 and "train" in {f["name"] for f in flows}  # `up` deployed every flow, authenticated
    assert call(f"{api}/admin/version", auth=AUTH)[0] == 200
    assert call(f"{api}/health") == (200, True)  # Prefect exempts GET /health (probes); it tells nothing else
    status, ui = call(f"{private_server}/ui-settings")
    assert status == 200 and ui["auth"] == "BASIC" and ui["api_url"] == UI_API  # the UI asks for the login


def test_regularity_run_authenticates_and_completes(private_server, tmp_path):
    args = ["run", "train", "--data-root", str(tmp_path), "--set", "dataset.name=digits", "--set", "dataset.n_train=64",
            "--set", "dataset.n_test=32", "--set", "model=mlp_w8_d1", "--set", "n_models=2", "--set", "train.epochs=1",
            "--set", "train.batch_size=32"]
    assert server.CLIENT_AUTH not in os.environ and "PREFECT_API_URL" not in os.environ  # only the server's setting
    done = subprocess.run([sys.executable, "-m", "flows.cli", *args], env=dict(os.environ), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"Prefect API: {private_server}/api" in done.stderr  # the running server, not a new or temporary one
    folder = Path(done.stdout.strip().splitlines()[-1])
    assert folder.parent == tmp_path / "runs" / "train" and (folder / "models.parquet").is_file()
    status, runs = call(f"{private_server}/api/flow_runs/filter", auth=AUTH, body={"flows": {"name": {"any_": ["train"]}}})
    assert status == 200
    ours = [r for r in runs if r["parameters"].get("data_root") == str(tmp_path)]
    assert [r["state"]["type"] for r in ours] == ["COMPLETED"]
    assert PASSWORD not in done.stdout + done.stderr and TOKEN not in done.stdout + done.stderr
    assert_secret_in_no_file(tmp_path, server.prefect_home())


def test_the_worker_of_up_authenticates_and_runs_a_deployment(private_server, tmp_path):
    assert run_deployment("train/mnist1d", {"config": SMALL, "data_root": str(tmp_path)}) == "COMPLETED"
    assert len(list((tmp_path / "runs" / "train").glob("*/models.parquet"))) == 1
    assert_secret_in_no_file(tmp_path, server.prefect_home())  # worker.log, the SQLite database, the pid files


def test_a_client_without_or_with_another_auth_string_is_told_so(private_server, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.delenv(server.SERVER_AUTH)
    with pytest.raises(RuntimeError, match=f"requires authentication: set {server.CLIENT_AUTH}=user:password"):
        server.start_server()
    monkeypatch.setenv(server.CLIENT_AUTH, f"regularity:{PASSWORD}x")
    with pytest.raises(RuntimeError, match="refuses the auth string") as refused:
        server.start_server()
    assert PASSWORD not in str(refused.value)
    monkeypatch.setenv(server.SERVER_AUTH, AUTH)  # both set, differently
    assert main(["server", "start"]) == 2
    said = capsys.readouterr().err
    assert f"{server.SERVER_AUTH} and {server.CLIENT_AUTH} differ" in said and PASSWORD not in said


def test_a_running_server_without_authentication_is_not_taken_for_one(monkeypatch, tmp_path):
    class Open(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802  (answers everything, as a server without authentication does)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args):
            pass

    stub = ThreadingHTTPServer(("127.0.0.1", 0), Open)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(server.PORT_ENV, str(stub.server_address[1]))
        monkeypatch.setenv("REGULARITY_PREFECT_HOME", str(tmp_path / "prefect"))
        with pytest.raises(RuntimeError, match="answers without authentication although"):
            server.start_server()
    finally:
        stub.shutdown()
        stub.server_close()


def test_one_auth_setting_is_copied_to_the_other_and_bad_ones_are_refused(monkeypatch):
    monkeypatch.delenv(server.SERVER_AUTH)
    assert server.auth_settings() == {}
    assert server.SERVER_AUTH not in server.local_settings() and server.CLIENT_AUTH not in server.local_settings()
    for given in (server.SERVER_AUTH, server.CLIENT_AUTH):
        with monkeypatch.context() as env:
            env.setenv(given, AUTH)
            pair = {server.SERVER_AUTH: AUTH, server.CLIENT_AUTH: AUTH}
            assert server.auth_settings() == pair
            assert server.local_settings().items() >= pair.items()
            assert server.local_settings()["PREFECT_SERVER_API_HOST"] == "127.0.0.1"
            assert server.ephemeral_settings().items() >= pair.items()  # Prefect's temporary server inherits it
    for bad in ["", PASSWORD, f":{PASSWORD}", "regularity:"]:
        monkeypatch.setenv(server.CLIENT_AUTH, bad)
        with pytest.raises(RuntimeError, match=f"^{server.CLIENT_AUTH} must read user:password") as refused:
            server.auth_settings()
        assert PASSWORD not in str(refused.value)
