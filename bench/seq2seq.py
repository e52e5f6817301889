"""Would the lime_pretrain flow gain from training its seeds together? K transformers trained one after another
(what the flow's tasks do) against K trained at once with torch.func.vmap over stacked parameters (the project's
fallback for layers without a stacked kernel), and against one transformer on a K-times larger batch (the same
matmul FLOPs in the largest matmuls any stacking could give: an upper bound of what stacking can buy).

Run: .venv/bin/python -m bench.seq2seq [--quick] [--threads N]   (from the repository root)
Prints a table, then one JSON object on its last line. See bench/README.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform

import torch
from torch.func import functional_call, grad, stack_module_state, vmap

from bench.trainer import interleaved_seconds, matmul_gflops
from core.sequence.config import TransformerConfig
from core.sequence.lime import LimeConfig
from core.sequence.rewriting import RewriteConfig, generate as rewriting_examples
from core.sequence.transfer import lime_batches
from core.sequence.transformer import Seq2Seq, collate, sequence_loss

# ---- knobs ---------------------------------------------------------------------------------
CONFIG = TransformerConfig()  # the lime_pretrain flow's default network (d_model 64, 2 + 2 layers)
LIME = LimeConfig(rule_symbols=8, lower_symbols=8, math_symbols=8)  # the flow's default pretraining data
BATCH = 32  # sequences per step and model (the flow's default)
SEEDS = 3  # K: models of one task (the flow's default seeds)
STEPS = 10  # timed training steps per run (--quick: 3)
REPEATS = 3  # timed runs of each side, interleaved, after a warm-up; medians (--quick: 1)
THREADS = len(os.sched_getaffinity(0))
LR = 1e-3  # plain SGD for every side: the optimizer is not what is compared
# ---------------------------------------------------------------------------------------------


def batches(task: str, steps: int, size: int) -> list[tuple]:
    """`steps` collated batches of `size` sequences: pretraining (LIME Mixed) or fine-tuning (rewriting)."""
    if task == "pretrain":
        draw = lime_batches("mixed", 0, size, LIME)
        return [collate(*draw(step)) for step in range(steps)]
    examples = rewriting_examples(0, 0, steps * size, RewriteConfig(max_depth=2))
    return [collate([e.source for e in examples[s * size:(s + 1) * size]],
                    [e.target for e in examples[s * size:(s + 1) * size]]) for s in range(steps)]


def sgd_step(model: Seq2Seq, batch: tuple) -> None:
    """One plain SGD step of one model."""
    model.zero_grad(set_to_none=True)
    sequence_loss(model, *batch).backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad


def one_by_one(models: list[Seq2Seq], data: list[tuple]) -> None:
    """Each model trained on its own `data`, one model after another."""
    for model in models:
        for batch in data:
            sgd_step(model, batch)


def vmapped(models: list[Seq2Seq], data: list[tuple]) -> None:
    """All models at once: gradients of the stacked parameters by torch.func.vmap, the same batch for each."""
    params, buffers = stack_module_state(models)
    template = copy.deepcopy(models[0]).to("meta")

    def loss(p, b, source, target_in, labels):
        logits = functional_call(template, (p, b), (source, target_in))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=0)

    gradient = vmap(grad(loss), in_dims=(0, 0, None, None, None), randomness="same")
    for batch in data:
        grads = gradient(params, buffers, *batch)
        for name in params:
            params[name] = params[name] - LR * grads[name]


def measure(task: str, threads: int, steps: int, repeats: int) -> dict:
    """Seconds of the three sides on `task`'s batches, and the ratios."""
    torch.set_num_threads(threads)
    data, wide = batches(task, steps, BATCH), batches(task, steps, SEEDS * BATCH)
    models = [Seq2Seq(LIME.total_vocab, CONFIG) for _ in range(SEEDS)]
    sides = {"one_by_one": lambda: one_by_one(models, data), "larger_batch": lambda: one_by_one(models[:1], wide)}
    try:
        vmapped(models, data[:1])
        sides["vmap"] = lambda: vmapped(models, data)
    except Exception as err:  # vmap lacks batching rules for some fused attention kernels: say so, time the rest
        print(f"vmap failed on {task}: {type(err).__name__}: {str(err)[:200]}")
    seconds = interleaved_seconds(sides, repeats)
    row = {"task": task, "K": SEEDS, "batch": BATCH, "steps": steps, **{f"{k}_s": round(v, 3) for k, v in seconds.items()}}
    row["larger_batch_speedup"] = round(seconds["one_by_one"] / seconds["larger_batch"], 2)
    if "vmap" in seconds:
        row["vmap_speedup"] = round(seconds["one_by_one"] / seconds["vmap"], 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 steps, 1 repeat")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads")
    args = parser.parse_args()
    steps, repeats = (3, 1) if args.quick else (STEPS, REPEATS)
    torch.manual_seed(0)
    peak = matmul_gflops()
    rows = [measure(task, args.threads, steps, repeats) for task in ("pretrain", "finetune")]
    for row in rows:
        print(row)
    print(json.dumps({"rows": rows, "threads": args.threads, "matmul_gflops": round(peak, 1), "torch": torch.__version__,
                      "machine": platform.machine()}))


if __name__ == "__main__":
    main()
