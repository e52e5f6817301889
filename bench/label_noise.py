"""Which score finds wrong labels: 1 - C-score and its soft forms, the training-dynamics proxies, and cleanlab (on its
own fold models and on the holdout runs' averaged held-out probabilities), on the same data.

Run: .venv/bin/python -m bench.label_noise [--seeds 0 1 2] [--n-train 5000] [--data-root D]   (from the repository root)
For each noise seed (`dataset.seed`: which images, and which labels are flipped), the shipped noisy
Fashion-MNIST configs at --n-train training images: the `cscore` flow, then the `proxies` flow on its
run. The proxies come from 4 full-data models trained with records; cleanlab's scores from 5 fold
models trained on 4/5 of the data each: the same training work (4 N = 5 x 4N/5 examples per epoch).
Printed per score: AUROC, average precision and precision at k (k = the true number of wrong labels),
mean and std over seeds; the seconds of training behind each family (from the shards' provenance,
`regularity.train_seconds`) plus cleanlab's own seconds on the stored probabilities; what
`find_label_issues` flags (count, precision, recall); and how many examples have a C-score of exactly
0 (a tie that no 0/1 holdout accuracy can break) and how many of them are mislabeled; the compressed bytes per model
of the 0/1 outcome and of the two soft columns in the holdout shards. One JSON object last.
Needs the cleanlab extra: pip install -e '.[cleanlab]'.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

from core.methods.label_quality import cleanlab_scores
from core.runs.files import read_provenance
from core.runs.rows import unpack_float_rows
from flows import server

CSCORE_CONFIG, PROXIES_CONFIG = "flows/configs/cscore-fashion-noisy.yaml", "flows/configs/proxies-fashion-noisy.yaml"
DYNAMICS = ("cum_label_prob", "cum_accuracy", "neg_forgetting", "aum", "neg_el2n", "neg_final_loss")
METRICS = ("auroc", "average_precision", "precision_at_k")
SOFT_COLUMNS = ("train_correct", "train_label_prob", "train_margin")  # the 0/1 outcome beside the soft ones


def config_with(path: str, n_train: int, seed: int, **fields) -> dict:
    """The shipped config at `path` with `n_train` images and noise seed `seed`."""
    config = yaml.safe_load(Path(path).read_text())
    config["dataset"].update(n_train=n_train, seed=seed)
    return {**config, **fields}


def train_seconds(paths: list[Path]) -> float:
    """Total `regularity.train_seconds` of these shard tables."""
    return sum(float(read_provenance(p)["train_seconds"]) for p in paths)


def flag_quality(noisy: np.ndarray, flagged: np.ndarray) -> dict:
    """How many examples a rule flags, and their precision and recall for the wrong labels."""
    return {"n": int(flagged.sum()), "precision": round(float(noisy[flagged].mean()), 4),
            "recall": round(float(flagged[noisy].mean()), 4)}


def bytes_per_model(paths: list[Path], columns: tuple[str, ...]) -> dict[str, float]:
    """Compressed bytes per model row of each of `columns` in the shard tables `paths`, from their Parquet footers."""
    sizes, models = dict.fromkeys(columns, 0), 0
    for path in paths:
        meta = pq.read_metadata(path)
        models += meta.num_rows
        for group in range(meta.num_row_groups):
            for i in range(meta.num_columns):
                chunk = meta.row_group(group).column(i)
                name = chunk.path_in_schema.split(".")[0]
                if name in sizes:
                    sizes[name] += chunk.total_compressed_size
    return {name: round(size / models, 1) for name, size in sizes.items()}


def measure(seed: int, n_train: int, data_root: str | None) -> dict:
    """Both flows on noise seed `seed`: every score's detection metrics and the training seconds behind them."""
    from flows.cscore import CScoreFlowConfig, cscore_flow
    from flows.proxies import ProxiesFlowConfig, proxies_flow

    cscore_run = Path(cscore_flow(CScoreFlowConfig.model_validate(config_with(CSCORE_CONFIG, n_train, seed)),
                                  data_root=data_root))
    proxies = ProxiesFlowConfig.model_validate(config_with(PROXIES_CONFIG, n_train, seed, cscore_run=cscore_run.name))
    folder = Path(proxies_flow(proxies, data_root=data_root))
    out_of_sample = pq.read_table(folder / "out_of_sample.parquet")
    start = time.perf_counter()
    cleanlab_scores(out_of_sample["label"].to_numpy(), unpack_float_rows(out_of_sample["probabilities"]))
    cleanlab_seconds = time.perf_counter() - start
    detection = pd.read_parquet(folder / "noise_detection.parquet").set_index("score")
    holdout = pd.read_parquet(cscore_run / "noise_detection.parquet").set_index("score")  # soft C, cleanlab on it
    detection = pd.concat([detection, holdout.drop(index=[s for s in holdout.index if s in detection.index])])
    scores = pd.read_parquet(folder / "proxies.parquet", columns=["is_noisy", "cleanlab_issue"])
    noisy, flagged = scores["is_noisy"].to_numpy(), scores["cleanlab_issue"].to_numpy()
    cscore = pd.read_parquet(cscore_run / "cscores.parquet", columns=["cscore"])["cscore"].to_numpy()
    return {"seed": seed, "cscore_run": cscore_run.name, "proxies_run": folder.name, "k": int(detection["k"].iloc[0]),
            "cleanlab_flagged": flag_quality(noisy, flagged),
            "cscore_zero": {"n": int((cscore == 0).sum()), "noisy": int(noisy[cscore == 0].sum())},
            "cleanlab_holdout_flagged": flag_quality(noisy, pd.read_parquet(
                cscore_run / "heldout_probabilities.parquet")["is_cleanlab_holdout_issue"].to_numpy()),
            "soft_bytes_per_model": bytes_per_model(sorted(cscore_run.glob("shards/runs-*.parquet")), SOFT_COLUMNS),
            "seconds": {"cscore_training": round(train_seconds(sorted(cscore_run.glob("shards/runs-*.parquet"))), 1),
                        "dynamics_training": round(train_seconds(sorted(folder.glob("shards/final-*.parquet"))), 1),
                        "cleanlab_training": round(train_seconds([folder / "out_of_sample.parquet"]), 1),
                        "cleanlab_scoring": round(cleanlab_seconds, 2)},
            "detection": {score: {m: round(float(row[m]), 4) for m in METRICS} for score, row in detection.iterrows()}}


