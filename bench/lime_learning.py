"""Not a speed benchmark: does a setting of the `lime_pretrain` flow learn its pretraining task on this machine, and
how fast? One network is pretrained as the flow's `pretrain_arm` task does (the flow's config with `--set`
overrides, the flow's seed streams, held-out examples from the monitor stream: sources never trained on), and the
held-out exact match (greedy decoding) and token accuracy are recorded every `--eval-every` steps against steps and
against seconds (training only: evaluation time is left out), until the last step or `--budget` seconds.

A curriculum is the flow's `pretrain.curriculum` (`--set 'pretrain.curriculum=[{steps: 3000, kept_rule: [1, 2],
rule_math: [2, 6], case_length: [1, 3]}]'`): the network, optimiser state and schedule carry on across stages, only
the LIME generator changes, and the held-out examples are always of the run's own setting, so that a curriculum's
curve is comparable with a plain run's.

Run: .venv/bin/python -m bench.lime_learning --arm deduct --set pretrain.optim.steps=3000 [--budget 3600]
     [--name NAME] [--out curve.jsonl] [--threads 1]   (from the repository root)
     .venv/bin/python -m bench.lime_learning --plot curves.png curve.jsonl ...   (the figure of saved curves)
Prints one line per evaluation, then one JSON object on its last line. See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from core.runtime import set_wait_policy

set_wait_policy()  # before torch loads libgomp, as the `regularity` CLI does

import torch  # noqa: E402

from core.config import derive_seed  # noqa: E402
from core.models.networks import seeded_init  # noqa: E402
from core.sequence.lime import generate  # noqa: E402
from core.sequence.transfer import held_out_figures  # noqa: E402
from core.sequence.transformer import Seq2Seq, exact_match, train_seq2seq  # noqa: E402
from core.training.experiment import INIT_STREAM, MONITOR_STREAM, model_seed  # noqa: E402
from flows.config_files import load_config  # noqa: E402
from flows.lime_pretrain import LimePretrainFlowConfig  # noqa: E402
from tasks.lime_pretrain import pretraining_batches  # noqa: E402

# ---- knobs ---------------------------------------------------------------------------------
EVAL_EVERY = 250  # steps between held-out checks
EVAL_EXAMPLES = 200  # held-out examples decoded at each check
SEED_INDEX = 0  # the flow's seed index: its streams give the initialisation, the batches and the held-out examples
THREADS = 1  # torch intra-op threads: 1 lets two settings run side by side on 2 cores
# ---------------------------------------------------------------------------------------------


class BudgetSpent(Exception):
    """Raised after the evaluation that used up the time budget: training stops there."""


def plot(path: str, files: list[str]) -> None:
    """The learning curves saved by --out (one JSON line per evaluation), one line per setting, as a PNG."""
    import pandas as pd

    from core.plots.lime_pretrain import lime_learning_curves

    curves = pd.concat([pd.read_json(file, lines=True) for file in files], ignore_index=True)
    print(lime_learning_curves(curves, Path(path)))


def per_task_exact_match(model: Seq2Seq, held_out: list) -> dict[str, float]:
    """Held-out exact match of each LIME task among the examples (Mixed's three), as exact_match_<task>; {} for one."""
    tasks = sorted({example.task for example in held_out})
    if len(tasks) < 2:
        return {}
    right = exact_match(model, [e.source for e in held_out], [e.target for e in held_out])
    return {f"exact_match_{task}": float(right[[e.task == task for e in held_out]].mean()) for task in tasks}


def main() -> None:
    """Train one setting and print its learning curve, or plot saved ones."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("curves", nargs="*", help="with --plot: the JSON-lines files of --out to draw")
    parser.add_argument("--plot", metavar="PNG", help="draw the curves of the files given, then stop")
    parser.add_argument("--arm", default="deduct", help="the pretraining task (a LIME task or a control)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a flow config override")
    parser.add_argument("--budget", type=float, default=3600.0, help="stop after this many training seconds")
    parser.add_argument("--eval-every", type=int, default=EVAL_EVERY)
    parser.add_argument("--eval-examples", type=int, default=EVAL_EXAMPLES)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--name", default="", help="a label for this setting in the output")
    parser.add_argument("--out", help="append each evaluation as a JSON line to this file")
    args = parser.parse_args()
    if args.plot:
        return plot(args.plot, args.curves)
    torch.set_num_threads(args.threads)
    config = load_config(LimePretrainFlowConfig, None, args.set)
    seed = model_seed(config.seed, SEED_INDEX)
    with seeded_init(derive_seed(seed, INIT_STREAM)):
        model = Seq2Seq(config.lime.to_core().total_vocab, config.transformer)
    held_out = generate(args.arm, derive_seed(seed, MONITOR_STREAM), 0, args.eval_examples, config.lime.to_core())
    sources, targets = [e.source for e in held_out], [e.target for e in held_out]
    batches, clock = pretraining_batches(config, args.arm, seed), {"train": 0.0, "since": time.perf_counter()}
    rows, losses = [], []

    def record(step: int, loss: float) -> None:
        """Keep the loss; evaluate (off the clock) every eval_every steps; stop at the budget."""
        losses.append(loss)
        done = step + 1
        clock["train"] += time.perf_counter() - clock["since"]
        if done % args.eval_every == 0 or done == config.pretrain.optim.steps or clock["train"] >= args.budget:
            row = {"name": args.name, "arm": args.arm, "step": done, "seconds": round(clock["train"], 1),
                   "train_loss": round(sum(losses) / len(losses), 4), **held_out_figures(model, sources, targets),
                   **per_task_exact_match(model, held_out)}
            losses.clear()
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a", encoding="utf-8") as file:
                    file.write(json.dumps(row) + "\n")
            if clock["train"] >= args.budget:
                raise BudgetSpent
        clock["since"] = time.perf_counter()

    try:
        train_seq2seq(model, batches, config.pretrain.optim, on_step=record)
    except BudgetSpent:
        pass
    print(json.dumps({"bench": "lime_learning", "name": args.name, "arm": args.arm, "settings": args.set,
                      "threads": args.threads, "machine": platform.machine(), "cores": len(os.sched_getaffinity(0)),
                      "torch": torch.__version__, "parameters": sum(p.numel() for p in model.parameters()),
                      "curve": rows}))


if __name__ == "__main__":
    main()
