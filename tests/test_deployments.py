"""`regularity up` with basic authentication: the server (started once, in a private home), deployments of
deployments/prefect.yaml and a worker. With only PREFECT_SERVER_API_AUTH_STRING set, the server refuses anonymous API
requests, while our CLI, the work pool and deployments `up` creates, its worker, and a user logged in to the UI all
authenticate; the secret lands in no file and no output. A run triggered through the API, or through the UI in a real
browser, writes the same tables as the same config run directly. One server serves the whole module: each `up` costs
about 45 s."""
import base64
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows import server, server_auth, server_port
from flows.cscore import CScoreFlowConfig, cscore_flow
from flows.registry import FLOWS
from flows.train import TrainFlowConfig, train_flow
from test_server import free_port

SMALL = {"dataset": {"name": "digits", "n_train": 300, "n_test": 100}, "model": "mlp_w8_d1", "n_models": 3,
         "shard_size": 2, "train": {"epochs": 2, "batch_size": 32}}
CHROMIUM = "/usr/bin/chromium"  # Debian's package; `make test` installs it (never `playwright install`)
# root needs --no-sandbox; the rest keeps Chromium off the (closed) network
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
RUN_TIMEOUT_S = 300
STOP_TIMEOUT_S = 10  # `prefect server stop` sends SIGTERM without waiting for the server to exit

PASSWORD = secrets.token_urlsafe(16)
AUTH = f"regularity:{PASSWORD}"
TOKEN = base64.b64encode(AUTH.encode()).decode()  # what travels in the Authorization header


def only_server_auth(env: pytest.MonkeyPatch) -> None:
    """Only the server's auth setting, as a user exposing the server would set it: our code must hand it to its clients."""
    env.setenv(server_auth.SERVER_AUTH, AUTH)
    env.delenv(server_auth.CLIENT_AUTH, raising=False)


def proxied(url: str) -> str:
    """`url` of the local server under another name, as a reverse proxy would serve it: not the server's own
    127.0.0.1 (so ui-settings shows that our code passes PREFECT_UI_API_URL on), yet one the browser reaches."""
    return url.replace("://127.0.0.1:", "://localhost:", 1)


def test_every_flow_has_a_deployment():
    spec = yaml.safe_load(server.DEPLOYMENTS.read_text())
    entrypoints = {d["entrypoint"] for d in spec["deployments"]}
    assert entrypoints == {f"{e.module.replace('.', '/')}.py:{e.function}" for e in FLOWS.values()}
    assert all(d["work_pool"]["name"] == server.WORK_POOL for d in spec["deployments"])


@pytest.fixture(scope="module")
def private_server(prefect_harness, tmp_path_factory):
    """`up` on a free port with its own Prefect home and `only_server_auth`, shared by this module's tests; `down`
    afterwards, which must leave no server answering and no pid file. After `prefect_harness`: the session's temporary
    API, which the direct runs here use, must start before the auth setting (it would inherit it, and refuse them)."""
    port = free_port()
    with pytest.MonkeyPatch.context() as env:
        only_server_auth(env)
        env.setenv("PREFECT_UI_API_URL", proxied(f"http://127.0.0.1:{port}/api"))
        env.setenv("REGULARITY_PREFECT_HOME", str(tmp_path_factory.mktemp("prefect")))
        env.setenv(server_port.PORT_ENV, str(port))
        env.delenv("PREFECT_API_URL", raising=False)
        # the worker `up` starts looks for scheduled runs every second, not Prefect's default 10 s: a triggered run
        # starts at once instead of waiting up to 10 s for the next poll (what is tested is unchanged)
        env.setenv("PREFECT_WORKER_QUERY_SECONDS", "1")
        try:
            yield server.up()
        finally:
            server.down()
        # still inside the auth settings: is_healthy sends the auth string, so this does not rest on /health being open
        assert stops_answering(server.local_settings()["PREFECT_API_URL"])
        assert not (server_port.prefect_home() / server_port.SERVER_PID_FILE).exists()


