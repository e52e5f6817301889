"""Tasks of the `proxies` flow: full-data models trained with per-example records, then the proxies."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.methods.label_quality import cleanlab_scores, fold_assignment, fold_subsets, out_of_sample_probabilities
from core.methods.proxies import density_proxies, detection_metrics, learning_dynamics, rank_correlations, training_proxies
from core.runs.rows import pack_bool_rows, pack_float_rows, unpack_bool_rows, unpack_float_rows
from core.runs.store import RunStore
from core.runtime import resolve_device
from core.training.ensemble import embed, predict_probabilities
from core.training.experiment import model_seed, train_on_subsets
from tasks.common import compute_once, task_dataset

RECORDED = ("label_prob", "margin", "loss", "el2n")  # float fields of the training record
OUT_OF_SAMPLE = "out_of_sample.parquet"
FLAGS = ("cleanlab_issue",)  # bool columns of proxies.parquet: verdicts, not scores


def shard_names(shard: int) -> tuple[str, str]:
    """Per-epoch records, then per-model final results, of shard `shard`."""
    return f"shards/records-{shard:05d}.parquet", f"shards/final-{shard:05d}.parquet"


def _records_table(model_ids: list[int], record) -> pa.Table:
    """One row per (model, epoch): dense per-example outcomes recorded during that epoch."""
    k, epochs, _ = record.seen.shape
    columns = {"model_id": pa.array(np.repeat(model_ids, epochs), pa.int64()),
               "epoch": pa.array(np.tile(np.arange(1, epochs + 1), k), pa.int64()),
               "seen": pack_bool_rows(record.seen.flatten(0, 1).numpy()),
               "correct": pack_bool_rows(record.correct.flatten(0, 1).numpy())}
    for field in RECORDED:
        columns[field] = pack_float_rows(getattr(record, field).flatten(0, 1).numpy())
    return pa.table(columns)


@task(cache_policy=NO_CACHE, task_run_name="record-shard-{shard}")
def record_shard(store: RunStore, shard: int, model_ids: list[int]) -> tuple[str, str]:
    """Train `model_ids` on the full training set, recording every example in every epoch."""
    names = shard_names(shard)
    compute_once(store, list(names), lambda: _record(store, shard, model_ids, names))
    return names


def _record(store: RunStore, shard: int, model_ids: list[int], names: tuple[str, str]) -> None:
    """The body of `record_shard`."""
    logger, config, start = get_run_logger(), store.config, time.perf_counter()
    dataset = task_dataset(store)
    seeds = [model_seed(config.seed, i) for i in model_ids]
    everything = torch.ones(len(model_ids), dataset.n_train, dtype=torch.bool)
    device = resolve_device(config.runtime.device)
    before = time.perf_counter()
    outcome = train_on_subsets(dataset, config.model, seeds, everything, config.train, device, record=True,
                               precision=config.runtime.precision)
    train_seconds = time.perf_counter() - before
    hidden = embed(outcome.ensemble, dataset.x_train).numpy()  # [K, N, F] penultimate activations
    final = {"model_id": pa.array(model_ids, pa.int64()), "seed": pa.array(seeds, pa.int64()),
             "test_accuracy": pa.array(outcome.test.accuracy().numpy(), pa.float64()),
             "final_loss": pack_float_rows(outcome.train.loss.numpy())}
    per_model = [density_proxies(h, dataset.y_train.numpy(), config.kde_bandwidth, "hidden", chunk=config.kde_chunk,
                                 device=device) for h in hidden]
    for name in per_model[0]:
        final[name] = pack_float_rows(np.stack([d[name] for d in per_model]))
    store.write_table(names[0], _records_table(model_ids, outcome.record))
    # written last: its presence means the shard is whole
    store.write_table(names[1], pa.table(final), {"models": str(len(model_ids)), "train_seconds": f"{train_seconds:.2f}"})
    logger.info("shard %d: %d full-data models recorded over %d epochs, test accuracy %.4f, %.1f s", shard,
                len(model_ids), config.train.epochs, float(outcome.test.accuracy().mean()), time.perf_counter() - start)


@task(cache_policy=NO_CACHE, task_run_name="fold-models")
def fold_shard(store: RunStore) -> str:
    """Train the `cleanlab_folds` fold models together; write each example's out-of-sample class probabilities."""
    compute_once(store, [OUT_OF_SAMPLE], lambda: _train_folds(store))
    return OUT_OF_SAMPLE


