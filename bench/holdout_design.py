"""Balanced against independent holdout subsets, with the same models, on the shipped C-score configs.

Run: .venv/bin/python -m bench.holdout_design [--only digits|fashion] [--data-root D]   (from the repository root)
For each config and run seed, the `cscore` flow runs twice (or finds both runs done): `holdout_design:
balanced` and `independent`, all else equal. Printed per design: split-half Spearman reliability
(the flow's even/odd runs, and the mean and std over 20 random halves of each ratio's runs), examples
that miss a ratio, the mean C-score of the examples that miss a ratio under the independent design
against all the others, in both runs (the same examples, so the difference is the bias), and the
90th percentile of the per-example SE. With label noise, also the AUROC of 1 - C-score for the
mislabeled examples. With several seeds, the run-to-run Spearman between the C-scores of every
pair of seeds (the reliability of the whole estimate; split halves compare half-size designs, and
an example that misses a ratio in both halves agrees with itself for the wrong reason).
One JSON object last.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

from core.methods.cscore import spearman_of_finite, split_half_reliability
from core.runs.catalog import find_run
from core.runs.rows import unpack_bool_rows
from flows import server

CONFIGS = {"digits": "flows/configs/cscore.yaml", "fashion": "flows/configs/cscore-fashion-noisy.yaml"}
DESIGNS = ("independent", "balanced")


RANDOM_HALVES = 20


def run_design(path: str, design: str, seed: int, data_root: str | None) -> tuple[Path, float]:
    """The finished cscore run of the config at `path` with `holdout_design=design` and run seed `seed`, and its wall time."""
    from flows.cscore import CScoreFlowConfig, cscore_flow

    config = CScoreFlowConfig.model_validate({**yaml.safe_load(Path(path).read_text()), "holdout_design": design,
                                              "seed": seed})
    start = time.perf_counter()
    return Path(cscore_flow(config, data_root=data_root)), time.perf_counter() - start


def random_half_reliability(folder: Path) -> tuple[float, float]:
    """Mean and std of the split-half Spearman over RANDOM_HALVES seeded random halves of every ratio's runs."""
    runs = pq.read_table(folder / "runs.parquet")
    in_subset, correct = unpack_bool_rows(runs["in_subset"]), unpack_bool_rows(runs["train_correct"])
    ratios, rng, values = runs["ratio"].to_numpy(), np.random.default_rng(0), []
    for _ in range(RANDOM_HALVES):
        half = np.zeros(len(ratios), bool)
        for ratio in np.unique(ratios):
            members = np.flatnonzero(ratios == ratio)
            half[rng.choice(members, len(members) // 2, replace=False)] = True
        values.append(split_half_reliability(in_subset, correct, ratios, half))
    return float(np.mean(values)), float(np.std(values))


def measure(name: str, seed: int, data_root: str | None) -> dict:
    """Both designs of one config and run seed, side by side."""
    runs = {design: run_design(CONFIGS[name], design, seed, data_root) for design in DESIGNS}
    scores = {design: pd.read_parquet(folder / "cscores.parquet") for design, (folder, _) in runs.items()}
    lost = scores["independent"]["n_missing_ratios"].gt(0).to_numpy()  # the examples the independent design hurts
    out = {"seed": seed, "examples": len(lost), "lost_a_ratio_under_independent": int(lost.sum())}
    for design, (folder, seconds) in runs.items():
        summary = pd.read_parquet(folder / "summary.parquet").iloc[0]
        cscore = scores[design]["cscore"]
        mean, std = random_half_reliability(folder)
        out[design] = {"run": folder.name, "wall_s": round(seconds, 1),
                       "split_half_even_odd": round(float(summary["split_half_spearman"]), 4),
                       "split_half_random_mean": round(mean, 4), "split_half_random_std": round(std, 4),
                       "examples_missing_a_ratio": int(summary["n_missing_some_ratio"]),
                       "mean_cscore_of_those_lost": round(float(cscore[lost].mean()), 4),
                       "mean_cscore_of_the_rest": round(float(cscore[~lost].mean()), 4),
                       "cscore_se_p90": round(float(summary["cscore_se_p90"]), 4)}
        if (folder / "noise_detection.parquet").exists():
            out[design]["noise_auroc"] = round(float(pd.read_parquet(folder / "noise_detection.parquet")["auroc"].iloc[0]), 4)
    return out


def run_to_run(by_seed: list[dict], data_root: str | None) -> dict[str, float]:
    """Per design, the mean Spearman between the C-scores of every pair of seeds (NaN with one seed)."""
    out = {}
    for design in DESIGNS:
        scores = [pd.read_parquet(find_run(r[design]["run"], data_root) / "cscores.parquet")["cscore"].to_numpy()
                  for r in by_seed]
        pairs = [spearman_of_finite(a, b) for a, b in itertools.combinations(scores, 2)]
        out[design] = round(float(np.mean(pairs)), 4) if pairs else float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(CONFIGS), action="append", help="measure only these configs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="run seeds (one pair of runs each)")
    parser.add_argument("--data-root", default=None, help="where the runs go (default: the project's data/)")
    args = parser.parse_args()
    server.use_local_server()  # before prefect is imported
    results = {}
    for name in args.only or CONFIGS:
        by_seed = [measure(name, seed, args.data_root) for seed in args.seeds]
        results[name] = {"by_seed": by_seed, "run_to_run_spearman": run_to_run(by_seed, args.data_root)}
        for result in by_seed:
            for design in DESIGNS:
                print(f"{name:8s} seed {result['seed']} {design:12s} {result[design]}")
        print(f"{name:8s} run-to-run Spearman over seeds {args.seeds}: {results[name]['run_to_run_spearman']}")
    print(json.dumps({"bench": "holdout_design", **results}))


if __name__ == "__main__":
    main()
