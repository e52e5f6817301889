"""Which end of each score the foreign and the mislabeled examples land at: docs/cscore.md, Out-of-distribution examples.

Run: .venv/bin/python -m bench.ood_detection [--seeds 0 1 2] [--data-root D]   (from the repository root)
Three settings, 10% of the labels flipped and 5% foreign examples added (uniformly random labels), each at dataset and
run seeds --seeds: digits upsampled into Fashion-MNIST and noise images into Fashion-MNIST (10,000 images, the shipped
noisy configs), Fashion-MNIST images shrunk into digits (the default cscore and proxies settings). Each seed runs the
`cscore` flow, then the `proxies` flow on its run. Printed: per score (the C-score, its soft forms, cleanlab on the
held-out probabilities, every proxy, cleanlab on its fold models), the AUROC of a low score for the mislabeled and
for the foreign examples, mean ± SE over the seeds, as a markdown table; one JSON object last.
Needs the cleanlab extra: pip install -e '.[cleanlab]'.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import yaml

from flows import server

SETTINGS = {  # name: (cscore config, proxies config or None for the defaults, dataset settings)
    "digits → Fashion": ("flows/configs/cscore-fashion-noisy.yaml", "flows/configs/proxies-fashion-noisy.yaml",
                         {"foreign": "digits"}),
    "noise → Fashion": ("flows/configs/cscore-fashion-noisy.yaml", "flows/configs/proxies-fashion-noisy.yaml",
                        {"foreign": "noise"}),
    "Fashion → digits": (None, None, {"name": "digits", "foreign": "fashion_mnist", "label_noise": 0.1}),
}
FOREIGN_FRACTION = 0.05


def config_of(path: str | None, seed: int, dataset: dict, **fields) -> dict:
    """The config at `path` (the flow's defaults when None) with `dataset` settings, foreign_fraction and seed `seed`."""
    config = yaml.safe_load(Path(path).read_text()) if path else {}
    config["dataset"] = {**config.get("dataset", {}), **dataset, "foreign_fraction": FOREIGN_FRACTION, "seed": seed}
    return {**config, "seed": seed, **fields}


def measure(setting: str, seed: int, data_root: str | None) -> pd.DataFrame:
    """Both flows at `setting` and `seed`: one row per score, its AUROC for the mislabeled and for the foreign."""
    from flows.cscore import CScoreFlowConfig, cscore_flow
    from flows.proxies import ProxiesFlowConfig, proxies_flow

    cscore_path, proxies_path, dataset = SETTINGS[setting]
    run = Path(cscore_flow(CScoreFlowConfig.model_validate(config_of(cscore_path, seed, dataset)), data_root=data_root))
    proxies = ProxiesFlowConfig.model_validate(config_of(proxies_path, seed, dataset, cscore_run=run.name))
    folder = Path(proxies_flow(proxies, data_root=data_root))
    columns = {}
    for kind, table in (("mislabeled", "noise_detection.parquet"), ("foreign", "ood_detection.parquet")):
        rows = pd.concat([pd.read_parquet(run / table), pd.read_parquet(folder / table)]).drop_duplicates("score")
        columns[kind] = rows.set_index("score")["auroc"]
    return pd.DataFrame(columns).assign(setting=setting, seed=seed, cscore_run=run.name, proxies_run=folder.name)


def table(rows: pd.DataFrame) -> str:
    """Markdown: one row per score, per setting the mean ± SE over seeds of each AUROC."""
    stats = rows.groupby(["setting", "score"], sort=False)[["mislabeled", "foreign"]].agg(["mean", "sem"])
    lines = ["| score | " + " | ".join(f"{s}: mislabeled | foreign" for s in SETTINGS) + " |",
             "|---|" + "---:|" * (2 * len(SETTINGS))]
    for score in rows["score"].drop_duplicates():
        cells = [f"{stats.loc[(s, score), (k, 'mean')]:.3f} ± {stats.loc[(s, score), (k, 'sem')]:.3f}"
                 for s in SETTINGS for k in ("mislabeled", "foreign")]
        lines.append(f"| `{score}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="dataset and run seeds")
    parser.add_argument("--data-root", default=None, help="where the runs go (default: the project's data/)")
    args = parser.parse_args()
    server.use_local_server()  # before prefect is imported
    rows = pd.concat([measure(setting, seed, args.data_root) for setting in SETTINGS for seed in args.seeds])
    rows = rows.rename_axis("score").reset_index()
    print(table(rows))
    print(json.dumps({"bench": "ood_detection", "seeds": args.seeds, "rows": rows.to_dict("records")}))


if __name__ == "__main__":
    main()
