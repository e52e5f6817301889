"""`regularity up`: server, deployments of deployments/prefect.yaml and a worker; a deployment run writes
the same tables as the same config run directly."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows import server
from flows.registry import FLOWS
from flows.train import TrainFlowConfig, train_flow

SMALL = {"dataset": {"name": "digits", "n_train": 300, "n_test": 100}, "model": "mlp_w8_d1", "n_models": 3,
         "shard_size": 2, "train": {"epochs": 2, "batch_size": 32}}


def test_every_flow_has_a_deployment():
    spec = yaml.safe_load(server.DEPLOYMENTS.read_text())
    entrypoints = {d["entrypoint"] for d in spec["deployments"]}
    assert entrypoints == {f"{e.module.replace('.', '/')}.py:{e.function}" for e in FLOWS.values()}
    assert all(d["work_pool"]["name"] == server.WORK_POOL for d in spec["deployments"])


@pytest.fixture
def private_server(tmp_path, monkeypatch):
    """`up` on a free port with its own Prefect home; `down` afterwards, whatever happens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("REGULARITY_PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv(server.PORT_ENV, str(port))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    try:
        yield server.up()
    finally:
        server.down()


def run_deployment(name: str, parameters: dict) -> str:
    """Trigger a deployment and wait for it, from a process that talks to the private server."""
    code = ("import json, sys; from prefect.deployments import run_deployment; "
            "run = run_deployment(sys.argv[1], parameters=json.loads(sys.argv[2]), timeout=300); "
            "print(run.state.type.value)")
    env = {**os.environ, **server.local_settings()}
    done = subprocess.run([sys.executable, "-c", code, name, json.dumps(parameters)], env=env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.usefixtures("prefect_harness")
def test_a_deployment_run_writes_what_a_direct_run_writes(private_server, tmp_path):
    assert private_server.startswith("http://127.0.0.1:")
    assert run_deployment("train/mnist1d", {"config": SMALL, "data_root": str(tmp_path / "worker")}) == "COMPLETED"
    direct = Path(train_flow(TrainFlowConfig.model_validate(SMALL), data_root=str(tmp_path / "direct")))
    worker = tmp_path / "worker" / "runs" / "train" / direct.name
    pd.testing.assert_frame_equal(pd.read_parquet(worker / "models.parquet"), pd.read_parquet(direct / "models.parquet"))
    assert (server.prefect_home() / "worker.pid").is_file()
