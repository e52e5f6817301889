"""The `cscore` flow against a plain per-model loop doing the same training, and its orchestration share.

Run: .venv/bin/python -m bench.cscore [--runs 64]   (from the repository root)
Three timings of the same holdout work (digits, 9 ratios x RUNS models, the flow's default model):
  flow   the `cscore` flow end to end on the project-local Prefect server (tasks, Parquet, figures)
  core   the same pipeline without Prefect, in this process: shards trained through core, the same
         Parquet tables written, scores computed and figures drawn
  loop   every model trained and evaluated one after another with plain PyTorch
Reports loop / flow (speed-up of the pipeline) and 1 - core / flow (the share of the flow's wall
time that orchestration costs: Prefect's flow and task runs, their API calls, artifacts, logging).
The loop only trains and evaluates, so the speed-up also charges the flow for its tables and figures.
Prints one JSON object last.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch

from bench.plain import correct_plain, train_plain
from core.config import derive_seed
from core.data.datasets import load_dataset
from core.models.networks import init_model
from core.training.experiment import INIT_STREAM, ORDER_STREAM, model_seed, random_subsets, train_on_subsets
from flows import server

# ---- knobs ---------------------------------------------------------------------------------
RUNS_PER_RATIO = 64  # models per subset ratio (the figure: 9 ratios x 64)
LOOP_RUNS = 8  # runs per ratio the plain loop really trains; its time is scaled by RUNS / LOOP_RUNS
REPEATS = 2  # timings of flow and core each (interleaved); the fastest of each is reported
THREADS = torch.get_num_threads()  # torch intra-op threads for every side
# ---------------------------------------------------------------------------------------------


def holdout_work(config, dataset):
    """(seeds, subsets) of every planned shard, exactly as the flow's tasks compute them."""
    from flows.cscore import plan_shards

    for shard in plan_shards(config, dataset.n_train):
        seeds = [model_seed(config.seed, i) for i in shard["model_ids"]]
        yield seeds, random_subsets(dataset.n_train, shard["subset_size"], seeds)


def time_core(config, dataset) -> float:
    """Seconds for the flow's whole pipeline without Prefect: the same shards, tables, scores and figures."""
    import pyarrow as pa

    from core.methods.cscore import cscore_tables
    from core.runs.rows import unpack_bool_rows
    from core.runs.store import RunStore
    from core.training.experiment import outcome_table
    from flows.common import examples_table
    from flows.cscore import draw_figures, plan_shards

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        store = RunStore.open("cscore", config, root)
        store.write_table("examples.parquet", examples_table(dataset))
        shards = []
        for shard, (seeds, subsets) in zip(plan_shards(config, dataset.n_train), holdout_work(config, dataset)):
            outcome = train_on_subsets(dataset, config.model, seeds, subsets, config.train)
            table = outcome_table(shard["model_ids"], seeds, subsets, outcome)
            table = table.append_column("ratio", pa.array([shard["ratio"]] * len(seeds))).append_column("run", pa.array(shard["runs"]))
            store.write_table(f"shards/runs-{shard['shard']:05d}.parquet", table)
            shards.append(table)
        runs = pa.concat_tables(shards)
        store.write_table("runs.parquet", runs)
        tables = cscore_tables(unpack_bool_rows(runs["in_subset"]), unpack_bool_rows(runs["train_correct"]),
                               unpack_bool_rows(runs["test_correct"]), runs["ratio"].to_numpy(), runs["run"].to_numpy(),
                               store.read_table("examples.parquet"), dataset.class_names)
        for name, table in tables.items():
            store.write_table(name, table)
        draw_figures(store, dataset)
    return time.perf_counter() - start


def time_loop(config, dataset) -> float:
    """Seconds to train and evaluate the models of `config` one by one (per-model cost does not depend on K)."""
    start = time.perf_counter()
    for seeds, subsets in holdout_work(config, dataset):
        for seed, subset in zip(seeds, subsets):
            model = init_model(config.model, dataset.input_shape, dataset.num_classes, derive_seed(seed, INIT_STREAM))
            train_plain(model, dataset.x_train, dataset.y_train, subset.nonzero().squeeze(1),
                        derive_seed(seed, ORDER_STREAM), config.train)
            correct_plain(model, dataset.x_train, dataset.y_train), correct_plain(model, dataset.x_test, dataset.y_test)
    return time.perf_counter() - start


def time_flow(config) -> float:
    """Seconds of one fresh `cscore` flow run (new data root) against the local Prefect server."""
    from flows.cscore import cscore_flow

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        cscore_flow(config, data_root=root)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=RUNS_PER_RATIO, help="models per ratio")
    parser.add_argument("--loop-runs", type=int, default=LOOP_RUNS, help="models per ratio the plain loop trains")
    args = parser.parse_args()
    server.use_local_server()  # before prefect is imported; its start-up is not timed
    from flows.cscore import CScoreFlowConfig

    config = CScoreFlowConfig(runs_per_ratio=args.runs)
    dataset = load_dataset(config.dataset)
    torch.set_num_threads(THREADS)
    flows, cores = [], []
    for _ in range(REPEATS):  # interleaved, so load on a shared machine hits both sides
        flows.append(time_flow(config))
        cores.append(time_core(config, dataset))
    flow, core = min(flows), min(cores)
    loop_runs = min(args.loop_runs, args.runs)
    loop = time_loop(config.model_copy(update={"runs_per_ratio": loop_runs}), dataset) * args.runs / loop_runs
    result = {"bench": "cscore", "dataset": config.dataset.name, "model": config.model, "ratios": len(config.ratios),
              "runs_per_ratio": args.runs, "epochs": config.train.epochs, "batch_size": config.train.batch_size,
              "flow_s": round(flow, 1), "core_s": round(core, 1), "loop_s": round(loop, 1), "loop_runs_timed": loop_runs,
              "flow_s_all": [round(t, 1) for t in flows], "core_s_all": [round(t, 1) for t in cores],
              "speedup_flow_vs_loop": round(loop / flow, 2), "orchestration_share": round(1 - core / flow, 3),
              "threads": THREADS, "torch": torch.__version__, "machine": platform.machine()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
