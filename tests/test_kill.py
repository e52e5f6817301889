"""SIGKILL in the middle of a table write, then right after one: the re-run recomputes only what is missing and ends
with the tables (and weights) of an uninterrupted run. Every flow whose tasks write shards: cscore, proxies,
prune_grid, weight_correlation, dct_sparse, subspaces, deq, lime_data and lime_pretrain (train: test_flow_train)."""
import re
import signal
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from core.data.config import DatasetConfig
from core.training.config import TrainConfig
from flows.cscore import CScoreFlowConfig
from flows.proxies import ProxiesFlowConfig
from flows.prune_grid import PruneGridFlowConfig, PruningConfig
from flows.registry import FLOWS
from test_flow_dct_sparse import CONFIG as DCT_SPARSE
from test_flow_deq import CONFIG as DEQ
from test_flow_lime_data import CONFIG as LIME_DATA
from test_flow_lime_pretrain import CONFIG as LIME_PRETRAIN
from test_flow_subspaces import CONFIG as SUBSPACES
from test_weight_correlation import CONFIG as WEIGHT_CORRELATION

pytestmark = pytest.mark.usefixtures("prefect_harness")

DATA = DatasetConfig(name="digits", n_train=240, n_test=60, label_noise=0.1)
TRAIN = TrainConfig(epochs=2, batch_size=32, lr=0.05)
CONFIGS = {
    "cscore": CScoreFlowConfig(dataset=DATA, model="mlp_w16_d1", train=TRAIN, ratios=[0.3, 0.7], runs_per_ratio=4,
                               shard_size=2),
    "proxies": ProxiesFlowConfig(dataset=DATA, model="mlp_w16_d1", train=TRAIN, n_models=4, shard_size=2,
                                 n_bootstrap=0, cleanlab_folds=3),
    "prune_grid": PruneGridFlowConfig(dataset=DATA, widths=[8], depths=[1, 2], data_fractions=[1.0], seeds=[0, 1],
                                      pruning=PruningConfig(levels=2, rewind_step=2), train=TRAIN),
    "weight_correlation": WEIGHT_CORRELATION, "dct_sparse": DCT_SPARSE, "subspaces": SUBSPACES, "deq": DEQ,
    "lime_data": LIME_DATA, "lime_pretrain": LIME_PRETRAIN,
}
# (how, at which atomic write of that attempt): config.json is write 1 of the first; later attempts skip what exists
KILLS = [("during", 3), ("after", 2)]
TIMINGS = ["seconds", "epoch_seconds", "inference_seconds", "train_seconds"]  # wall-clock (deq, lime_pretrain,
# subspaces): the rest must be equal
# A unit of work (one `compute_once`, one pruning level) writes its files in turn and is done once its last file is:
# until then a re-run computes it again, all its files. Each rule maps a file to the last file of its unit.
UNIT_ENDS = [
    (r"weights/([^/]+)/rewind\.safetensors", r"shards/\1/level-00.parquet"),  # prune_grid: weights, then the table
    (r"weights/([^/]+)/(level-\d+)\.safetensors", r"shards/\1/\2.parquet"),
    (r"weights/(round-\d+)\.safetensors", r"shards/\1.parquet"),  # weight_correlation: weights, then the table
    (r"shards/(epochs|inference|baselines)/(.+)", r"shards/costs/\2"),  # deq: an arm's tables, then its costs
    (r"shards/alpha/(.+)", r"shards/summary/\1"),  # subspaces: points along alpha, then the summary
    (r"examples/(.+)", r"shards/lengths/\1"),  # lime_data: the examples, then their lengths
    (r"shards/pretrain/(.+)\.parquet", r"pretrained/\1.safetensors"),  # lime_pretrain: the curve, then the weights
]


def attempt(processes, flow: str, root: Path, how: str, at: int, logs: Path) -> tuple[int, str]:
    """Run `flow` in a process of its own that SIGKILLs itself at its `at`-th atomic write (`how`: during or after
    it), its output to `logs`.out and .err; its return code and the end of its stderr."""
    code = processes.wait(processes.start(flow, CONFIGS[flow].model_dump_json(), root, how, at, logs))
    return code, Path(f"{logs}.err").read_text()[-3000:]


def finished_files(folder: Path) -> dict[Path, int]:
    """Every table and weights file a reader can see, with its modification time; each must be whole."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".parquet", ".safetensors") and not p.name.startswith("."))
    for path in files:
        pq.read_metadata(path) if path.suffix == ".parquet" else load_file(path)  # raises on a partial file
    return {p: p.stat().st_mtime_ns for p in files}


def assert_same_outputs(folder: Path, reference: Path) -> None:
    """The same tables and weights, with the same contents (provenance aside)."""
    ours = sorted(p.relative_to(folder) for p in finished_files(folder))
    assert ours == sorted(p.relative_to(reference) for p in finished_files(reference))
    for name in ours:
        if name.suffix == ".parquet":
            ours, theirs = (comparable(pd.read_parquet(f / name), name) for f in (folder, reference))
            pd.testing.assert_frame_equal(ours, theirs, obj=str(name))
        else:
            theirs = load_file(reference / name)
            assert all(torch.equal(value, theirs[key]) for key, value in load_file(folder / name).items()), name


def comparable(table: pd.DataFrame, name: Path) -> pd.DataFrame:
    """`table` without its wall-clock columns; in findings.parquet, a claim on seconds keeps its row, not its figures."""
    table = table.drop(columns=TIMINGS, errors="ignore")
    if name.name == "findings.parquet":
        timed = table["measure"].str.contains("seconds")
        table.loc[timed, ["estimate", "se", "verdict"]] = None
    return table


def unit_end(name: str) -> str:
    """The last file of the unit of work that writes `name` (a path inside the run folder): `name` itself, unless a
    rule of UNIT_ENDS says otherwise."""
    for pattern, end in UNIT_ENDS:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, end, name)
    return name


def finished_work(files: dict[Path, int], folder: Path) -> dict[Path, int]:
    """The files no re-run may write again: those of every unit of work whose last file is written."""
    return {p: t for p, t in files.items() if folder / unit_end(p.relative_to(folder).as_posix()) in files}


@pytest.mark.parametrize("flow", sorted(CONFIGS))
def test_killed_runs_resume_to_the_tables_of_an_uninterrupted_run(flow, tmp_path, flow_processes):
    run, _ = FLOWS[flow].load()
    reference = Path(run(CONFIGS[flow], data_root=str(tmp_path / "uninterrupted")))
    root = tmp_path / "killed"
    folder = root / "runs" / flow / reference.name
    before: dict[Path, int] = {}
    for i, (how, at) in enumerate(KILLS):
        code, stderr = attempt(flow_processes, flow, root, how, at, tmp_path / f"attempt-{i}")
        assert code == -signal.SIGKILL, stderr
        after = finished_files(folder)
        kept = finished_work(before, folder)
        assert {p: after.get(p) for p in kept} == kept  # nothing finished earlier was written again
        assert len(after) > len(before) or how == "during"  # an `after` kill always lands one more file
        before = after
    assert any(p.name.endswith(".tmp") for p in folder.rglob(".*")), "a `during` kill leaves a partial temp file"
    assert Path(run(CONFIGS[flow], data_root=str(root))) == folder
    kept = finished_work(before, folder)
    assert {p: t for p, t in finished_files(folder).items() if p in kept} == kept
    assert_same_outputs(folder, reference)