def summarize(by_seed: list[dict]) -> pd.DataFrame:
    """Mean and std over seeds of each score's metrics, best AUROC first."""
    rows = [{"score": score, "seed": r["seed"], **metrics} for r in by_seed for score, metrics in r["detection"].items()]
    table = pd.DataFrame(rows).groupby("score")[list(METRICS)].agg(["mean", "std"])
    return table.sort_values(("auroc", "mean"), ascending=False).round(4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="noise seeds (dataset.seed)")
    parser.add_argument("--n-train", type=int, default=5000, help="training images of Fashion-MNIST")
    parser.add_argument("--data-root", default=None, help="where the runs go (default: the project's data/)")
    args = parser.parse_args()
    server.use_local_server()  # before prefect is imported
    by_seed = [measure(seed, args.n_train, args.data_root) for seed in args.seeds]
    summary = summarize(by_seed)
    best = max(DYNAMICS, key=lambda name: summary.loc[name, ("auroc", "mean")])
    pd.set_option("display.width", 200)
    print(summary.to_string())
    seconds = {key: [r["seconds"][key] for r in by_seed] for key in by_seed[0]["seconds"]}
    print("seconds per seed:", seconds)
    print(f"best training-dynamics proxy by mean AUROC: {best}")
    print("cleanlab's find_label_issues flagged (n, precision, recall):", [r["cleanlab_flagged"] for r in by_seed])
    print("examples with a C-score of exactly 0 (n, of them mislabeled):", [r["cscore_zero"] for r in by_seed])
    print("cleanlab on the held-out probabilities flagged (n, precision, recall):",
          [r["cleanlab_holdout_flagged"] for r in by_seed])
    print("compressed bytes per model:", by_seed[0]["soft_bytes_per_model"])
    print(json.dumps({"bench": "label_noise", "n_train": args.n_train, "best_dynamics_proxy": best,
                      "by_seed": by_seed, "mean": {s: {m: float(summary.loc[s, (m, "mean")]) for m in METRICS}
                                                   for s in summary.index},
                      "seconds_mean": {k: float(np.mean(v)) for k, v in seconds.items()}}))


if __name__ == "__main__":
    main()
