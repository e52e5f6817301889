"""`regularity up`: server, deployments of deployments/prefect.yaml and a worker. A run triggered through the API,
or through the UI in a real browser, writes the same tables as the same config run directly."""
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows import server
from flows.cscore import CScoreFlowConfig, cscore_flow
from flows.registry import FLOWS
from flows.train import TrainFlowConfig, train_flow

SMALL = {"dataset": {"name": "digits", "n_train": 300, "n_test": 100}, "model": "mlp_w8_d1", "n_models": 3,
         "shard_size": 2, "train": {"epochs": 2, "batch_size": 32}}
CHROMIUM = "/usr/bin/chromium"  # Debian's package; `make test` installs it (never `playwright install`)
# root needs --no-sandbox; the rest keeps Chromium off the (closed) network
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
RUN_TIMEOUT_S = 300


def test_every_flow_has_a_deployment():
    spec = yaml.safe_load(server.DEPLOYMENTS.read_text())
    entrypoints = {d["entrypoint"] for d in spec["deployments"]}
    assert entrypoints == {f"{e.module.replace('.', '/')}.py:{e.function}" for e in FLOWS.values()}
    assert all(d["work_pool"]["name"] == server.WORK_POOL for d in spec["deployments"])


@pytest.fixture(scope="module")
def private_server(tmp_path_factory):
    """`up` on a free port with its own Prefect home, shared by this module's tests; `down` afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("REGULARITY_PREFECT_HOME", str(tmp_path_factory.mktemp("prefect")))
        env.setenv(server.PORT_ENV, str(port))
        env.delenv("PREFECT_API_URL", raising=False)
        # the worker `up` starts looks for scheduled runs every second, not Prefect's default 10 s: a triggered run
        # starts at once instead of waiting up to 10 s for the next poll (what is tested is unchanged)
        env.setenv("PREFECT_WORKER_QUERY_SECONDS", "1")
        try:
            yield server.up()
        finally:
            server.down()


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


@pytest.mark.usefixtures("prefect_harness")
def test_a_deployment_run_writes_what_a_direct_run_writes(private_server, tmp_path):
    assert private_server.startswith("http://127.0.0.1:")
    assert run_deployment("train/mnist1d", {"config": SMALL, "data_root": str(tmp_path / "worker")}) == "COMPLETED"
    direct = Path(train_flow(TrainFlowConfig.model_validate(SMALL), data_root=str(tmp_path / "direct")))
    assert_same_tables(tmp_path / "worker" / "runs" / "train" / direct.name, direct, ["models.parquet"])
    assert (server.prefect_home() / "worker.pid").is_file()


def created_run(api: str, deployment: str, name: str, timeout_s: float = 60) -> str:
    """The id of the flow run called `name` of `deployment`, once the API has it."""
    deadline = time.monotonic() + timeout_s
    body = json.dumps({"flow_runs": {"name": {"any_": [name]}, "deployment_id": {"any_": [deployment]}}}).encode()
    while True:
        request = urllib.request.Request(f"{api}/api/flow_runs/filter", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request) as response:
            runs = json.load(response)
        if runs:
            return runs[0]["id"]
        if time.monotonic() > deadline:
            pytest.fail(f"no flow run {name!r} of deployment {deployment} after {timeout_s:.0f} s")
        time.sleep(1)


def logs_end() -> str:
    """The ends of the worker's and the server's logs, for a failure message."""
    home = server.prefect_home()
    return (f"the worker's log ends:\n{server.tail(home / 'worker.log')}\n"
            f"the server's log ends:\n{server.tail(server.server_log())}")


def final_state(api: str, flow_run: str, timeout_s: float = RUN_TIMEOUT_S) -> str:
    """The flow run's terminal state type, polled from the API; on timeout, fail with its state and the worker's log."""
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(f"{api}/api/flow_runs/{flow_run}") as response:
            state = json.load(response)["state"] or {}
        if state.get("type") in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            return state["type"]
        if time.monotonic() > deadline:
            pytest.fail(f"flow run {flow_run} still {state.get('type')} ({state.get('message')}) after "
                        f"{timeout_s:.0f} s; {logs_end()}")
        time.sleep(1)


# ---- the UI, in headless Chromium -------------------------------------------------------------------------------

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
@pytest.mark.usefixtures("prefect_harness")
def test_a_run_started_in_the_ui_writes_what_a_direct_run_writes(private_server, tmp_path):
    from playwright.sync_api import sync_playwright

    with urllib.request.urlopen(f"{private_server}/api/deployments/name/cscore/digits") as response:
        deployment = json.load(response)["id"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        failed_calls = []  # API errors the UI only shows as a toast: reported with any failure below
        page.on("response", lambda r: failed_calls.append(f"{r.status} {r.status_text} {r.request.method} {r.url}")
                if r.status >= 400 and "/api/" in r.url else None)
        page.on("requestfailed", lambda r: failed_calls.append(f"no answer ({r.failure}) {r.method} {r.url}"))
        try:
            page.goto(f"{private_server}/deployments/deployment/{deployment}/run")
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