def stops_answering(api_url: str, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """True once the server at `api_url` fails its health check, within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while server_auth.is_healthy(api_url):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


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


def api_json(url: str, body: dict | None = None) -> object:
    """JSON answer of an authenticated GET (or POST `body` to) `url`; any status but 200 fails the test."""
    status, answer = call(url, auth=AUTH, body=body)
    assert status == 200, f"{status} from {url}: {answer}"
    return answer


def assert_secret_in_no_file(*folders: Path) -> None:
    """Neither the auth string nor its header form is written in any file under `folders`."""
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                content = path.read_bytes()
                assert PASSWORD.encode() not in content and TOKEN.encode() not in content, f"the secret is in {path}"


# ---- the server `up` started ------------------------------------------------------------------------------------

def test_the_server_of_up_runs_once_in_its_private_home(private_server):
    """`start_server` finds the running server (no second one); its database, log and pid file are in its home."""
    pid_file = server_port.prefect_home() / server_port.SERVER_PID_FILE
    pid = pid_file.read_text().strip()
    assert server.start_server() == f"{private_server}/api"
    assert pid.isdigit() and pid_file.read_text().strip() == pid  # a second server would have rewritten it
    assert (server_port.prefect_home() / "prefect.db").exists()  # SQLite inside the given home
    log = server.server_log().read_text()
    assert f"Check out the dashboard at {private_server}" in log  # kept, not piped away
    from prefect.cli._server_utils import SERVER_PID_FILE_NAME

    assert server_port.SERVER_PID_FILE == SERVER_PID_FILE_NAME  # where `prefect server stop`, hence `down`, looks


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
    assert status == 200 and ui["auth"] == "BASIC" and ui["api_url"] == proxied(api)  # the UI asks for the login


def test_regularity_run_authenticates_and_completes(private_server, tmp_path):
    args = ["run", "train", "--data-root", str(tmp_path), "--set", "dataset.name=digits", "--set", "dataset.n_train=64",
            "--set", "dataset.n_test=32", "--set", "model=mlp_w8_d1", "--set", "n_models=2", "--set", "train.epochs=1",
            "--set", "train.batch_size=32"]
    assert server_auth.CLIENT_AUTH not in os.environ  # only the server's setting
    assert "PREFECT_API_URL" not in os.environ
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
    assert_secret_in_no_file(tmp_path, server_port.prefect_home())


def test_a_client_without_or_with_another_auth_string_is_told_so(private_server, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.delenv(server_auth.SERVER_AUTH)
    with pytest.raises(RuntimeError, match=f"requires authentication: set {server_auth.CLIENT_AUTH}=user:password"):
        server.start_server()
    monkeypatch.setenv(server_auth.CLIENT_AUTH, f"regularity:{PASSWORD}x")
    with pytest.raises(RuntimeError, match="refuses the auth string") as refused:
        server.start_server()
    assert PASSWORD not in str(refused.value)
    monkeypatch.setenv(server_auth.SERVER_AUTH, AUTH)  # both set, differently
    assert main(["server", "start"]) == 2
    said = capsys.readouterr().err
    assert f"{server_auth.SERVER_AUTH} and {server_auth.CLIENT_AUTH} differ" in said and PASSWORD not in said


def test_a_running_server_without_authentication_is_not_taken_for_one(monkeypatch, tmp_path):
    only_server_auth(monkeypatch)
    home = tmp_path / "prefect"

    class Open(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802  (answers everything, as our own server started without authentication does)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"home": str(home)}).encode())  # /api/admin/settings names our home

        def log_message(self, *args):
            pass

    stub = ThreadingHTTPServer(("127.0.0.1", 0), Open)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(server_port.PORT_ENV, str(stub.server_address[1]))
        monkeypatch.setenv("REGULARITY_PREFECT_HOME", str(home))
        with pytest.raises(RuntimeError, match="answers without authentication although"):
            server.start_server()
    finally:
        stub.shutdown()
        stub.server_close()


def test_one_auth_setting_is_copied_to_the_other_and_bad_ones_are_refused(monkeypatch):
    only_server_auth(monkeypatch)
    monkeypatch.delenv(server_auth.SERVER_AUTH)
    assert server_auth.auth_settings() == {}
    assert server_auth.SERVER_AUTH not in server.local_settings()
    assert server_auth.CLIENT_AUTH not in server.local_settings()
    for given in (server_auth.SERVER_AUTH, server_auth.CLIENT_AUTH):
        with monkeypatch.context() as env:
            env.setenv(given, AUTH)
            pair = {server_auth.SERVER_AUTH: AUTH, server_auth.CLIENT_AUTH: AUTH}
            assert server_auth.auth_settings() == pair
            assert server.local_settings().items() >= pair.items()
            assert server.local_settings()["PREFECT_SERVER_API_HOST"] == "127.0.0.1"
            assert server.ephemeral_settings().items() >= pair.items()  # Prefect's temporary server inherits it
    for bad in ["", PASSWORD, f":{PASSWORD}", "regularity:"]:
        monkeypatch.setenv(server_auth.CLIENT_AUTH, bad)
        with pytest.raises(RuntimeError, match=f"^{server_auth.CLIENT_AUTH} must read user:password") as refused:
            server_auth.auth_settings()
        assert PASSWORD not in str(refused.value)


# ---- runs of deployments ----------------------------------------------------------------------------------------

def run_deployment(name: str, parameters: dict) -> str:
    """Trigger a deployment and wait for it, from a process that talks to the private server."""
    code = ("import json, sys; from prefect.deployments import run_deployment; "
            "run = run_deployment(sys.argv[1], parameters=json.loads(sys.argv[2]), timeout=300, poll_interval=1); "
            "print(run.state.type.value)")
    env = {**os.environ, **server.local_settings()}
    done = subprocess.run([sys.executable, "-c", code, name, json.dumps(parameters)], env=env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def assert_same_tables(run_a: Path, run_b: Path, names: list[str]) -> None:
    """Both run folders hold equal Parquet tables `names`."""
    for name in names:
        pd.testing.assert_frame_equal(pd.read_parquet(run_a / name), pd.read_parquet(run_b / name), obj=name)


def test_the_authenticated_worker_runs_a_deployment_as_a_direct_run_does(private_server, tmp_path):
    """The worker of `up` runs train/mnist1d into the tables a direct run writes, and writes the secret nowhere."""
    assert private_server.startswith("http://127.0.0.1:")
    assert run_deployment("train/mnist1d", {"config": SMALL, "data_root": str(tmp_path / "worker")}) == "COMPLETED"
    direct = Path(train_flow(TrainFlowConfig.model_validate(SMALL), data_root=str(tmp_path / "direct")))
    worker_runs = list((tmp_path / "worker" / "runs" / "train").glob("*/models.parquet"))
    assert [p.parent.name for p in worker_runs] == [direct.name]  # one run, with the direct run's config hash
    assert_same_tables(tmp_path / "worker" / "runs" / "train" / direct.name, direct, ["models.parquet"])
    assert (server_port.prefect_home() / "worker.pid").is_file()
    assert_secret_in_no_file(tmp_path, server_port.prefect_home())  # worker.log, the SQLite database, the pid files


def created_run(api_root: str, deployment: str, name: str, timeout_s: float = 60) -> str:
    """The id of the flow run called `name` of `deployment`, once the API has it."""
    deadline = time.monotonic() + timeout_s
    body = {"flow_runs": {"name": {"any_": [name]}, "deployment_id": {"any_": [deployment]}}}
    while not (runs := api_json(f"{api_root}/api/flow_runs/filter", body)):
        if time.monotonic() > deadline:
            pytest.fail(f"no flow run {name!r} of deployment {deployment} after {timeout_s:.0f} s")
        time.sleep(1)
    return runs[0]["id"]


def logs_end() -> str:
    """The ends of the worker's and the server's logs, for a failure message."""
    home = server_port.prefect_home()
    return (f"the worker's log ends:\n{server.tail(home / 'worker.log')}\n"
            f"the server's log ends:\n{server.tail(server.server_log())}")


def final_state(api_root: str, flow_run: str, timeout_s: float = RUN_TIMEOUT_S) -> str:
    """The flow run's terminal state type, polled from the API; on timeout, fail with its state and the worker's log."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = api_json(f"{api_root}/api/flow_runs/{flow_run}")["state"] or {}
        if state.get("type") in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            return state["type"]
        if time.monotonic() > deadline:
            pytest.fail(f"flow run {flow_run} still {state.get('type')} ({state.get('message')}) after "
                        f"{timeout_s:.0f} s; {logs_end()}")
        time.sleep(1)


# ---- the UI, in headless Chromium -------------------------------------------------------------------------------

def log_in(page, ui: str, path: str) -> None:
    """Open `path` of the UI at `ui`, which sends an unauthenticated user to its login page; log in there as a user
    would and wait to be sent back to `path`."""
    page.goto(ui + path)
    page.wait_for_url(re.compile(r"/login\b"), timeout=60_000)
    page.get_by_placeholder("admin:pass").fill(AUTH)
    page.get_by_role("button", name="Login").click()
    page.wait_for_url(re.compile(re.escape(path) + "$"), timeout=60_000)


def form_field(page, label: str):
    """The innermost block of the parameter form whose label reads `label` (as the UI titles pydantic fields)."""
    return page.locator(f"xpath=//span[@class='schema-form-property__label' and normalize-space()='{label}']"
                        "/ancestor::*[contains(concat(' ', @class, ' '), ' p-label ')][1]")


def fill_cscore_form(page, run_name: str, data_root: str) -> dict:
    """Fill the custom-run form of the cscore deployment as a user would; returns the config it should submit."""
    from playwright.sync_api import expect

    page.locator(".p-label", has=page.get_by_text("Run Name", exact=True)).locator("input").fill(run_name)
    for label, value in [("N Train (Optional)", "300"), ("N Test (Optional)", "100")]:
        block = form_field(page, label)
        block.get_by_role("button", name="int", exact=True).click()  # the field is int | None, None selected
        block.locator("input").fill(value)
    form_field(page, "Model (Optional)").locator("textarea").fill("mlp_w8_d1")
    form_field(page, "Epochs (Optional)").locator("input").fill("2")
    form_field(page, "Runs Per Ratio (Optional)").locator("input").fill("2")
    ratios = form_field(page, "Ratios (Optional)")
    for n in range(9, 3, -1):  # delete the first six of the nine default ratios, one re-render at a time
        expect(ratios.locator("input")).to_have_count(n)
        ratios.locator(".schema-form-property-array-item__control > button").first.click()
    expect(ratios.locator("input")).to_have_count(3)
    ratios.locator("input").first.fill("0.75")
    root = form_field(page, "data_root (Optional)")
    root.get_by_role("button", name="str", exact=True).click()
    root.locator("input, textarea").fill(data_root)
    return {"dataset": {"name": "digits", "n_train": 300, "n_test": 100}, "model": "mlp_w8_d1",
            "train": {**CScoreFlowConfig().train.model_dump(), "epochs": 2},  # the form starts from the flow's default
            "ratios": [0.75, 0.8, 0.9], "runs_per_ratio": 2}


def submit(page, failed_calls: list[str]) -> None:
    """Click Submit and wait for the deployment's Runs tab; click once more only if the server answered the first
    click with a 5xx ("Oops. Something went wrong." was seen once in ten runs here, the run not created)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(2):
        seen = len(failed_calls)
        page.get_by_role("button", name="Submit").click()
        try:
            page.wait_for_url(re.compile(r"/deployments/deployment/[^/]+\?tab=Runs"), timeout=60_000)
            return
        except PlaywrightTimeout:
            if attempt or not any(call.startswith("5") for call in failed_calls[seen:]):
                raise


@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="needs Debian's chromium: `make browser-deps` (in make test)")
def test_a_run_started_in_the_ui_writes_what_a_direct_run_writes(private_server, tmp_path):
    """A user logs in to the UI, fills the cscore deployment's form; the run writes a direct run's tables."""
    from playwright.sync_api import sync_playwright

    deployment = api_json(f"{private_server}/api/deployments/name/cscore/digits")["id"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        failed_calls = []  # API errors the UI only shows as a toast: reported with any failure below
        page.on("response", lambda r: failed_calls.append(f"{r.status} {r.status_text} {r.request.method} {r.url}")
                if r.status >= 400 and "/api/" in r.url else None)
        page.on("requestfailed", lambda r: failed_calls.append(f"no answer ({r.failure}) {r.method} {r.url}"))
        try:
            # at the UI's API address, as behind a reverse proxy; the 401s before the login land in failed_calls
            log_in(page, proxied(private_server), f"/deployments/deployment/{deployment}/run")
            expected = fill_cscore_form(page, "browser-test", str(tmp_path / "ui"))
            submit(page, failed_calls)
            created = created_run(private_server, deployment, "browser-test")  # the form created it
            page.reload()  # a fresh load lists it (the live list was seen to lag by over 30 s in CI)
            page.get_by_role("link", name="browser-test").first.click(timeout=60_000)
            page.wait_for_url(re.compile(r"/runs/flow-run/"))
            flow_run = re.search(r"/runs/flow-run/([0-9a-f-]+)", page.url).group(1)
            assert flow_run == created
            assert final_state(private_server, flow_run) == "COMPLETED"
            page.reload()  # the API decides; the page must then show it too
            badge = page.locator(".page-heading-flow-run__meta .state-badge")
            badge.filter(has_text=re.compile("Completed|Failed|Crashed|Cancelled")).wait_for(timeout=60_000)
            assert badge.inner_text().strip() == "Completed"
            direct = Path(cscore_flow(CScoreFlowConfig.model_validate(expected), data_root=str(tmp_path / "direct")))
            page.reload()  # a fresh load: the live lists were seen to lag by over 30 s in CI
            page.get_by_role("tablist").get_by_text("Artifacts", exact=True).click()
            for key in [f"{direct.name}-report", f"{direct.name}-summary", "holdout shards, round 1: shards done (%)"]:
                page.get_by_text(key, exact=True).first.wait_for(timeout=60_000)  # report, summary, progress listed
        except Exception as err:
            page.screenshot(path=tmp_path / "failure.png", full_page=True)
            raise AssertionError(f"the UI test failed; API errors seen by the page: {failed_calls}; {logs_end()}") from err
        finally:
            browser.close()
    ui_run = tmp_path / "ui" / "runs" / "cscore" / direct.name  # same config hash: the form sent `expected`
    assert_same_tables(ui_run, direct, ["examples.parquet", "runs.parquet", "cscores.parquet"])
    assert len(pd.read_parquet(ui_run / "cscores.parquet")) == 300
    assert_secret_in_no_file(tmp_path, server_port.prefect_home())