def _train_folds(store: RunStore) -> None:
    """The body of `fold_shard`."""
    logger, config, dataset = get_run_logger(), store.config, task_dataset(store)
    folds = config.cleanlab_folds
    fold_of = fold_assignment(dataset.n_train, folds, config.seed)
    seeds = [model_seed(config.seed, config.n_models + k) for k in range(folds)]  # ids after the recorded models
    before = time.perf_counter()
    outcome = train_on_subsets(dataset, config.model, seeds, fold_subsets(fold_of, folds), config.train,
                               resolve_device(config.runtime.device), precision=config.runtime.precision)
    seconds, accuracy = time.perf_counter() - before, float(outcome.test.accuracy().mean())
    probabilities = out_of_sample_probabilities(predict_probabilities(outcome.ensemble, dataset.x_train), fold_of)
    table = pa.table({"example_id": pa.array(dataset.train_ids.numpy(), pa.int64()),
                      "source": pa.array(dataset.train_source, pa.string()),
                      "label": pa.array(dataset.y_train.numpy(), pa.int64()),
                      "fold": pa.array(fold_of, pa.int64()),
                      "probabilities": pack_float_rows(probabilities)})
    store.write_table(OUT_OF_SAMPLE, table, {"models": str(folds), "train_seconds": f"{seconds:.2f}",
                                             "test_accuracy": f"{accuracy:.4f}"})
    sizes = "/".join(map(str, sorted(set(np.bincount(fold_of, minlength=folds).tolist()))))
    logger.info("%d fold models, each scoring a fold of %s examples; test accuracy %.4f, %.1f s training", folds,
                sizes, accuracy, seconds)


def label_issue_columns(store: RunStore, out_of_sample: str) -> dict[str, np.ndarray]:
    """cleanlab's label-quality score and `find_label_issues` flag of each example, from the fold models."""
    table = pq.read_table(store.path(out_of_sample))
    return cleanlab_scores(table["label"].to_numpy(), unpack_float_rows(table["probabilities"]))


def read_records(store: RunStore, names: list[str]) -> dict[str, np.ndarray]:
    """Concatenated `[K, E, N]` arrays of every record shard (models in id order)."""
    return read_record_files([store.path(n) for n in names])


def read_record_files(paths: list) -> dict[str, np.ndarray]:
    """`read_records` of the record shard files `paths` (of this run or another)."""
    table = pa.concat_tables([pq.read_table(path) for path in paths]).sort_by([("model_id", "ascending"),
                                                                              ("epoch", "ascending")])
    k = len(set(table["model_id"].to_pylist()))
    out = {"seen": unpack_bool_rows(table["seen"]), "correct": unpack_bool_rows(table["correct"])}
    out.update({field: unpack_float_rows(table[field]) for field in RECORDED})
    return {name: values.reshape(k, -1, values.shape[-1]) for name, values in out.items()}


def read_finals(store: RunStore, names: list[str]) -> dict[str, np.ndarray]:
    """`[K, N]` final losses and hidden-space densities of every model (id order)."""
    table = pa.concat_tables([pq.read_table(store.path(n)) for n in names]).sort_by("model_id")
    skip = ("model_id", "seed", "test_accuracy")
    return {name: unpack_float_rows(table[name]) for name in table.column_names if name not in skip}


