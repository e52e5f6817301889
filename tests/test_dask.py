"""The task runner is a setting: the `cscore` flow on a local Dask cluster writes the local runner's tables."""
from pathlib import Path

import pandas as pd
import pytest

from core.config import RuntimeConfig
from core.data import DatasetConfig
from core.training import TrainConfig
from flows.cscore import CScoreFlowConfig, cscore_flow

pytest.importorskip("prefect_dask", reason="the dask extra is part of the test install")

CONFIG = CScoreFlowConfig(dataset=DatasetConfig(name="digits", n_train=200, n_test=50), model="mlp_w16_d1",
                          train=TrainConfig(epochs=2, batch_size=32), ratios=[0.3, 0.7], runs_per_ratio=4, shard_size=2)


@pytest.mark.usefixtures("prefect_harness")
def test_dask_cluster_writes_the_same_tables_as_local_threads(tmp_path):
    one_thread = {"threads": 1}  # the same torch threads on both sides
    local = Path(cscore_flow(CONFIG.model_copy(update={"runtime": RuntimeConfig(**one_thread)}),
                             data_root=str(tmp_path / "local")))
    dask = Path(cscore_flow(CONFIG.model_copy(update={"runtime": RuntimeConfig(task_runner="dask", dask_workers=2,
                                                                               **one_thread)}),
                            data_root=str(tmp_path / "dask")))
    assert local.name == dask.name  # the runner is not part of the run id
    for table in ("runs", "cscores", "cscore_by_ratio", "test_cscores", "summary"):
        pd.testing.assert_frame_equal(pd.read_parquet(dask / f"{table}.parquet"), pd.read_parquet(local / f"{table}.parquet"))
    assert len(list((dask / "shards").glob("*.parquet"))) == 4  # two shards per ratio, run by the workers
