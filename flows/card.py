"""`card` flow: the data card of a dataset, joined from a `cscore` run and, optionally, a `proxies` run on the same
data. It trains nothing.

`examples.parquet` has one row per training example: `example_id`, `source` (where your files hold it),
`given_label`, `predicted_label` (of the held-out models' averaged probabilities), every score as `<name>_score` (low
= likely an issue: the C-score and its soft forms, cleanlab on the holdout runs' probabilities and on its own fold
models, the proxies), `is_<name>_issue` where the score comes with a rule (cleanlab's), the known `is_noisy` and
`is_foreign`, and the dataset-cartography coordinates `confidence`, `variability` and `correctness` of the proxies'
full-data models. Figures: the data map, and per-class histograms of the main scores.
"""
from __future__ import annotations

import json
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field

from core.config import RUN_REFERENCE, Config, RuntimeConfig
from flows.common import checked_data_root, upstream_table

FLOW = "card"
HISTOGRAMS = ["cscore_score", "cscore_soft_score", "cleanlab_holdout_score", "aum_score"]  # those the card has


class CardFlowConfig(Config):
    """Which runs to join into one data card."""

    cscore_run: Annotated[str | None, RUN_REFERENCE] = Field(None, description="run id of a cscore run (see `regularity ls --flow cscore`)")
    proxies_run: Annotated[str | None, RUN_REFERENCE] = Field(
        None, description="run id of a proxies run on the same dataset settings (its proxies, cleanlab on its fold "
        "models and the data map's coordinates); empty = the C-score run's scores only")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="execution settings; not part of the run id")


@flow(name=FLOW, description="The data card: every per-example score of a cscore and a proxies run in one table, "
                             "with the data map.")
def card_flow(config: CardFlowConfig = CardFlowConfig(), data_root: str | None = None) -> str:
    """Join the runs of `config` into the card; returns the run folder."""
    import pandas as pd

    from core.data.config import DatasetConfig
    from core.findings import findings_table
    from core.plots.card import data_map, score_histograms
    from core.runs.store import RunStore
    from flows.report import publish
    from flows.runner import configure_runtime
    from tasks.card import write_card

    data_root = checked_data_root(data_root)  # a deployment parameter may not point outside
    configure_runtime(config.runtime)
    if not config.cscore_run:
        raise ValueError("cscore_run is required: the run id of a cscore run (see `regularity ls --flow cscore`)")
    cscores = upstream_table("cscore_run", config.cscore_run, {"cscore": "cscores.parquet"}, data_root)
    stored = json.loads((cscores.parent / "config.json").read_text())
    proxies = None
    if config.proxies_run:  # the same dataset settings and file contents, or the join would mix examples
        proxies = upstream_table("proxies_run", config.proxies_run, {"proxies": "proxies.parquet"}, data_root,
                                 DatasetConfig.model_validate(stored["config"]["dataset"]), stored["inputs"].get("dataset"))
    store = RunStore.open(FLOW, config, data_root)
    write_card(store, cscores.parent, proxies.parent if proxies is not None else None)
    card = store.read_table("examples.parquet")
    summary = card_summary(card)
    store.remove_corrupt("summary.parquet")  # before the figures, which record the tables they were drawn from
    if not store.is_complete("summary.parquet", ["examples.parquet"]):
        store.write_table("summary.parquet", summary, built_from=["examples.parquet"])
    classes = pd.read_parquet(cscores.parent / "summary.parquet")
    class_names = classes.loc[classes["class"] >= 0, "class_name"].tolist()
    folder = store.root / "figures"
    figures = store.figures(lambda: ([data_map(card, folder / "data_map.png")] if "confidence" in card else []) +
                            score_histograms(card, [s for s in HISTOGRAMS if s in card], class_names, folder))
    if "confidence" not in card:
        get_run_logger().info("no proxies_run: the card has no cartography coordinates, and no data map")
    publish(store, summary, figures, f"data card of {len(card)} training examples from "
            f"{config.cscore_run}{' and ' + config.proxies_run if config.proxies_run else ''}", findings=findings_table([]))
    return str(store.root)


def card_summary(card):
    """One row per score: its mean, how many examples its rule flags (where it has one), and, where the dataset
    marks them, the AUROC of a low score for the wrong labels and for the foreign examples."""
    import pandas as pd

    from core.methods.cscore import mislabeled_auroc

    rows = []
    for column in [c for c in card if c.endswith("_score")]:
        name, values = column.removesuffix("_score"), card[column].to_numpy(float)
        flag = card.get(f"is_{name}_issue")
        rows.append({"score": name, "mean": float(pd.Series(values).mean()),
                     "n_flagged": int(flag.sum()) if flag is not None else None,
                     **{f"auroc_{mark.removeprefix('is_')}": mislabeled_auroc(values, card[mark].to_numpy(bool))
                        for mark in ("is_noisy", "is_foreign")}})
    return pd.DataFrame(rows)
