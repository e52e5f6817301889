"""Greedy decoding with the key-value cache against rerunning the decoder on the whole prefix for every token
(`greedy_decode(..., cache=False)`, what it did before), as `exact_match` decodes: 500 LIME Mixed examples (the
pretraining evaluation) and 500 rewriting examples (the fine-tuning evaluation), batches of 256, at most the longest
target + 1 new tokens, on a transformer of the `lime_pretrain` flow's default shape.

The network is freshly initialised (seeded): it never says EOS, so every batch runs all its steps, as a model does
early in training; a trained one stops when the last row of a batch says EOS, near the batch's longest target.

Run: .venv/bin/python -m bench.decode [--quick] [--threads N]   (from the repository root)
Prints a line per dataset, then one JSON object on its last line. See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform

from core.runtime import set_wait_policy

set_wait_policy()  # before torch loads libgomp, as the `regularity` CLI does: spinning threads on shared cores

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.trainer import interleaved_seconds, matmul_gflops  # noqa: E402
from core.models.networks import seeded_init  # noqa: E402
from core.sequence import lime, rewriting  # noqa: E402
from core.sequence.transformer import Seq2Seq, greedy_decode  # noqa: E402
from flows.lime_pretrain import LimePretrainFlowConfig  # noqa: E402

# ---- knobs ---------------------------------------------------------------------------------
FLOW = LimePretrainFlowConfig()  # the flow's defaults: network (d_model 64, 2 + 2 layers), LIME and rewriting settings
EXAMPLES = 500  # decoded per dataset and side (--quick: 100)
BATCH = 256  # greedy_decode's default, as exact_match runs it
REPEATS = 3  # timed runs of each side, interleaved, after one warm-up run each; medians reported (--quick: 1)
THREADS = len(os.sched_getaffinity(0))  # torch intra-op threads (the usable cores)
SEED = 0
# ---------------------------------------------------------------------------------------------


def examples(dataset: str, count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(sources, targets) of `count` examples: LIME Mixed with the flow's generator, or its rewriting test stream."""
    config = FLOW.lime.to_core()
    if dataset == "lime":
        drawn = lime.generate("mixed", SEED, 0, count, config)
    else:
        task = rewriting.RewriteConfig(max_depth=FLOW.downstream.max_depth, vocab_size=config.vocab_size)
        drawn = rewriting.generate(SEED, 0, count, task, stream="test")
    return [e.source for e in drawn], [e.target for e in drawn]


def measure(model: Seq2Seq, dataset: str, count: int, repeats: int) -> dict:
    """Seconds of both sides on `count` examples of `dataset`, whether they decode the same tokens, and the ratio."""
    sources, targets = examples(dataset, count)
    max_new = max(len(t) for t in targets) + 1  # as exact_match asks
    decoded = {cache: greedy_decode(model, sources, max_new, BATCH, cache=cache) for cache in (True, False)}
    same = all(np.array_equal(a, b) for a, b in zip(decoded[True], decoded[False]))
    seconds = interleaved_seconds({"cached": lambda: greedy_decode(model, sources, max_new, BATCH),
                                   "full_prefix": lambda: greedy_decode(model, sources, max_new, BATCH, cache=False)},
                                  repeats, warm_up=False)  # the comparison above warmed both up
    return {"dataset": dataset, "examples": count, "mean_source": round(float(np.mean([len(s) for s in sources])), 1),
            "mean_target": round(float(np.mean([len(t) for t in targets])), 1), "max_new": max_new,
            "same_tokens": same, **{f"{side}_s": round(s, 3) for side, s in seconds.items()},
            "speedup": round(seconds["full_prefix"] / seconds["cached"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 examples, one repeat (smoke run)")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    count, repeats = (100, 1) if args.quick else (EXAMPLES, REPEATS)
    with seeded_init(SEED):
        model = Seq2Seq(FLOW.lime.to_core().total_vocab, FLOW.transformer)
    load_average, probes = [os.getloadavg()[0]], [matmul_gflops()]
    rows = [measure(model, dataset, count, repeats) for dataset in ("lime", "rewriting")]
    probes.append(matmul_gflops())
    load_average.append(os.getloadavg()[0])
    for row in rows:
        print(f"{row['dataset']:9s} {row['examples']} examples (source {row['mean_source']}, target "
              f"{row['mean_target']} tokens on average, {row['max_new']} steps): cached {row['cached_s']:.2f} s, "
              f"full prefix {row['full_prefix_s']:.2f} s, {row['speedup']:.1f}x; same tokens: {row['same_tokens']}")
    print(f"matmul {max(probes):.1f} GFLOP/s, {torch.get_num_threads()} threads, 1-minute load average "
          f"{load_average[0]:.2f} before and {load_average[1]:.2f} after")
    print(json.dumps({
        "bench": "decode", "rows": rows, "batch": BATCH, "repeats": repeats,
        "transformer": FLOW.transformer.model_dump(), "matmul_gflops": round(max(probes), 1),
        "matmul_gflops_probes": [round(p, 1) for p in probes], "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "torch": torch.__version__, "machine": platform.machine(),
        "load_average_1min": [round(a, 2) for a in load_average],
    }))


if __name__ == "__main__":
    main()
