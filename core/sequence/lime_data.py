"""LIME examples as Parquet: one record batch per generator chunk, a shard written batch by batch (memory bounded by
one chunk whatever its size) with its per-task length figures, and the summaries built from those figures."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.runs.store import RunStore
from core.sequence import lime
from core.sequence.lime import CONTROLS, TASKS, Example, LimeConfig, generate

TASK_NAMES = (*TASKS, *CONTROLS)  # the `task` column's dictionary, the same in every file so that their codes agree
SCHEMA = pa.schema([("index", pa.int64()), ("task", pa.dictionary(pa.int8(), pa.string())),
                    ("source", pa.list_(pa.int32())), ("target", pa.list_(pa.int32())),
                    ("source_length", pa.int32()), ("target_length", pa.int32())])
FIGURES = ["examples", "source_length_mean", "source_length_max", "target_length_mean", "target_length_max"]
SIZE_SAMPLE = 1024  # examples written to memory to estimate the compressed bytes of one


def _list_column(sequences: list[np.ndarray]) -> tuple[pa.ListArray, np.ndarray]:
    """`list<int32>` of `sequences`, built from one flat array and its offsets; and the lengths."""
    lengths = np.fromiter(map(len, sequences), np.int32, len(sequences))
    offsets = np.zeros(len(sequences) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(sequences).astype(np.int32, copy=False) if sequences else np.empty(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)), lengths


def record_batch(examples: list[Example], first: int) -> pa.RecordBatch:
    """Examples first, first + 1, ... as one record batch of SCHEMA."""
    codes = np.fromiter((TASK_NAMES.index(e.task) for e in examples), np.int8, len(examples))
    source, source_lengths = _list_column([e.source for e in examples])
    target, target_lengths = _list_column([e.target for e in examples])
    task = pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(TASK_NAMES))
    index = pa.array(np.arange(first, first + len(examples), dtype=np.int64))
    return pa.RecordBatch.from_arrays([index, task, source, target, pa.array(source_lengths),
                                       pa.array(target_lengths)], schema=SCHEMA)


def example_batches(task: str, seed: int, first: int, count: int, config: LimeConfig) -> Iterator[pa.RecordBatch]:
    """Examples first..first + count - 1 of dataset (task, seed), one generator chunk per batch."""
    for start in range(first, first + count, lime.CHUNK):  # read at call time: tests shrink it
        size = min(lime.CHUNK, first + count - start)
        yield record_batch(generate(task, seed, start, size, config), start)


class LengthTally:
    """Per task: examples, and the sum and maximum of the source and target lengths, over the batches seen."""

    def __init__(self) -> None:
        self.count = np.zeros(len(TASK_NAMES), np.int64)
        self.sums = np.zeros((2, len(TASK_NAMES)), np.int64)
        self.maxima = np.zeros((2, len(TASK_NAMES)), np.int64)

    def add(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Count `batch` in, and give it back (so that the tally can watch a stream of batches)."""
        codes = batch.column("task").indices.to_numpy()
        self.count += np.bincount(codes, minlength=len(TASK_NAMES))
        for row, column in enumerate(("source_length", "target_length")):
            lengths = batch.column(column).to_numpy()
            self.sums[row] += np.bincount(codes, lengths, minlength=len(TASK_NAMES)).astype(np.int64)
            np.maximum.at(self.maxima[row], codes, lengths)
        return batch

    def frame(self) -> pd.DataFrame:
        """One row per task seen: FIGURES."""
        seen = np.flatnonzero(self.count)
        means = self.sums[:, seen] / self.count[seen]
        return pd.DataFrame({"task": [TASK_NAMES[i] for i in seen], "examples": self.count[seen],
                             "source_length_mean": means[0], "source_length_max": self.maxima[0, seen],
                             "target_length_mean": means[1], "target_length_max": self.maxima[1, seen]})


def write_examples(store: RunStore, name: str, task: str, seed: int, first: int, count: int,
                   config: LimeConfig) -> pd.DataFrame:
    """Write examples first..first + count - 1 to table `name` of `store`, one row group per generator chunk;
    returns their per-task figures (LengthTally.frame)."""
    tally = LengthTally()
    batches = map(tally.add, example_batches(task, seed, first, count, config))
    store.write_batches(name, SCHEMA, batches, {"first_index": str(first), "examples": str(count)})
    return tally.frame()


def bytes_per_example(task: str, seed: int, config: LimeConfig) -> float:
    """Compressed Parquet bytes of one example, measured on the first SIZE_SAMPLE examples."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_batches(list(example_batches(task, seed, 0, SIZE_SAMPLE, config))), buffer)
    return buffer.tell() / SIZE_SAMPLE


def length_sample(folder: Path, rows: int) -> pd.DataFrame:
    """task, source_length and target_length of the first `rows` examples of the shards in `folder` (examples are
    independent draws, so the first are a fair sample), read a batch at a time."""
    columns = ["task", "source_length", "target_length"]

    def batches() -> Iterator[pa.RecordBatch]:
        for path in sorted(folder.glob("part-*.parquet")):
            yield from pq.ParquetFile(path).iter_batches(columns=columns)

    sample, taken = [], 0
    for batch in batches():
        if taken == rows:
            break
        sample.append(batch.slice(0, rows - taken))
        taken += len(sample[-1])
    return pa.Table.from_batches(sample, schema=pa.schema([SCHEMA.field(c) for c in columns])).to_pandas()


def task_summary(shards: pd.DataFrame) -> pd.DataFrame:
    """One row per task from per-(shard, task) FIGURES: examples, share, mean and max lengths over every shard."""
    rows = []
    for task, group in shards.groupby("task", sort=False):
        weights = group["examples"] / group["examples"].sum()
        rows.append({"task": task, "examples": int(group["examples"].sum()),
                     "source_length_mean": float((group["source_length_mean"] * weights).sum()),
                     "source_length_max": int(group["source_length_max"].max()),
                     "target_length_mean": float((group["target_length_mean"] * weights).sum()),
                     "target_length_max": int(group["target_length_max"].max())})
    summary = pd.DataFrame(rows, columns=["task", *FIGURES])
    summary.insert(2, "share", summary["examples"] / summary["examples"].sum())
    order = {name: i for i, name in enumerate(TASK_NAMES)}
    return summary.sort_values("task", key=lambda s: s.map(order), ignore_index=True)