def aligned_cscore(example_ids: pd.Series, cscores: str) -> np.ndarray:
    """The C-score of each example id (NaN where the C-score table has none)."""
    table = pd.read_parquet(cscores, columns=["example_id", "cscore"])
    return pd.DataFrame({"example_id": example_ids}).merge(table, on="example_id", how="left")["cscore"].to_numpy()


@task(cache_policy=NO_CACHE, task_run_name="compute-proxies")
def compute_proxies(store: RunStore, record_names: list[str], final_names: list[str], cscores: str | None,
                    out_of_sample: str | None = None) -> list[str]:
    """proxies.parquet (with cleanlab's columns when `out_of_sample` is given), and with a C-score table its
    correlations and learning dynamics; with label noise, how well each score finds the mislabeled examples, and with
    foreign examples (dataset.foreign), the foreign ones."""
    config, dataset, written = store.config, task_dataset(store), []
    marks = {"noise_detection.parquet": dataset.is_noisy.numpy(), "ood_detection.parquet": dataset.is_foreign.numpy()}
    marks = {table: marked for table, marked in marks.items() if marked.any()}  # mislabeled, foreign examples
    expected = ["proxies.parquet", *(["proxy_correlations.parquet", "dynamics.parquet"] if cscores else []), *marks]
    built_from = [*record_names, *final_names, *([out_of_sample] if out_of_sample else []), *([cscores] if cscores else [])]
    store.remove_corrupt(*expected)
    if all(store.is_complete(name, built_from) for name in expected):
        return expected  # built from these inputs as they are: with cleanlab's columns if they are asked for now
    records, finals = read_records(store, record_names), read_finals(store, final_names)
    labels = dataset.y_train.numpy()
    columns = training_proxies(records["label_prob"], records["correct"], records["margin"], records["el2n"],
                               records["seen"], finals.pop("final_loss"), config.el2n_epoch)
    columns.update(density_proxies(dataset.x_train.flatten(1).numpy(), labels, config.kde_bandwidth, "input",
                                   config.lof_neighbors, config.kde_chunk, resolve_device(config.runtime.device)))
    columns.update({name: values.mean(0) for name, values in finals.items()})  # hidden densities, mean over models
    cleanlab = label_issue_columns(store, out_of_sample) if out_of_sample else {}
    flags = {name: cleanlab.pop(name) for name in FLAGS if name in cleanlab}
    columns.update(cleanlab)
    proxies = pd.DataFrame({"example_id": dataset.train_ids.numpy(), "source": dataset.train_source, "label": labels,
                            "is_noisy": dataset.is_noisy.numpy(), "is_foreign": dataset.is_foreign.numpy(), **columns,
                            **flags})
    written.append(store.write_table("proxies.parquet", proxies, built_from=built_from).name)
    scores = {name: proxies[name].to_numpy() for name in columns}
    if cscores:
        cscore = aligned_cscore(proxies["example_id"], cscores)
        rows = [{"proxy": name, **rank_correlations(values, cscore, config.n_bootstrap, config.seed)}
                for name, values in scores.items()]
        written.append(store.write_table("proxy_correlations.parquet", pd.DataFrame(rows), built_from=built_from).name)
        dynamics = learning_dynamics(records["correct"], records["seen"], cscore, config.dynamics_bins)
        written.append(store.write_table("dynamics.parquet", dynamics, built_from=built_from).name)
        scores = {"cscore": cscore, **scores}
    flagged_lowest = {name: (~flag).astype(float) for name, flag in flags.items()}
    for table, marked in marks.items():
        rows = [{"score": name, **detection_metrics(values, marked)}
                for name, values in {**scores, **flagged_lowest}.items()]
        written.append(store.write_table(table, pd.DataFrame(rows), built_from=built_from).name)
    get_run_logger().info("proxies of %d examples from %d models: %s", len(proxies), len(records["seen"]), ", ".join(written))
    return written
