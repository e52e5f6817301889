"""The task runner is a setting: the `cscore` flow on a local Dask cluster writes the local runner's tables, and
every task sizes its torch threads from the worker it runs on."""
from pathlib import Path

import pandas as pd
import pytest

from core.config import RuntimeConfig, available_cores
from core.data.config import DatasetConfig
from core.runs.files import read_provenance
from core.training.config import TrainConfig
from flows.cscore import CScoreFlowConfig, cscore_flow
from tasks.common import task_threads

pytest.importorskip("prefect_dask", reason="the dask extra is part of the test install")
distributed = pytest.importorskip("distributed")

CONFIG = CScoreFlowConfig(dataset=DatasetConfig(name="digits", n_train=200, n_test=50), model="mlp_w16_d1",
                          train=TrainConfig(epochs=2, batch_size=32), ratios=[0.3, 0.7], runs_per_ratio=4, shard_size=2)


@pytest.mark.usefixtures("prefect_harness")
def test_dask_cluster_writes_the_same_tables_as_local_threads(tmp_path):
    share = max(1, available_cores() // 2)  # what each of 2 workers has, and so the local side's setting
    local = Path(cscore_flow(CONFIG.model_copy(update={"runtime": RuntimeConfig(threads=share)}),
                             data_root=str(tmp_path / "local")))
    dask = Path(cscore_flow(CONFIG.model_copy(update={"runtime": RuntimeConfig(task_runner="dask", dask_workers=2)}),
                            data_root=str(tmp_path / "dask")))
    assert local.name == dask.name  # the runner is not part of the run id
    for table in ("runs", "cscores", "cscore_by_ratio", "test_cscores", "summary"):
        pd.testing.assert_frame_equal(pd.read_parquet(dask / f"{table}.parquet"), pd.read_parquet(local / f"{table}.parquet"))
    shards = sorted((dask / "shards").glob("runs-*.parquet"))
    assert len(shards) == 4  # two shards per ratio, run by the workers
    # each worker's tasks gave torch the worker's share of the cores, not the client's 2 x that
    assert {read_provenance(shard)["hardware"]["torch_threads"] for shard in shards} == {share}


def threads_in_a_worker(runtimes: list[RuntimeConfig], **cluster) -> list[int]:
    """`task_threads(runtime)` of each runtime as a task on a fresh one-worker local cluster sees it."""
    with distributed.LocalCluster(n_workers=1, dashboard_address=None, **cluster) as local, \
            distributed.Client(local) as client:
        return client.gather([client.submit(task_threads, runtime, pure=False) for runtime in runtimes])


@pytest.mark.parametrize("cluster,expected", [
    ({"threads_per_worker": 2, "processes": True}, 1),  # Dask's nanny sets OMP_NUM_THREADS=1 by default
    ({"threads_per_worker": 1, "processes": True, "env": {"OMP_NUM_THREADS": "3"}}, 3),  # `OMP_NUM_THREADS=3 dask worker`
    ({"threads_per_worker": 2, "processes": False}, max(1, available_cores() // 2)),  # no nanny: cores per thread
], ids=["nanny-default", "nanny-omp-3", "no-nanny"])
def test_a_task_takes_its_threads_from_the_worker_not_the_client(cluster, expected, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the in-process worker reads this process's environment
    client_view = RuntimeConfig(task_runner="dask", dask_address="tcp://elsewhere:8786", max_workers=1)
    set_by_user = client_view.model_copy(update={"threads": 5})  # a setting is a setting
    assert threads_in_a_worker([client_view, set_by_user], **cluster) == [expected, 5]


def test_outside_a_worker_the_local_runner_shares_the_cores():
    assert task_threads(RuntimeConfig(max_workers=2)) == max(1, available_cores() // 2)
    assert task_threads(RuntimeConfig(threads=3, max_workers=2)) == 3
