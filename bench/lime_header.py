"""Not a speed benchmark: how long LIME's sources and targets are under each header (`LimeConfig.header`): "used" (the
rule symbols the Rule uses, as the authors' generator) against "all" (every rule symbol drawn, sorted), for Deduct,
Abduct, Induct and Mixed, at the paper's symbol sets (24 rule, 24 lower-case, 20 math: `lime_data`'s default) and
at `lime_pretrain`'s (8, 8, 8). Lengths are exact counts of examples 0 .. N - 1 of one seed (no timing, no noise);
what the header does to learning is left for the pretraining runs.

Run: .venv/bin/python -m bench.lime_header [--examples 10000] [--seed 0]   (from the repository root)
Prints a table, then one JSON object on its last line. See bench/README.md.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from core.sequence.lime import HEADERS, SEP, TASKS, LimeConfig, columns, generate

# ---- knobs ---------------------------------------------------------------------------------
EXAMPLES = 10_000  # examples per (sizes, task, header)
SIZES = {"paper": {}, "lime_pretrain": {"rule_symbols": 8, "lower_symbols": 8, "math_symbols": 8}}
SEED = 0
# ---------------------------------------------------------------------------------------------


def length_row(task: str, header: str, sizes: str, count: int, seed: int) -> dict:
    """Mean and longest header, source and target, in tokens, over examples 0 .. count - 1 of (task, seed)."""
    examples = generate(task, seed, 0, count, LimeConfig(header=header, **SIZES[sizes]))
    table = columns(examples)
    lengths = {"header": np.array([e.source.tolist().index(SEP) + 1 for e in examples]),
               "source": np.array(table["source_length"]), "target": np.array(table["target_length"])}
    return {"sizes": sizes, "task": task, "header": header, "examples": count,
            **{f"{part}_length_{name}": round(float(stat(values)), 2) for part, values in lengths.items()
               for name, stat in (("mean", np.mean), ("max", np.max))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=EXAMPLES, help=f"examples per row (default {EXAMPLES:,})")
    parser.add_argument("--seed", type=int, default=SEED, help=f"the generator's seed (default {SEED})")
    args = parser.parse_args()
    rows = [length_row(task, header, sizes, args.examples, args.seed)
            for sizes in SIZES for task in (*TASKS, "mixed") for header in HEADERS]
    print(f"{'sizes':14s} {'task':7s} {'header':6s} {'header mean/max':>16s} {'source mean/max':>16s} "
          f"{'target mean/max':>16s}")
    for row in rows:
        cells = [f"{row[f'{part}_length_mean']:9.2f} / {row[f'{part}_length_max']:4.0f}"
                 for part in ("header", "source", "target")]
        print(f"{row['sizes']:14s} {row['task']:7s} {row['header']:6s} {cells[0]:>16s} {cells[1]:>16s} {cells[2]:>16s}")
    print(json.dumps({"bench": "lime_header", "examples": args.examples, "seed": args.seed, "rows": rows}))


if __name__ == "__main__":
    main()
