"""What the C-score pipeline measures on real data: proxies vs C-score, mislabel detection, filtering.

Run: .venv/bin/python -m bench.cscore_quality [--only digits|mnist1d|fashion]   (from the repository root)
For each config in flows/configs/ it runs (or finds, when already done) the `cscore` flow, then the
`proxies` flow against it; for the noisy Fashion-MNIST config also `filter_retrain`. Runs land in
the data root like any other (browse them with `regularity ls`). Prints one JSON object last.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import yaml

from flows import server

CONFIGS = {  # name: (cscore config, proxies models, filtering fractions or None)
    "digits": ("flows/configs/cscore.yaml", 4, None),
    "mnist1d": ("flows/configs/cscore-mnist1d.yaml", 4, None),
    "fashion": ("flows/configs/cscore-fashion-noisy.yaml", 4, [0.0, 0.05, 0.1, 0.2]),
}
FILTER_SEEDS = 4  # models per arm and fraction


def measure(name: str) -> dict:
    """Run the pipeline of one config and collect its figures."""
    from flows.cscore import CScoreFlowConfig, cscore_flow
    from flows.filter_retrain import FilterRetrainFlowConfig, filter_retrain_flow
    from flows.proxies import ProxiesFlowConfig, proxies_flow

    path, n_models, fractions = CONFIGS[name]
    config = CScoreFlowConfig.model_validate(yaml.safe_load(Path(path).read_text()))
    start = time.perf_counter()
    scores = Path(cscore_flow(config))
    shared = {"dataset": config.dataset, "model": config.model, "train": config.train, "seed": config.seed}
    proxies = Path(proxies_flow(ProxiesFlowConfig(**shared, n_models=n_models, cscore_run=scores.name)))
    summary = pd.read_parquet(scores / "summary.parquet").iloc[0]
    correlations = pd.read_parquet(proxies / "proxy_correlations.parquet").set_index("proxy")
    out = {"cscore_run": scores.name, "proxies_run": proxies.name,
           "split_half_spearman": round(float(summary["split_half_spearman"]), 3),
           "mean_test_accuracy": round(float(pd.read_parquet(scores / "runs.parquet")["test_accuracy"].mean()), 4),
           "proxy_spearman": correlations["spearman"].round(3).to_dict()}
    if (proxies / "noise_detection.parquet").exists():
        detection = pd.read_parquet(proxies / "noise_detection.parquet").set_index("score")
        out["noise_auroc"] = detection["auroc"].round(4).to_dict()
        out["noise_precision_at_k"] = detection["precision_at_k"].round(4).to_dict()
    if fractions:
        filtering = Path(filter_retrain_flow(FilterRetrainFlowConfig(
            **shared, scores=scores.name, fractions=fractions, seeds_per_arm=FILTER_SEEDS)))
        table = pd.read_parquet(filtering / "filtering_summary.parquet")
        out["filter_run"] = filtering.name
        out["filtering"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
                            for row in table.to_dict("records")]
    out["wall_s"] = round(time.perf_counter() - start, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(CONFIGS), action="append", help="measure only these configs")
    args = parser.parse_args()
    server.use_local_server()  # before prefect is imported
    results = {name: measure(name) for name in (args.only or CONFIGS)}
    print(json.dumps({"bench": "cscore_quality", **results}))


if __name__ == "__main__":
    main()
